"""The post-training calibration report (``calib_eval_tasks``) and its config-time checks.

* a real ``axolotl train`` (LoRA, tiny Llama, offline) with ``calib_eval_tasks`` writes
  ``calibration_report.{md,json}``, reliability PNGs and lm-eval's results/samples into ``output_dir``;
  its numbers equal a direct lm-eval run of the SAVED adapter, and TensorBoard's event files hold them;
* every way the report could fail after training fails at config validation instead, naming the key.
"""

from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path

import pytest

from test_train_e2e import run_train

FIXTURES = Path(__file__).resolve().parents[1] / "lm_eval_tasks" / "calib" / "data"
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


@pytest.mark.slow
def test_post_training_report_equals_direct_eval_of_saved_adapter_and_reaches_tensorboard(tmp_path, tiny_cfg,
                                                                                          mcq_rows):
    from axolotl_calib_plugin.evaluation import make_hflm, run_tasks
    from axolotl_calib_plugin.report import summarize

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
            assert scalars[f"test/calib/{task}/{m}"] == pytest.approx(report["tasks"][task][m], rel=1e-6), (task, m)


# ---------------------------------------------------------------------------------- config-time failures
def _cfg_error(validate_cfg, cfg) -> str:
    with pytest.raises(Exception) as info:
        validate_cfg(cfg)
    return str(info.value)


def test_unknown_task_and_missing_files_fail_at_validation(tiny_cfg, validate_cfg, mcq_rows, tmp_path):
    msg = _cfg_error(validate_cfg, tiny_cfg(calib_eval_tasks=["calib_arc_challange"], calib_eval_data_dir=str(FIXTURES)))
    assert "calib_eval_tasks" in msg and "did you mean 'calib_arc_challenge'" in msg
    msg = _cfg_error(validate_cfg, tiny_cfg(calib_eval_tasks=["calib_jsonl"]))
    assert "set calib_eval_data_files" in msg
    msg = _cfg_error(validate_cfg, tiny_cfg(calib_eval_tasks=["calib_jsonl"],
                                            calib_eval_data_files=[str(tmp_path / "missing.jsonl")]))
    assert "calib_eval_data_files" in msg and "missing.jsonl: no such file" in msg
    bad = mcq_rows(rows=[{"question": "q?", "choices": ["a", "b"], "answer": 0},
                         {"question": "q2?", "choices": ["a", "b"], "answer": "E"}], name="bad.jsonl")
    msg = _cfg_error(validate_cfg, tiny_cfg(calib_eval_tasks=["calib_jsonl"], calib_eval_data_files=[str(bad)]))
    assert "calib_eval_data_files" in msg and "bad.jsonl line 2" in msg and "'answer'" in msg and "'E'" in msg
    msg = _cfg_error(validate_cfg, tiny_cfg(calib_eval_data_dir=str(FIXTURES)))
    assert "set calib_eval_tasks" in msg
    msg = _cfg_error(validate_cfg, tiny_cfg(calib_eval_tasks=["calib_mmlu"], calib_eval_limit=0,
                                            calib_eval_data_dir=str(FIXTURES)))
    assert "calib_eval_limit" in msg


def test_hub_tasks_offline_without_local_data_fail_at_validation(tiny_cfg, validate_cfg, tmp_path):
    # conftest sets HF_DATASETS_OFFLINE=1: the hub suites of calib_in_domain could not be read after training
    msg = _cfg_error(validate_cfg, tiny_cfg(calib_eval_tasks=["calib_in_domain"]))
    assert "calib_eval_data_dir" in msg and "calib_mmlu.jsonl" in msg and "HF_DATASETS_OFFLINE" in msg
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    msg = _cfg_error(validate_cfg, tiny_cfg(calib_eval_tasks=["calib_in_domain_pooled"], calib_eval_data_dir=str(empty)))
    assert "has no calib_mmlu.jsonl" in msg


def test_valid_report_keys_are_normalised(tiny_cfg, validate_cfg, mcq_rows, monkeypatch, tmp_path):
    data = mcq_rows(4, name="heldout.jsonl")
    monkeypatch.chdir(data.parent)
    out = validate_cfg(tiny_cfg(calib_eval_tasks="calib_jsonl,calib_in_domain_pooled", calib_eval_data_files="heldout.jsonl",
                                calib_eval_data_dir=str(FIXTURES), calib_eval_limit=0.5))
    assert out.calib_eval_tasks == ["calib_jsonl", "calib_in_domain_pooled"]
    assert out.calib_eval_data_files == [str(data)]  # absolute: the report runs after training
    assert out.calib_eval_limit == 0.5 and out.calib_eval_batch_size == 8


def test_lm_eval_plugin_route_with_our_tasks_fails_at_validation(tiny_cfg, validate_cfg):
    cfg = tiny_cfg(plugins=["axolotl_calib_plugin.CalibrationPlugin", "axolotl.integrations.lm_eval.LMEvalPlugin"],
                   lm_eval_tasks=["calib_mmlu", "hellaswag"])
    msg = _cfg_error(validate_cfg, cfg)
    assert "LMEvalPlugin" in msg and "calib_eval_tasks: [calib_mmlu]" in msg and "--include_path" in msg
    # other tasks through LMEvalPlugin stay allowed
    ok = validate_cfg(tiny_cfg(plugins=["axolotl_calib_plugin.CalibrationPlugin", "axolotl.integrations.lm_eval.LMEvalPlugin"],
                               lm_eval_tasks=["hellaswag"]))
    assert ok.lm_eval_tasks == ["hellaswag"]
