"""Shared pytest fixtures (owner: P1; ask before adding so they stay general).

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
import json
import os
import random
import sys
from pathlib import Path

import pytest

from axolotl_calib_plugin.offline import OFFLINE_ENV
os.environ.update(OFFLINE_ENV)

#: CPU-safe settings every tiny Axolotl config needs (bf16: auto means fp16 on CPU; fused kernels need a GPU).
CPU_SETTINGS = {
    "bf16": False,
    "fp16": False,
    "tf32": False,
    "flash_attention": False,
    "optimizer": "adamw_torch",
    "dataset_num_proc": 1,
    "save_safetensors": True,
}
PLUGIN = "axolotl_calib_plugin.CalibrationPlugin"


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


def load_task_utils(name: str = "calib_task_utils"):
    """The calib task folder's ``utils.py`` as lm-eval loads it (by file path, not as a package module)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "lm_eval_tasks" / "calib" / "utils.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_mcq_rows(n: int = 8, num_options: int | tuple[int, ...] = 4, seed: int = 0,
                  answer_as: str = "index") -> list[dict]:
    """``n`` deterministic MCQ rows; ``num_options`` is K or a cycle of Ks; ``answer_as`` is
    ``index`` (int), ``letter`` ("B") or ``text`` (the choice itself)."""
    rng = random.Random(seed)
    words = "red green blue cat dog heart lung cell atom light water energy".split()
    ks = (num_options,) if isinstance(num_options, int) else tuple(num_options)
    rows = []
    for i in range(n):
        k = ks[i % len(ks)]
        choices = [f"{words[(i + j) % len(words)]} {j}" for j in range(k)]
        gold = rng.randrange(k)
        answer = {"index": gold, "letter": "ABCDEFGHIJ"[gold], "text": choices[gold]}[answer_as]
        rows.append({"id": i, "question": f"Which is {words[i % len(words)]} number {i}?",
                     "choices": choices, "answer": answer})
    return rows


@pytest.fixture
def mcq_rows(tmp_path):
    """Factory: ``mcq_rows(n=8, rows=None, name="mcq.jsonl", **make_mcq_rows_kw) -> Path`` of a JSONL
    file (``rows`` given: written as-is, for bad-input tests)."""

    def _write(n: int = 8, rows: list[dict] | None = None, name: str = "mcq.jsonl", **kw) -> Path:
        rows = rows if rows is not None else make_mcq_rows(n, **kw)
        path = tmp_path / name
        with open(path, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
        return path

    return _write


@pytest.fixture
def tiny_cfg(tmp_path, tiny_model_dir, mcq_rows):
    """Factory: ``tiny_cfg(**overrides) -> DictDefault`` of a CPU config for the tiny model that
    lists the plugin and trains on a fresh ``mcq_rows()`` file (``datasets=`` overrides it)."""

    def _make(**overrides):
        from axolotl.utils.dict import DictDefault

        if "datasets" not in overrides:
            overrides["datasets"] = [{"path": str(mcq_rows(name="tiny_cfg_train.jsonl")),
                                      "type": "axolotl_calib_plugin.mcq"}]
        cfg = {
            "base_model": tiny_model_dir,
            "plugins": [PLUGIN],
            "calib_option_letters": list("ABCDE"),  # the test data has at most 5 choices
            "sequence_len": 256,
            "micro_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "num_epochs": 1,
            "learning_rate": 1e-3,
            "val_set_size": 0,
            "output_dir": str(tmp_path / "out"),
            "dataset_prepared_path": str(tmp_path / "prepared"),
            **CPU_SETTINGS,
        }
        cfg.update(overrides)
        return DictDefault(cfg)

    return _make


def letter_ids(tokenizer, cfg, num_options=None) -> list[int]:
    """The option-letter token ids a config resolves to (settings from ``cfg``, chat template too)."""
    from axolotl_calib_plugin.args import CalibrationArgs
    from axolotl_calib_plugin.mcq import option_token_ids

    return option_token_ids(tokenizer, CalibrationArgs.from_cfg(cfg), num_options, cfg=cfg)


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


def pytest_unconfigure(config):
    """A library imported by the tests calls ``colorama.init()`` while pytest captures stdout;
    colorama's atexit hook then writes to the closed capture stream ("Exception ignored in atexit
    callback ... I/O operation on closed file"). Drop that hook once the session is over."""
    import atexit

    initialise = sys.modules.get("colorama.initialise")
    if initialise is not None:
        atexit.unregister(initialise.reset_all)
