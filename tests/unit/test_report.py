"""The post-training calibration report (``calib_eval_tasks``) and its config-time checks.

* the real ``axolotl train`` with a report: ``tests/e2e/test_report_e2e.py``;
* every way the report could fail after training fails at config validation instead, naming the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "lm_eval_tasks" / "calib" / "data"
TASKS = ["calib_jsonl", "calib_arc_challenge"]


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
