"""The post-training calibration report end to end: a real ``axolotl train`` (LoRA, tiny Llama, offline) with
``calib_eval_tasks`` writes ``calibration_report.{md,json}``, reliability PNGs and lm-eval's results/samples into
``output_dir``; its numbers equal a direct lm-eval run of the SAVED adapter, and TensorBoard's event files hold them."""

from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path

import pytest

from helpers import ROOT, run_train

FIXTURES = ROOT / "lm_eval_tasks" / "calib" / "data"
TASKS = ["calib_jsonl", "calib_arc_challenge"]


def _tensorboard_scalars(root: str) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, float] = {}
    for d in sorted({os.path.dirname(p) for p in glob.glob(os.path.join(root, "**", "events.out.tfevents.*"),
                                                           recursive=True)}):
        acc = EventAccumulator(d, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            values[tag] = acc.Scalars(tag)[-1].value
    return values



def test_post_training_report_equals_direct_eval_of_saved_adapter_and_reaches_tensorboard(tmp_path, tiny_cfg,
                                                                                          mcq_rows):
    from axolotl_calib_plugin.eval.evaluation import make_hflm, run_tasks
    from axolotl_calib_plugin.eval.samples import summarize

    train = mcq_rows(8, num_options=(4, 3), seed=3, name="train.jsonl")
    heldout = mcq_rows(12, num_options=(4, 5, 3), seed=4, name="heldout.jsonl")
    cfg = tiny_cfg(
        datasets=[{"path": str(train), "type": "axolotl_calib_plugin.mcq"}],
        num_epochs=1, logging_steps=1, save_strategy="no", seed=7, learning_rate=5e-3,
        adapter="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"],
        use_tensorboard=True,
        calib_eval_tasks=TASKS, calib_eval_data_files=[str(heldout)], calib_eval_data_dir=str(FIXTURES),
        calib_eval_batch_size=4,
    )
    log = run_train(cfg, tmp_path)
    out = cfg.output_dir
    assert "calibration report written to" in log
    with open(os.path.join(out, "calibration_report.json"), encoding="utf-8") as fh:
        report = json.load(fh)
    assert list(report["tasks"]) == TASKS
    assert report["meta"]["evaluated"] == "in-memory trained model"
    for task in TASKS:
        t = report["tasks"][task]
        assert all(math.isfinite(t[m]) for m in ("acc", "conf_ece", "cw_ece")), t
        assert t["n"] == {"calib_jsonl": 12, "calib_arc_challenge": 24}[task]
        assert os.path.getsize(os.path.join(out, report["plots"][task])) > 10_000
    md = Path(out, "calibration_report.md").read_text()
    assert "| calib_arc_challenge | 24 |" in md and "![calib_jsonl](reliability_calib_jsonl.png)" in md
    assert glob.glob(os.path.join(out, "calibration_eval", "**", "samples_calib_jsonl_*.jsonl"), recursive=True)

    # training recorded the token-sequence rule every evaluation route follows (the tiny tokenizer adds a BOS)
    with open(os.path.join(out, "calib_settings.json"), encoding="utf-8") as fh:
        assert json.load(fh)["add_bos_token"] is True

    # the same numbers from an independent lm-eval run of the adapter SAVED in output_dir
    assert os.path.isfile(os.path.join(out, "adapter_config.json"))
    lm = make_hflm(out, device="cpu", dtype="float32", batch_size=4)
    direct = summarize(run_tasks(lm, TASKS, data_dir=str(FIXTURES), data_files=[str(heldout)]))
    for task in TASKS:
        for m in ("acc", "conf_ece", "cw_ece"):
            assert report["tasks"][task][m] == pytest.approx(direct[task][m], abs=1e-6), (task, m)

    # the trainer's loggers got them after training (HF's TensorBoard callback closes its writer at train end)
    scalars = _tensorboard_scalars(out)
    assert any(k.startswith("train/loss") for k in scalars), sorted(scalars)
    for task in TASKS:
        for m in ("acc", "conf_ece", "cw_ece", "n"):
            assert scalars[f"test/calib/{task.removeprefix('calib_')}/{m}"] == pytest.approx(report["tasks"][task][m], rel=1e-6), (task, m)
