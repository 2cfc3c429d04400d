"""The package's import direction, read from the source (every import, lazy ones inside functions too):

* the shared core (metrics, rows, prompts, offline) imports neither train/ nor eval/;
* eval/ (evaluation toolkit) never imports train/ (training-time plugin code);
* nothing imports demo/ except demo/ itself and the CLI's ``demo`` command;
* no module imports the CLI: it is the console script's entry, a shell over library functions, never called back;
* the package has no import cycle (module-level and function-level imports alike);
* the module paths that existing YAML configs name stay importable and are the current modules themselves.
"""

from __future__ import annotations

import ast
import configparser
import importlib

import networkx as nx
import pytest

from helpers import ROOT

PKG = ROOT / "axolotl_calib_plugin"
CORE = ("metrics", "rows", "prompts", "offline", "defaults")


def _imports(path) -> set[str]:
    """Absolute dotted names of the package modules ``path`` imports (``from . import x`` gives ``pkg.x``)."""
    parts = ["axolotl_calib_plugin", *path.relative_to(PKG).with_suffix("").parts]
    package = parts[:-1]  # a module's package; for __init__.py the package itself
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("axolotl_calib_plugin")}


def _offenders(files, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for f in files:
        hits = sorted(m for m in _imports(f) if m.startswith(forbidden))
        if hits:
            bad[str(f.relative_to(PKG))] = hits
    return bad


def test_imports_resolve_relative_names():
    """The reader itself: ``from ..eval import plots`` in train/ is ``axolotl_calib_plugin.eval.plots``."""
    got = _imports(PKG / "train" / "em.py")
    assert "axolotl_calib_plugin.metrics" in got and "axolotl_calib_plugin.eval.temperature" in got


def test_eval_never_imports_train():
    assert _offenders(sorted((PKG / "eval").glob("*.py")), ("axolotl_calib_plugin.train",)) == {}


def test_core_imports_neither_half():
    files = [PKG / f"{m}.py" for m in CORE]
    assert _offenders(files, ("axolotl_calib_plugin.train", "axolotl_calib_plugin.eval",
                              "axolotl_calib_plugin.demo", "axolotl_calib_plugin.cli")) == {}


def test_nothing_imports_the_demo():
    files = [p for p in PKG.rglob("*.py") if "demo" not in p.relative_to(PKG).parts and p.name != "cli.py"]
    assert _offenders(files, ("axolotl_calib_plugin.demo",)) == {}
    lm_eval_utils = ROOT / "lm_eval_tasks" / "calib" / "utils.py"
    tree = ast.parse(lm_eval_utils.read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not [n for n in names if n.startswith(("axolotl_calib_plugin.train", "axolotl_calib_plugin.demo"))]


def _module_of(dotted: str) -> str | None:
    """The package module a dotted name lives in: the longest prefix that is a ``.py`` file or a package."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        rel = PKG.parent.joinpath(*parts[:end])
        if rel.with_suffix(".py").is_file() or (rel / "__init__.py").is_file():
            return ".".join(parts[:end])
    return None


def _name(path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def import_graph() -> nx.DiGraph:
    """Module -> the package modules it imports, read from the source (imports inside functions count).
    ``from .x import y`` points at ``x.y`` when that is a module, else at ``x``; the parent packages Python
    initialises on the way are left out (a package's ``__init__`` importing its children is no cycle)."""
    graph = nx.DiGraph()
    for path in sorted(PKG.rglob("*.py")):
        src = _name(path)
        parts = src.split(".") if path.name == "__init__.py" else src.split(".")[:-1]
        graph.add_node(src)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {_module_of(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = parts[: len(parts) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                for a in node.names:
                    sub = _module_of(f"{mod}.{a.name}")
                    targets.add(sub if sub == f"{mod}.{a.name}" else _module_of(mod))
        graph.add_edges_from((src, t) for t in targets if t and t != src and t.startswith("axolotl_calib_plugin"))
    return graph


def test_import_graph_reads_every_kind_of_import():
    """The reader itself: relative, absolute and function-level imports; a submodule named in ``from . import``."""
    g = import_graph()
    assert g.has_edge("axolotl_calib_plugin.train.em", "axolotl_calib_plugin.metrics")
    assert g.has_edge("axolotl_calib_plugin.train.em", "axolotl_calib_plugin.eval.temperature")  # inside a function
    assert g.has_edge("axolotl_calib_plugin.demo.pipeline", "axolotl_calib_plugin.orchestrate")  # from .. import x
    assert g.has_edge("axolotl_calib_plugin.plugin", "axolotl_calib_plugin.train.plugin")
    assert "axolotl_calib_plugin.demo" in g and "axolotl_calib_plugin" in g  # packages' __init__ files are nodes


def test_the_package_has_no_import_cycle():
    """A cycle makes import order matter and the two modules one unit in all but name; every one is listed."""
    cycles = sorted(sorted(c) for c in nx.simple_cycles(import_graph()))
    assert cycles == [], "import cycles (each a list of modules importing one another): " + "; ".join(
        " <-> ".join(m.removeprefix("axolotl_calib_plugin.") for m in c) for c in cycles)


def test_only_the_console_script_imports_the_cli():
    """The CLI parses flags and calls library functions; a module calling back into it (or into its helpers)
    would make the parser a library. Its own modules (a ``cli`` package) and ``python -m``'s ``__main__`` may."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    entry = cfg["options.entry_points"]["console_scripts"].strip().split("=", 1)[1].strip()
    cli = entry.split(":")[0]
    assert cli.startswith("axolotl_calib_plugin.cli")
    cli = "axolotl_calib_plugin.cli"
    g = import_graph()
    callers = sorted(m for m, t in g.edges if t.split(".")[:2] == cli.split(".")
                     and m.split(".")[:2] != cli.split(".") and m != "axolotl_calib_plugin.__main__")
    assert callers == [], f"modules importing the CLI ({cli}); call the library function it calls instead"


@pytest.mark.parametrize("old, new", [("axolotl_calib_plugin.plugin", "axolotl_calib_plugin.train.plugin"),
                                      ("axolotl_calib_plugin.mcq", "axolotl_calib_plugin.train.mcq")])
def test_yaml_facing_paths_are_the_moved_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)
    import axolotl_calib_plugin

    if old.endswith("plugin"):
        assert axolotl_calib_plugin.CalibrationPlugin is importlib.import_module(old).CalibrationPlugin
    else:
        assert callable(importlib.import_module(old).load)  # what Axolotl calls for `type: axolotl_calib_plugin.mcq`
