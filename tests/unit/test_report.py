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


def test_trainer_log_names_of_the_report():
    """test_calib/<task without calib_>/<metric>: HF shows test/calib/arc_challenge/conf_ece, never calib/calib_...;
    a metric that is NaN (no rows for it) is not sent."""
    from axolotl_calib_plugin.train.report_hook import log_payload

    got = log_payload({"calib_arc_challenge": {"acc": 0.5, "conf_ece": 0.125, "cw_ece": float("nan"), "n": 24},
                       "calib_jsonl": {"acc": 1.0, "conf_ece": 0.0, "cw_ece": 0.25, "n": 12}})
    assert got == {"test_calib/arc_challenge/acc": 0.5, "test_calib/arc_challenge/conf_ece": 0.125,
                   "test_calib/arc_challenge/n": 24.0, "test_calib/jsonl/acc": 1.0, "test_calib/jsonl/conf_ece": 0.0,
                   "test_calib/jsonl/cw_ece": 0.25, "test_calib/jsonl/n": 12.0}


def test_figures_are_tagged_like_the_scalars_hf_shows():
    """Images bypass HF's on_log: log_figure names them as HF's rewrite_logs names the scalars (eval_calib/x ->
    eval/calib/x, calib/x -> train/calib/x), and sends nothing without an image logger."""
    from axolotl_calib_plugin.train.heldout import has_image_logger, log_figure

    class TensorBoardCallback:  # the name is what log_figure recognises, as with HF's callback
        def __init__(self):
            self.tags = []
            self.tb_writer = self

        def add_figure(self, tag, fig, global_step, close):
            self.tags.append((tag, global_step))

        def flush(self):
            pass

    tb = TensorBoardCallback()
    log_figure([object(), tb], "eval_calib/reliability", "fig", "unused.png", 3)
    log_figure([tb], "calib/bins", "fig", "unused.png", 4)
    assert tb.tags == [("eval/calib/reliability", 3), ("train/calib/bins", 4)]
    assert has_image_logger([tb]) and not has_image_logger([object()])
    tb.tb_writer = None  # HF closed its writer at the end of training
    assert not has_image_logger([tb])


def test_report_of_a_model_answering_one_letter_carries_the_chance_warning(tmp_path):
    """A model whose argmax is option A on all 99 questions (golds spread over 4 options, 24 of them A):
    accuracy 24/99 = 0.2424 is chance (0.25 inside its Wilson interval) and A takes 100 % of the answers. The
    report's JSON, the Markdown's top and its table say so; a model that knows the answers is not flagged; the
    chance level of mixed option counts is the mean of 1/K."""
    import json

    from axolotl_calib_plugin.eval.chance import chance_check
    from axolotl_calib_plugin.eval.report import markdown_table, write_report

    golds = [0] * 24 + [1] * 25 + [2] * 25 + [3] * 25
    one = [{"doc_id": i, "probs": [0.31, 0.23, 0.23, 0.23], "gold": g, "logliks": []} for i, g in enumerate(golds)]
    good = [{"doc_id": i, "probs": [0.8 if j == g else 0.2 / 3 for j in range(4)], "gold": g, "logliks": []}
            for i, g in enumerate(golds)]
    tasks = {"calib_jsonl": {"kind": "task", "acc": 24 / 99, "conf_ece": 0.07, "cw_ece": 0.1, "n": 99},
             "calib_arc_challenge": {"kind": "task", "acc": 1.0, "conf_ece": 0.2, "cw_ece": 0.1, "n": 99}}
    paths = write_report(str(tmp_path), tasks, {"calib_jsonl": one, "calib_arc_challenge": good}, title="one letter")
    doc = json.loads(open(paths["json"]).read())
    ch = doc["tasks"]["calib_jsonl"]["chance"]
    assert (ch["chance"], ch["correct"], ch["predicted"], ch["top_letter"]) == (0.25, 24, [99, 0, 0, 0], "A")
    assert ch["near_chance"] and ch["one_letter"] and ch["ci_low"] < 0.25 < ch["ci_high"]
    assert not doc["tasks"]["calib_arc_challenge"]["chance"]["warnings"]
    assert len(doc["warnings"]) == 2 and all(w.startswith("calib_jsonl: WARNING") for w in doc["warnings"])
    md = open(paths["md"]).read()
    top = md.split("| task |")[0]
    assert "within noise of chance 0.2500 (1/K)" in top and "A is the model's answer on 99 of 99 questions (100%" in top
    assert "| calib_jsonl | 99 | 0.2424 (!) | 0.2500 |" in md and "| calib_arc_challenge | 99 | 1.0000 | 0.2500 |" in md
    assert "calib_jsonl: accuracy 0.2424 (95 % CI [" in md and "predicted letters: A 99 (100%), B 0 (0%)" in md
    assert "(!)" in markdown_table(doc["tasks"])  # what `axolotl-calib eval` prints from the same entries
    # mixed K: chance = mean 1/K (threshold 1.5 x 0.375); K = 2 rows flag one letter from 75 % of the answers
    mixed = chance_check([[0.6, 0.4, 0, 0], [0.5, 0.2, 0.2, 0.1]], [0, 1], num_options=[2, 4])
    assert mixed.chance == (1 / 2 + 1 / 4) / 2 and mixed.mixed_k and mixed.one_letter_threshold == 1.5 * 0.375
    assert chance_check([[0.6, 0.4]] * 4, [0, 1, 0, 1]).one_letter_threshold == 0.75
