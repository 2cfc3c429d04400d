"""The lm-eval tasks travel with the package.

* setup.cfg lists every Python package of the source tree and maps ``axolotl_calib_plugin.lm_eval_tasks``
  onto the top-level ``lm_eval_tasks/`` (one copy);
* a wheel built from the tree carries every task file, ``utils.py`` and the fixtures; installed into a
  fresh virtualenv that cannot see this checkout, ``lm_eval --include_path "$(axolotl-calib tasks-path)"``
  runs our tasks from an unrelated directory on a tiny local model, offline;
* an editable install (what ``make install`` does) finds the checkout's task folder.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from helpers import OFFLINE_ENV

ROOT = Path(__file__).resolve().parents[2]


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _listed_packages() -> list[str]:
    return [p.strip() for p in _setup_cfg()["options"]["packages"].split() if p.strip()]


def test_setup_cfg_lists_every_package_and_maps_the_task_folder():
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "axolotl_calib_plugin").rglob("__init__.py")}
    listed = set(_listed_packages())
    assert {"axolotl_calib_plugin.train", "axolotl_calib_plugin.eval"} <= on_disk  # the two halves of the package
    assert on_disk <= listed, f"packages missing from setup.cfg [options] packages: {sorted(on_disk - listed)}"
    mapping = _setup_cfg()["options"]["package_dir"].strip()
    assert mapping == "axolotl_calib_plugin.lm_eval_tasks = lm_eval_tasks"
    assert not (ROOT / "axolotl_calib_plugin" / "lm_eval_tasks").exists()  # no second copy that could drift


def _source_copy(dest: Path) -> Path:
    """The checkout's files (tracked + new, not ignored) copied to ``dest``: building in place would leave
    build/ and *.egg-info in the working tree."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(src.read_bytes())
    return dest


def _fresh_venv(path: Path) -> Path:
    """A virtualenv without pip whose only extra path is this interpreter's site-packages (the installed
    dependencies). ``.pth`` files there are not processed, so this checkout's editable install is invisible."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    site = subprocess.run([str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return path / "bin" / "python"


def _pip(python: Path, *args: str, cwd: Path) -> None:
    # without PYTHONPATH: a checkout on it (with its egg-info) looks like the package already installed there
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           "--no-index", "--no-build-isolation", *args], cwd=cwd, capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _clean_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AXOLOTL_CALIB_TASKS", "VIRTUAL_ENV")}
    env.update(OFFLINE_ENV)
    env["HF_HOME"] = str(tmp / "hf_home")
    return env


def _build_wheel(tmp_path: Path) -> Path:
    """A wheel built (offline, no isolation) from a copy of the checkout."""
    src = _source_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                           "-w", str(dist), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = dist.glob("axolotl_calib-*.whl")
    return wheel


def _assert_ships_the_tasks(names: set[str]) -> None:
    for f in (ROOT / "lm_eval_tasks").rglob("*"):
        rel = f.relative_to(ROOT).as_posix()
        if f.is_file() and "__pycache__" not in rel:
            assert f"axolotl_calib_plugin/{rel}" in names, f"{rel} is not in the wheel"
    assert any(n.startswith("axolotl_calib_plugin/lm_eval_tasks/calib/data/") and n.endswith(".jsonl") for n in names)


@pytest.mark.slow
def test_wheel_ships_the_tasks_and_lm_eval_runs_them_from_anywhere(tmp_path, tiny_model_dir, mcq_rows):
    wheel = _build_wheel(tmp_path)
    _assert_ships_the_tasks(set(zipfile.ZipFile(wheel).namelist()))

    python = _fresh_venv(tmp_path / "venv")
    _pip(python, str(wheel), cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _clean_env(tmp_path)
    where = subprocess.run([str(python), "-c", "import axolotl_calib_plugin; print(axolotl_calib_plugin.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(tmp_path / "venv")), where  # the wheel, not this checkout
    tasks_path = subprocess.run([str(tmp_path / "venv" / "bin" / "axolotl-calib"), "tasks-path"], cwd=elsewhere, env=env,
                                capture_output=True, text=True, check=True).stdout.strip()
    assert tasks_path == str(Path(where).parent / "lm_eval_tasks"), tasks_path

    heldout = mcq_rows(10, num_options=(4, 3), seed=5, name="heldout.jsonl")
    metadata = {"data_files": str(heldout), "calib_data_dir": f"{tasks_path}/calib/data"}  # the packaged fixtures
    proc = subprocess.run(
        [str(python), "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={tiny_model_dir},dtype=float32",
         "--device", "cpu", "--include_path", tasks_path, "--tasks", "calib_jsonl,calib_arc_challenge",
         "--metadata", json.dumps(metadata), "--batch_size", "8", "--output_path", "out", "--log_samples"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (results_file,) = (elsewhere / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    assert results["calib_jsonl"]["acc,none"] >= 0 and 0 <= results["calib_jsonl"]["conf_ece,none"] <= 1
    assert 0 <= results["calib_arc_challenge"]["cw_ece,none"] <= 1
    assert json.loads(results_file.read_text())["n-samples"]["calib_jsonl"]["effective"] == 10


@pytest.mark.slow
def test_editable_install_uses_the_checkout_task_folder(tmp_path):
    src = _source_copy(tmp_path / "src")
    python = _fresh_venv(tmp_path / "venv")
    _pip(python, "-e", str(src), cwd=tmp_path)
    out = subprocess.run([str(python), "-c", "from axolotl_calib_plugin.eval.evaluation import find_task_dir, task_index; "
                          "print(find_task_dir()); print(len(task_index()))"],
                         cwd=tmp_path, env=_clean_env(tmp_path), capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == str(src / "lm_eval_tasks") and int(out[1]) >= 12


# ---------------------------------------------------------------------------------- what a PyPI user sees
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"  # apache.org/licenses/LICENSE-2.0.txt


def _lower_bound(req) -> "Version | None":
    """The smallest version a requirement admits, from its ==, ===, ~= or >= clauses (None: unbounded)."""
    from packaging.version import Version

    bounds = [Version(s.version) for s in req.specifier if s.operator in ("==", "===", "~=", ">=")]
    return max(bounds) if bounds else None


def _imported_distributions() -> dict[str, set[str]]:
    """``{top-level module: distributions providing it}`` for every third-party module the package and its task
    folder import (any depth, lazy imports included); ``axolotl`` is shared by several distributions."""
    import ast
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    modules = set()
    for folder in ("axolotl_calib_plugin", "lm_eval_tasks"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    modules -= set(sys.stdlib_module_names) | {"__future__", "axolotl_calib_plugin"}
    owners = packages_distributions()
    missing = sorted(m for m in modules if m not in owners)
    assert not missing, f"imported modules no installed distribution provides: {missing}"
    return {m: {canonicalize_name(d) for d in owners[m]} for m in sorted(modules)}


def test_wheel_metadata_is_what_a_pypi_user_expects(tmp_path):
    """License (expression + the full Apache-2.0 text), project URLs, classifiers, dependency floors equal to
    axolotl 0.19's own requirements, every imported distribution declared, ``py.typed`` shipped iff claimed, the
    console script and the lm-eval task data inside."""
    import hashlib
    from email.parser import Parser
    from importlib.metadata import requires, version

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    assert hashlib.sha256((ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_SHA256  # the standard text, unedited
    wheel = zipfile.ZipFile(_build_wheel(tmp_path))
    names = set(wheel.namelist())
    (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    meta = Parser().parsestr(wheel.read(f"{info}/METADATA").decode())

    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert wheel.read(f"{info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
    classifiers = meta.get_all("Classifier")
    assert not [c for c in classifiers if c.startswith("License ::")]  # PEP 639: the expression replaces them
    assert {"Programming Language :: Python :: 3.11", "Intended Audience :: Science/Research",
            "Topic :: Scientific/Engineering :: Artificial Intelligence"} <= set(classifiers)
    assert meta["Requires-Python"] == ">=3.11"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert urls["Paper"] == "https://arxiv.org/abs/2505.01997"
    assert urls["Reference code"] == "https://github.com/ZhanliangAaronWang/RestoreLLMCalibration"
    assert {"Source", "Issues"} <= set(urls) and all(u.startswith("https://") for u in urls.values())

    ours = {canonicalize_name(r.name): r for r in map(Requirement, meta.get_all("Requires-Dist")) if not r.marker}
    assert str(ours["axolotl"].specifier) == "<0.20,>=0.19.0"
    axolotl = {canonicalize_name(r.name): r for r in map(Requirement, requires("axolotl")) if not r.marker}
    assert version("axolotl").startswith("0.19.")
    shared = sorted(set(ours) & set(axolotl))
    assert {"torch", "transformers", "peft", "accelerate", "datasets", "lm-eval", "numpy"} <= set(shared)
    for name in shared:
        assert _lower_bound(ours[name]) == _lower_bound(axolotl[name]), (name, str(ours[name]), str(axolotl[name]))
        assert ours[name].specifier.contains(version(name), prereleases=True), (name, version(name))
    assert str(ours["torch"].specifier) == ">=2.11.0"  # axolotl 0.19: torch>=2.11.0,<=2.13.0
    imported = _imported_distributions()
    assert {"torch", "lm_eval", "axolotl", "matplotlib", "yaml"} <= set(imported)
    # the real model's packages are an extra (`pip install 'axolotl-calib[real]'`): only `real-model` imports them
    real = {canonicalize_name(r.name) for r in map(Requirement, meta.get_all("Requires-Dist"))
            if r.marker and r.marker.evaluate({"extra": "real"})}
    assert {"gguf", "countryinfo", "periodictable"} <= real
    undeclared = {m: sorted(d) for m, d in imported.items() if not d & (set(ours) | real)}
    assert not undeclared, f"imported but no providing distribution in install_requires or the real extra: {undeclared}"

    typed = "axolotl_calib_plugin/py.typed" in names
    assert typed == ("Typing :: Typed" in classifiers) == (ROOT / "axolotl_calib_plugin" / "py.typed").is_file()
    for pkg, patterns in _setup_cfg()["options.package_data"].items():  # every literal file named there ships
        folder = pkg.replace(".", "/")
        for pat in (p.strip() for p in patterns.split(",")):
            if "*" not in pat:
                assert f"{folder}/{pat}" in names, f"setup.cfg package_data names {pat} for {pkg}: not in the wheel"
    assert "axolotl-calib = axolotl_calib_plugin.cli:main" in wheel.read(f"{info}/entry_points.txt").decode()
    _assert_ships_the_tasks(names)
