"""The package's import direction, read from the source (every import, lazy ones inside functions too):

* the shared core (metrics, rows, prompts, offline, and the row contract: encoding, row_settings) imports neither
  train/ nor eval/;
* eval/ (evaluation toolkit) never imports train/ (training-time plugin code);
* nothing imports demo/ except demo/ itself and the CLI's ``demo`` command (cli/commands.py);
* the old module paths that YAML configs name stay importable and are the new modules themselves.
"""

from __future__ import annotations

import ast
import importlib

import pytest

from helpers import ROOT

PKG = ROOT / "axolotl_calib_plugin"
CORE = ("metrics", "rows", "prompts", "offline", "encoding", "row_settings")


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
    files = [p for p in PKG.rglob("*.py") if p.relative_to(PKG).parts[0] not in ("demo", "cli")]
    assert _offenders(files, ("axolotl_calib_plugin.demo",)) == {}
    lm_eval_utils = ROOT / "lm_eval_tasks" / "calib" / "utils.py"
    tree = ast.parse(lm_eval_utils.read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not [n for n in names if n.startswith(("axolotl_calib_plugin.train", "axolotl_calib_plugin.demo"))]


@pytest.mark.parametrize("old, new", [("axolotl_calib_plugin.plugin", "axolotl_calib_plugin.train.plugin"),
                                      ("axolotl_calib_plugin.mcq", "axolotl_calib_plugin.train.mcq")])
def test_yaml_facing_paths_are_the_moved_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)
    import axolotl_calib_plugin

    if old.endswith("plugin"):
        assert axolotl_calib_plugin.CalibrationPlugin is importlib.import_module(old).CalibrationPlugin
    else:
        assert callable(importlib.import_module(old).load)  # what Axolotl calls for `type: axolotl_calib_plugin.mcq`
