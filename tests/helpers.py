"""The one helpers module of the test suite: constants, data builders and the real-run helpers that unit and
end-to-end tests share (fixtures live in ``conftest.py``, which uses these). Import as ``from helpers import X``:
``tests/`` is on ``sys.path`` because ``conftest.py`` lives there.

``run_train`` starts Axolotl's train CLI from a fork server that imported it once (the demo's launcher
context), so each run is still a fresh process running ``python -m axolotl.cli.train cfg.yml`` without
paying ~20 s of imports; a ``launcher`` (torchrun) runs as a real subprocess.
"""

from __future__ import annotations

import glob
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from axolotl_calib_plugin.offline import OFFLINE_ENV

__all__ = ["OFFLINE_ENV", "CPU_SETTINGS", "PLUGIN", "LETTERS", "ROOT", "load_task_utils", "make_mcq_rows",
           "write_mcq_rows", "tiny_config", "letter_ids", "run_train", "log_history", "refresh_logs", "loss_logs",
           "prepared_train_dataset", "hand_estep", "refresh_records", "check_refresh_against_hand", "expected_targets",
           "CPU_DEVICE_MAP_FIX", "TRAIN_MAIN", "A100", "validate_on_gpu_box", "validate_on_this_box"]

#: the repository root
ROOT = Path(__file__).resolve().parents[1]
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
LETTERS = list("ABCDE")

#: Axolotl 0.19's normalize_config pins device_map to {"": LOCAL_RANK} whenever WORLD_SIZE > 1, which
#: transformers reads as accelerator index 1 on a CPU-only box ("Cannot access accelerator device").
#: This launcher script is Axolotl's train CLI with that one value corrected to "cpu".
CPU_DEVICE_MAP_FIX = """
import axolotl.cli.config as cli_config

_orig = cli_config.normalize_config


def normalize_config(cfg):
    _orig(cfg)
    if str(cfg.device).startswith("cpu") and isinstance(cfg.device_map, dict):
        cfg.device_map = {"": "cpu"}


cli_config.normalize_config = normalize_config
"""
#: The end of every launcher script: Axolotl's train CLI (what `python -m axolotl.cli.train` runs).
TRAIN_MAIN = """
if __name__ == "__main__":
    import fire

    from axolotl.cli.train import do_cli

    fire.Fire(do_cli)
"""


def load_task_utils(name: str = "calib_task_utils"):
    """The calib task folder's ``utils.py`` as lm-eval loads it (by file path, not as a package module)."""
    import importlib.util

    path = ROOT / "lm_eval_tasks" / "calib" / "utils.py"
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


def write_mcq_rows(path, n: int = 8, rows: list[dict] | None = None, **kw) -> Path:
    """Write ``rows`` (default: ``make_mcq_rows(n, **kw)``) to the JSONL file ``path``; returns it."""
    rows = rows if rows is not None else make_mcq_rows(n, **kw)
    path = Path(path)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def tiny_config(model_dir: str, workdir, **overrides):
    """A CPU Axolotl config (``DictDefault``) for the tiny model that lists the plugin, with output and
    prepared-data dirs under ``workdir`` (fresh: Axolotl's dataset cache ignores plugin keys and file
    contents); without ``datasets=`` it trains on a new ``workdir/tiny_cfg_train.jsonl`` of 8 rows."""
    from axolotl.utils.dict import DictDefault

    workdir = Path(workdir)
    if "datasets" not in overrides:
        overrides["datasets"] = [{"path": str(write_mcq_rows(workdir / "tiny_cfg_train.jsonl")),
                                  "type": "axolotl_calib_plugin.mcq"}]
    cfg = {
        "base_model": model_dir,
        "plugins": [PLUGIN],
        "calib_option_letters": list("ABCDE"),  # the test data has at most 5 choices
        "sequence_len": 256,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "num_epochs": 1,
        "learning_rate": 1e-3,
        "val_set_size": 0,
        "output_dir": str(workdir / "out"),
        "dataset_prepared_path": str(workdir / "prepared"),
        **CPU_SETTINGS,
    }
    cfg.update(overrides)
    return DictDefault(cfg)


def letter_ids(tokenizer, cfg, num_options=None) -> list[int]:
    """The option-letter token ids a config resolves to (settings from ``cfg``, chat template too)."""
    from axolotl_calib_plugin.train.args import CalibrationArgs
    from axolotl_calib_plugin.train.mcq import option_token_ids

    return option_token_ids(tokenizer, CalibrationArgs.from_cfg(cfg), num_options, cfg=cfg)


# ---------------------------------------------------------------------- real training runs
def _train_child(cfg_path: str, log_path: str, env: dict, cwd: str) -> None:
    """The demo launcher's child (``python -m axolotl.cli.train cfg_path``'s ``do_cli``, output to ``log_path``) in
    the caller's working directory and exact environment, with torch's default thread count (a subprocess's)."""
    from axolotl_calib_plugin.demo.launcher import train_child as run

    os.chdir(cwd)
    os.environ.clear()
    run(cfg_path, log_path, {**env, "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS") or str(torch.get_num_threads())})


def _forked_train(cfg_path: str, env: dict, cwd: str, timeout: float) -> tuple[int, str]:
    """(exit code, output) of :func:`train_child` run from the demo's preloaded fork server."""
    from axolotl_calib_plugin.demo.launcher import forkserver_context

    log_path = os.path.join(cwd, os.path.basename(cfg_path) + ".log")
    if os.path.exists(log_path):
        os.remove(log_path)
    proc = forkserver_context().Process(target=_train_child, args=(cfg_path, log_path, env, cwd))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        pytest.fail(f"axolotl train {cfg_path} ran past {timeout} s")
    with open(log_path, encoding="utf-8", errors="replace") as fh:
        out = fh.read()
    return int(proc.exitcode if proc.exitcode is not None else 1), out


def run_train(cfg, tmp_path, name="cfg.yml", launcher=None, timeout=600, env_extra=None, expect_ok=True):
    """Write ``cfg`` as YAML and run Axolotl's real train CLI on it (``launcher``: that command line as a
    subprocess, else the fork server); return its output. ``expect_ok``: assert exit 0, else assert failure."""
    raw = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    path = Path(tmp_path) / name
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, **OFFLINE_ENV, "PYTHONUNBUFFERED": "1", "HF_HOME": str(Path(tmp_path) / "hf_home")}
    env.update(env_extra or {})
    if launcher is None:
        code, out = _forked_train(str(path), env, str(tmp_path), timeout)
    else:
        proc = subprocess.run(launcher + [str(path)], capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=str(tmp_path))
        code, out = proc.returncode, proc.stdout + proc.stderr
    if expect_ok:
        assert code == 0, out[-6000:]
    else:
        assert code != 0, out[-6000:]
    return out


def log_history(output_dir):
    """log_history of the LAST checkpoint's trainer_state.json (everything up to the final step)."""
    ckpts = sorted(glob.glob(os.path.join(output_dir, "checkpoint-*")), key=lambda p: int(p.rsplit("-", 1)[1]))
    with open(os.path.join(ckpts[-1], "trainer_state.json")) as fh:
        return json.load(fh)["log_history"]


def refresh_logs(history):
    return [h for h in history if "calib/refresh" in h]


def loss_logs(history):
    return [h for h in history if "loss" in h]


def prepared_train_dataset(prepared_path):
    from datasets import load_from_disk

    dirs = [d for d in glob.glob(os.path.join(prepared_path, "*")) if os.path.isdir(d)]
    assert len(dirs) == 1, dirs
    return load_from_disk(dirs[0])


def hand_estep(model_dir, ds, cfg):
    """Independent E-step: one row at a time, the FULL sequence, full-vocabulary logits at t*."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    letters = letter_ids(tok, cfg)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    probs, labels, ids, ks = [], [], [], []
    with torch.no_grad():
        for row in ds:
            sid = np.asarray(row["calib_sample_id"])
            t = int(np.nonzero(sid >= 0)[0][0])
            k = int(row["calib_num_options"][t])
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, t, letters[:k]]
            p = torch.zeros(len(letters), dtype=torch.float64)
            p[:k] = torch.softmax(logits.double(), -1)
            probs.append(p)
            labels.append(int(row["calib_answer_idx"][t]))
            ids.append(int(sid[t]))
            ks.append(k)
    return torch.stack(probs), torch.tensor(labels), torch.tensor(ids), torch.tensor(ks)


def refresh_records(output_dir):
    """The lines of ``output_dir/calib_refresh.jsonl`` (per refresh: the per-bin statistics), in order."""
    with open(os.path.join(output_dir, "calib_refresh.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def check_refresh_against_hand(log, record, probs, labels, n_bins):
    """The refresh's logged conf-ECE and its per-bin statistics (``record``, its calib_refresh.jsonl line) equal
    those of the hand E-step; returns q_m as logged."""
    from axolotl_calib_plugin import metrics

    assert record["refresh"] == log["calib/refresh"] and record["global_step"] == log["step"], (record, log)
    rb = metrics.reliability_bins(probs, labels, n_bins)
    q = np.full(n_bins, np.nan)
    assert len(record["bins"]) == n_bins
    for m, b in enumerate(record["bins"]):
        assert b["count"] == rb.count[m], (m, record)
        if rb.count[m]:
            assert b["acc"] == pytest.approx(rb.accuracy[m], abs=1e-5)
            assert b["conf"] == pytest.approx(rb.mean_confidence[m], abs=1e-4)
            q[m] = b["acc"]
    assert log["calib/conf_ece"] == pytest.approx(metrics.conf_ece(probs, labels, n_bins), abs=1e-4)
    return torch.from_numpy(q)


def expected_targets(probs, q_logged, ks, n_bins, split="proportional"):
    from axolotl_calib_plugin.train.em import assign_bins, build_targets

    q = q_logged[assign_bins(probs.max(1).values, n_bins)]
    return build_targets(probs, q, split, num_options=ks).float()


def make_lora_adapter(model_dir: str, out) -> tuple:
    """A random (non-zero) LoRA adapter on the tiny model, saved as an adapter folder and as the merged model:
    ``(adapter_dir, merged_dir)`` under ``out``; the same seed gives the same adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    adapter, merged = Path(out) / "adapter", Path(out) / "merged"
    peft_model.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    peft_model.merge_and_unload().save_pretrained(merged)
    tok.save_pretrained(merged)
    return adapter, merged


#: capabilities of an A100 box, as Axolotl's validate_config reads them
A100 = {"bf16": True, "fp8": False, "tf32": True, "n_gpu": 1, "compute_capability": "sm_80"}


def validate_on_gpu_box(path, monkeypatch) -> tuple[dict, object]:
    """(raw YAML, validated cfg) of an example as on an A100 box with hub access (the report's data is there)."""
    import torch
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    cfg = DictDefault(raw)
    prepare_plugins(cfg)
    return raw, validate_config(cfg, capabilities=A100, env_capabilities={"torch_version": torch.__version__.split("+")[0]})


def validate_on_this_box(path) -> tuple[dict, object]:
    """(raw YAML, validated cfg) of a config as ``axolotl train`` checks it on this machine before loading the model:
    its plugins registered (their ``register`` hooks see the raw config) and Axolotl's validation against this
    machine's capabilities (on a CPU box: no bf16, no tf32, no GPU)."""
    from axolotl.cli.config import gpu_capabilities, prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    cfg = DictDefault(raw)
    prepare_plugins(cfg)
    capabilities, env_capabilities = gpu_capabilities()
    return raw, validate_config(cfg, capabilities=capabilities, env_capabilities=env_capabilities)


def direct_option_probs(model, ds, letters):
    """An independent E-step over a tokenized calibration dataset: one row at a time, the FULL sequence, the
    softmax over the row's K letter logits at its answer position t* (float64, padded options 0). Returns
    ``(sample ids, golds, Ks, probs)``; the model's train/eval mode is left as it was."""
    was_training = model.training
    out = []
    model.eval()
    with torch.no_grad():
        for row in ds:
            sid = np.asarray(row["calib_sample_id"])
            t = int(np.nonzero(sid >= 0)[0][0])
            k = row["calib_num_options"][t]
            p = torch.zeros(len(letters), dtype=torch.float64)
            p[:k] = torch.softmax(model(input_ids=torch.tensor([row["input_ids"]])).logits[0, t, letters[:k]].double(), -1)
            out.append((int(sid[t]), row["calib_answer_idx"][t], k, p))
    model.train(was_training)
    return (np.array([o[0] for o in out]), np.array([o[1] for o in out]), np.array([o[2] for o in out]),
            torch.stack([o[3] for o in out]))
