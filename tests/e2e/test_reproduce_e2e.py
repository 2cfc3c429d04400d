"""``axolotl-calib reproduce`` end to end on CPU: a tiny local "DPO" model and local MCQ files -> LS / SFT / CFT / RCFT
trained by Axolotl's train CLI, every model evaluated, TS fitted on held-out in-domain questions, the table; then a
second invocation that reuses every finished run and evaluation and gives the same table, which is the table
``axolotl-calib table`` gives on the same folders.

Training goes through Axolotl's ``do_cli`` in processes forked from the test suite's preloaded server (what
``python -m axolotl.cli.train`` runs, ~20 s of imports less per run on this shared CPU); the command that
``reproduce`` runs by default is checked in tests/unit/test_reproduce.py.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from helpers import _forked_train, make_mcq_rows

from axolotl_calib_plugin import orchestrate, reproduce
from axolotl_calib_plugin.cli import main

BASE = {"bf16": False, "fp16": False, "tf32": False, "flash_attention": False, "attn_implementation": "sdpa",
        "optimizer": "adamw_torch", "dataset_num_proc": 1, "save_safetensors": True, "sequence_len": 128,
        "micro_batch_size": 8, "gradient_accumulation_steps": 1, "num_epochs": 1, "learning_rate": 1e-3,
        "lr_scheduler": "constant", "val_set_size": 0, "save_strategy": "no", "logging_steps": 1, "seed": 7,
        "calib_option_letters": list("DCBA")}  # not the default letters: every row must be asked with these


def _forked_launch(cfg_path: str, log_path: str, what: str) -> float:
    t0 = time.time()
    code, out = _forked_train(cfg_path, dict(os.environ), os.path.dirname(cfg_path), 600)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as fh:
        fh.write(out)
    return orchestrate.check_exit(code, t0, log_path, what)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import yaml

    from axolotl_calib_plugin.prompts import format_mcq_prompt
    from axolotl_calib_plugin.testing import make_tiny_model_dir

    d = tmp_path_factory.mktemp("repro")
    files = {}
    for name, n, seed in (("train", 16, 0), ("in", 30, 1), ("out", 20, 2)):
        rows = [{**r, "question": f"({name}) {r['question']}"} for r in make_mcq_rows(n, num_options=4, seed=seed)]
        files[name] = str(d / f"{name}.jsonl")
        with open(files[name], "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    corpus = [format_mcq_prompt(f"(train) {r['question']}", r["choices"]) + " A" for r in make_mcq_rows(16, 4, 0)]
    files["model"] = make_tiny_model_dir(d / "model", corpus=corpus, hidden_size=32, num_layers=1)
    files["base"] = str(d / "base.yml")
    with open(files["base"], "w", encoding="utf-8") as fh:
        yaml.safe_dump(BASE, fh)
    files["dir"] = str(d / "run")
    return files


def _argv(w):
    return ["reproduce", "--model", w["model"], "--train-data-files", w["train"], "--data-files", w["in"],
            "--ood-data-files", w["out"], "--base-config", w["base"], "--ts-fit-fraction", "0.3", "--device", "cpu",
            "--output-dir", w["dir"]]


def test_reproduce_end_to_end_then_resumed(world, monkeypatch, capsys):
    monkeypatch.setattr(reproduce, "_launch", _forked_launch)
    out = world["dir"]
    assert main(_argv(world)) == 0
    first = json.load(open(os.path.join(out, "reproduce.json"), encoding="utf-8"))
    assert not [n for n in first["notices"] if "training questions" in n]  # the columns are held-out questions
    assert first["errors"] == {} and first["reused_runs"] == [] and first["reused_evals"] == []
    assert sorted(first["models"]) == ["cft", "ls", "rcft", "sft"]
    table = first["tables"]["7"]  # the base config's seed
    assert [r["name"] for r in table["rows"]] == ["DPO", "TS", "LS", "SFT", "CFT", "RCFT"]
    assert (table["in_task"], table["out_task"]) == ("calib_jsonl", "calib_jsonl_ood")
    rows = {r["name"]: r for r in table["rows"]}
    # TS was fitted on 9 of the 30 in-domain questions (seeded 30 %) and is scored on the other 21: every row is
    # compared on those 21; out-of-domain, nothing was fitted: all 20
    assert {r["in"]["n"] for r in table["rows"]} == {21} and {r["out"]["n"] for r in table["rows"]} == {20}
    assert rows["TS"]["in"]["held_out"] is True
    # temperature scaling never changes a prediction: TS has DPO's accuracy on the same questions
    assert rows["TS"]["in"]["acc"] == rows["DPO"]["in"]["acc"] and rows["TS"]["out"]["acc"] == rows["DPO"]["out"]["acc"]
    assert first["temperature"]["7"] > 0
    for name in ("ls", "sft", "cft", "rcft"):
        assert os.path.isfile(os.path.join(out, "models", name, orchestrate.DONE_FILE))
    for name in ("dpo", "ls", "sft", "cft", "rcft"):  # the start model too: the same letters as the trained rows
        report = json.load(open(os.path.join(out, "eval", name, "calibration_report.json"), encoding="utf-8"))
        assert report["meta"]["task_metadata"]["option_letters"] == list("DCBA"), name
    for task in ("calib_jsonl", "calib_jsonl_ood"):
        assert os.path.isfile(os.path.join(out, "table", f"reliability_compare_{task}.png"))
    md = open(os.path.join(out, "table", "calibration_table.md"), encoding="utf-8").read()

    # the same folders through `axolotl-calib table` give the same table
    capsys.readouterr()
    folders = [("DPO", "dpo"), ("TS", "ts"), ("LS", "ls"), ("SFT", "sft"), ("CFT", "cft"), ("RCFT", "rcft")]
    assert main(["table", *[a for n, f in folders for a in ("--run", f"{n}={os.path.join(out, 'eval', f)}")],
                 "--in-task", "calib_jsonl", "--out-task", "calib_jsonl_ood"]) == 0
    assert capsys.readouterr().out.strip() == md.strip()

    # second invocation: every run and evaluation reused (nothing retrained), the same table
    weights = {n: os.path.getmtime(os.path.join(out, "models", n, "model.safetensors")) for n in ("ls", "sft", "cft", "rcft")}

    def no_training(*args):
        raise AssertionError(f"retrained: {args}")

    monkeypatch.setattr(reproduce, "_launch", no_training)
    assert main(_argv(world)) == 0
    second = json.load(open(os.path.join(out, "reproduce.json"), encoding="utf-8"))
    assert second["reused_runs"] == ["cft", "ls", "rcft", "sft"]
    assert second["reused_evals"] == ["cft", "dpo", "ls", "rcft", "sft"]
    assert {n: os.path.getmtime(os.path.join(out, "models", n, "model.safetensors")) for n in weights} == weights
    assert second["tables"] == first["tables"]
    assert open(os.path.join(out, "table", "calibration_table.md"), encoding="utf-8").read() == md
