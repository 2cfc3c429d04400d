"""Shared pytest fixtures (plain helpers and constants: ``helpers.py``; tests import them from there).

* tests/unit: one module or concept at a time (a few, marked ``slow``, run lm_eval or pip);
  tests/e2e: real ``axolotl train`` runs, all marked ``slow`` here by location;
* offline environment: set before anything imports huggingface_hub / transformers (they read
  the variables at import time), and re-asserted per test;
* ``tiny_model_dir`` / ``tiny_tokenizer``: a local tiny Llama built once per session;
* ``mcq_rows``: writes a JSONL of ``question`` / ``choices`` / ``answer`` rows;
* ``tiny_cfg``: a CPU-safe Axolotl config dict for the tiny model with fresh output and
  prepared-data dirs (Axolotl's dataset cache ignores plugin keys and file contents);
* ``validate_cfg``: ``prepare_plugins`` + ``validate_config`` (schema only, nothing downloaded);
* the ``PluginManager`` singleton is reset around every test, as in Axolotl's own conftest.

Nothing here imports axolotl at collection time: tests that never touch it stay fast.
"""

from __future__ import annotations

import collections
import copy
import os
import sys
from pathlib import Path

import pytest

from axolotl_calib_plugin.offline import OFFLINE_ENV

os.environ.update(OFFLINE_ENV)
# `make test` runs pytest-xdist workers (one per core): each worker, and the runs it starts, gets its share of
# the cores, set before torch is imported; more threads than cores spin-wait and slow tiny-model steps down.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // _WORKERS))

from helpers import tiny_config, write_mcq_rows  # noqa: E402 - tests/ is on sys.path (this file is there)

TESTS = Path(__file__).resolve().parent
E2E = TESTS / "e2e"
#: The files that take longest (CPU time on 2 cores, slowest first). `make test` hands whole files to its xdist
#: workers (``--dist loadfile``) in collection order, so these start first and the short files fill in behind
#: them; a file not listed keeps its place after them. Only the order changes, never what runs.
SLOWEST_FIRST = ("e2e/test_demo.py", "e2e/test_heldout_study.py", "e2e/test_distributed.py", "e2e/test_train_e2e.py",
                 "e2e/test_resume.py", "e2e/test_reproduce_e2e.py", "unit/test_cli.py", "unit/test_bench_e2e.py",
                 "unit/test_lm_eval_tasks.py", "unit/test_real_model.py", "unit/test_examples.py", "unit/test_packaging.py",
                 "e2e/test_heldout_targets_e2e.py", "unit/test_collator.py", "e2e/test_fsdp.py",
                 "e2e/test_report_e2e.py")


@pytest.fixture(autouse=True)
def offline_env(monkeypatch):
    """Re-assert the offline variables for every test (a test may have changed them)."""
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    yield


def _reset_plugin_manager():
    base = sys.modules.get("axolotl.integrations.base")
    if base is None:  # axolotl never imported: nothing to reset
        return
    pm = base.PluginManager
    pm._cfg = None
    if pm._instance is not None:
        pm._instance.plugins = collections.OrderedDict()


@pytest.fixture(autouse=True)
def reset_plugin_manager():
    """The PluginManager is a process-wide singleton: clear it before and after each test."""
    _reset_plugin_manager()
    yield
    _reset_plugin_manager()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """Path of a tiny local Llama + tokenizer (built once per session, float32, ~100 KB)."""
    from axolotl_calib_plugin.testing import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    """The tiny model's tokenizer (session-scoped: do not mutate it; copy.deepcopy if needed)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def mcq_rows(tmp_path):
    """Factory: ``mcq_rows(n=8, rows=None, name="mcq.jsonl", **make_mcq_rows_kw) -> Path`` of a JSONL
    file (``rows`` given: written as-is, for bad-input tests)."""

    def _write(n: int = 8, rows: list[dict] | None = None, name: str = "mcq.jsonl", **kw) -> Path:
        return write_mcq_rows(tmp_path / name, n, rows, **kw)

    return _write


@pytest.fixture
def tiny_cfg(tmp_path, tiny_model_dir):
    """Factory: ``tiny_cfg(**overrides) -> DictDefault``: ``helpers.tiny_config`` in this test's ``tmp_path``
    (a CPU config for the tiny model that lists the plugin and trains on a fresh 8-row file unless ``datasets=``)."""

    def _make(**overrides):
        return tiny_config(tiny_model_dir, tmp_path, **overrides)

    return _make


@pytest.fixture
def validate_cfg():
    """``validate_cfg(cfg) -> DictDefault``: register the listed plugins, then validate against
    Axolotl's schema with their args merged (what ``load_cfg`` does before it touches the model)."""

    def _validate(cfg):
        from axolotl.utils.config import prepare_plugins, validate_config
        from axolotl.utils.dict import DictDefault

        raw = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        cfg = DictDefault(copy.deepcopy(raw))  # validate_config rewrites `datasets` in place
        prepare_plugins(cfg)
        return validate_config(cfg)

    return _validate


def pytest_collection_modifyitems(config, items):
    """Everything under tests/e2e runs the real ``axolotl train``: marked ``slow`` by where it lives. The files of
    ``SLOWEST_FIRST`` move to the front (a stable sort: each file's tests stay together and in order)."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    for item in items:
        if E2E in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: rank.get(_relative(item), len(rank)))


def _relative(item) -> str:
    path = Path(str(item.fspath)).resolve()
    return path.relative_to(TESTS).as_posix() if TESTS in path.parents else str(path)


def pytest_unconfigure(config):
    """A library imported by the tests calls ``colorama.init()`` while pytest captures stdout;
    colorama's atexit hook then writes to the closed capture stream ("Exception ignored in atexit
    callback ... I/O operation on closed file"). Drop that hook once the session is over."""
    import atexit

    initialise = sys.modules.get("colorama.initialise")
    if initialise is not None:
        atexit.unregister(initialise.reset_all)
