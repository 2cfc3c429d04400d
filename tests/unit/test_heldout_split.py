"""Held-out means never fitted, and the numbers around the held-out M-step that must not mislead.

* the eval split's prompts split by sample id into target rows (the M-step) and report rows (``eval_calib/*``);
  the trainer logs the target rows as ``eval_calib_fit/*``; no report row ever sets a target (checked by id);
* eval rows an evaluation left out (a sampler that drops its last partial batch) still count in ``eval_calib/*``;
* overlap of the eval split / report files with the training prompts, and an eval split left empty by
  ``sequence_len``;
* a temperature fit that ends on a bound says so and the targets fall back to held-out bins; training and
  held-out rows in disjoint bins are named; a ``calib_heldout_prior`` nothing reads is named;
* resume: held-out golds, a state without settings, another calib_bins, tampered state files.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from axolotl_calib_plugin import metrics
from axolotl_calib_plugin.train import em, em_state
from axolotl_calib_plugin.train.eval_calibration import TargetSplitError, missing_entries, target_sample_ids
from helpers import PLUGIN, direct_option_probs, make_mcq_rows

LETTERS = list("ABCDE")


# ---------------------------------------------------------------------- the split
def test_target_rows_are_a_stated_fraction_of_the_prompts_chosen_by_sample_id():
    ids = np.array([90, 10, 50, 30, 70, 10, 20, 80, 40, 60], dtype=np.int64)  # 9 distinct prompts (10 twice)
    assert target_sample_ids(ids, 0.5).tolist() == [10, 20, 30, 40, 50]  # floor(4.5 + 0.5) = 5 smallest ids
    assert target_sample_ids(ids[::-1], 0.5).tolist() == [10, 20, 30, 40, 50]  # order of the rows does not matter
    assert target_sample_ids(ids, 0.2).tolist() == [10, 20]
    assert target_sample_ids(ids, 1.0).tolist() == [10, 20, 30, 40, 50, 60, 70, 80, 90]  # 1: every prompt fits
    with pytest.raises(TargetSplitError, match=r"calib_target_fraction: 0.01 splits .* 9 distinct prompt\(s\) into 0 target"):
        target_sample_ids(ids, 0.01)
    with pytest.raises(TargetSplitError, match="no row is left to report .* calib_target_fraction: 1"):
        target_sample_ids(ids, 0.99)
    with pytest.raises(TargetSplitError, match="one half is empty"):
        target_sample_ids(np.array([5]), 0.5)
    for bad in (True, "0.5", None, 0.0, 1.5, float("nan")):
        with pytest.raises(TargetSplitError, match="calib_target_fraction must be a number in"):
            target_sample_ids(ids, bad)


@pytest.mark.parametrize("value, ok", [(0.3, True), ("0.3", True), (1, True), (True, False), ("half", False),
                                       (0, False), (1.2, False), (float("inf"), False)])
def test_target_fraction_key_is_checked(value, ok):
    from pydantic import ValidationError

    from axolotl_calib_plugin.train.args import CalibrationArgs

    if ok:
        assert CalibrationArgs(calib_target_fraction=value).calib_target_fraction == float(value)
    else:
        with pytest.raises(ValidationError, match="calib_target_fraction"):
            CalibrationArgs(calib_target_fraction=value)


def _tokenize(tok, cfg, rows):
    from axolotl_calib_plugin.train.args import CalibrationArgs
    from axolotl_calib_plugin.train.mcq import MCQStrategy

    settings = CalibrationArgs.from_cfg(cfg)
    strat = MCQStrategy(tok, settings, train_on_inputs=settings.train_on_inputs)
    return [strat.tokenize_row(r, i) for i, r in enumerate(rows)]


def _trainer(tmp_path, model_dir, cfg, train_rows, eval_rows, *, drop_last=False, eval_bs=3):
    import datasets
    from axolotl.core.training_args import AxolotlTrainingArguments
    from axolotl.utils.dict import DictDefault
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_calib_plugin.train.collator import CalibDataCollatorForSeq2Seq
    from axolotl_calib_plugin.train.context import CalibrationContext
    from axolotl_calib_plugin.train.trainer import AxolotlCalibTrainer

    cfg = DictDefault({"plugins": [PLUGIN], "calib_option_letters": LETTERS, "calib_mode": "cft", "calib_bins": 4,
                       "calib_estep_batch_size": 3, **cfg})
    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    train = datasets.Dataset.from_list(_tokenize(tok, cfg, train_rows))
    held = datasets.Dataset.from_list(_tokenize(tok, cfg, eval_rows))
    args = AxolotlTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2,
                                    per_device_eval_batch_size=eval_bs, report_to=[], use_cpu=True, disable_tqdm=True,
                                    dataloader_drop_last=drop_last)
    coll = CalibDataCollatorForSeq2Seq(tok, padding=True, return_tensors="pt")
    tr = AxolotlCalibTrainer(model=model, args=args, train_dataset=train, eval_dataset=held, data_collator=coll,
                             eval_data_collator=coll, processing_class=tok)
    tr.attach_calibration(CalibrationContext.from_cfg(cfg, tok, [train, held]))
    return tr, held


def _refresh(tr, step):
    from axolotl_calib_plugin.train.callbacks import EMRefreshCallback

    cb = EMRefreshCallback(tr.calib, tr)
    tr.state.global_step, tr.state.epoch = step, 0.0
    return cb.refresh_now(tr.state, 0)


def test_eval_calib_scores_only_rows_that_never_set_a_target(tmp_path, tiny_model_dir):
    """The Done-when of 'held-out means never fitted', checked by sample id: the M-step's held-out rows (from the
    evaluation at its step, and from its own forward at another step) are exactly the target half; eval_calib/*
    equals a direct computation on the report half and eval_calib_fit/* on the target half."""
    rows = make_mcq_rows(18, num_options=(4, 3, 5, 2), seed=3)
    tr, held = _trainer(tmp_path, tiny_model_dir, {"calib_bin_accuracy": "heldout", "calib_heldout_prior": 1.0},
                        rows[:8], rows[8:])
    out = tr.evaluate()
    ids, gold, ks, probs = direct_option_probs(tr.model, held, list(tr.calib.option_ids))
    target = target_sample_ids(ids, 0.5)
    fit = np.isin(ids, target)
    assert fit.sum() == 5 and (~fit).sum() == 5
    for prefix, rows_ in (("eval_calib", ~fit), ("eval_calib_fit", fit)):
        want = metrics.calibration_metrics(probs[rows_], gold[rows_], 10, num_options=ks[rows_])
        assert out[f"{prefix}/n"] == int(rows_.sum())
        assert out[f"{prefix}/conf_ece"] == pytest.approx(want["conf_ece"], abs=1e-5)
        assert out[f"{prefix}/acc"] == pytest.approx(want["accuracy"], abs=1e-12)
    report_ids = set(ids[~fit].tolist())
    for step in (0, 5):  # 0: the evaluation's cached rows (same step); 5: the M-step's own forward
        tr.state.global_step = 0
        state = _refresh(tr, step)
        read = set(state.extra["heldout_golds_ids"].tolist())
        assert read == set(target.tolist()) and not read & report_ids
        assert int(state.extra["heldout_bin_count"].sum()) == 5
        # q of the bins is the target half's accuracy, shrunk toward the training rows' (prior 1)
        h = em.bin_statistics(probs[fit].float(), torch.from_numpy(gold[fit]), 4)
        want_q = em.heldout_bin_accuracy(state.stats, h, 1.0)
        torch.testing.assert_close(state.extra["bin_target"], want_q, equal_nan=True, atol=1e-5, rtol=0)


def test_eval_rows_the_sampler_dropped_still_count(tmp_path, tiny_model_dir):
    """A sampler that drops the last partial batch (dataloader_drop_last, or sample packing's eval multipack
    sampler) left 1 of 7 rows out: eval_calib/* still covers all 7, equal to a direct forward."""
    rows = make_mcq_rows(15, num_options=(4, 3, 5, 2), seed=4)
    tr, held = _trainer(tmp_path, tiny_model_dir, {"calib_bin_accuracy": "train"}, rows[:8], rows[8:], drop_last=True,
                        eval_bs=2)
    assert len(tr.get_eval_dataloader()) == 3  # 7 rows, batches of 2, the last partial one dropped
    out = tr.evaluate()
    _, gold, ks, probs = direct_option_probs(tr.model, held, list(tr.calib.option_ids))
    want = metrics.calibration_metrics(probs, gold, 10, num_options=ks)
    assert out["eval_calib/n"] == 7
    assert out["eval_calib/conf_ece"] == pytest.approx(want["conf_ece"], abs=1e-5)
    assert out["eval_calib/acc"] == pytest.approx(want["accuracy"], abs=1e-12)


def test_missing_entries_counts_repeated_prompts():
    from types import SimpleNamespace

    data = SimpleNamespace(sample_id=np.array([7, 7, 8, 9]), answer_idx=np.array([1, 1, 0, 2]))
    assert missing_entries(data, torch.tensor([7, 9]), torch.tensor([1, 2])).tolist() == [1, 2]
    assert missing_entries(data, torch.tensor([7, 7, 8, 9]), torch.tensor([1, 1, 0, 2])).tolist() == []


# ---------------------------------------------------------------------- overlap and empty eval splits
def test_eval_split_overlapping_training_is_named_and_refused_when_it_is_all_training(caplog):
    from axolotl_calib_plugin.train.splits import check_overlap

    cfg = {"datasets": [{"path": "train.jsonl", "type": "axolotl_calib_plugin.mcq"}],
           "test_datasets": [{"path": "held.jsonl", "type": "axolotl_calib_plugin.mcq", "split": "train"}]}
    train = np.array([1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"every one of the 2 eval prompts \(test_datasets held.jsonl \[split train\]\) "
                                         r"is also a training prompt \(train.jsonl\)"):
        check_overlap(cfg, train, np.array([2, 3]), heldout_mstep=True)
    with caplog.at_level("WARNING", logger="axolotl_calib_plugin.train.splits"):
        msgs = check_overlap(cfg, train, np.array([2, 3]), heldout_mstep=False)  # training-row bins: a warning
        msgs += check_overlap(cfg, train, np.array([3, 9, 10]), heldout_mstep=True, report_files={"rep.jsonl": np.array([4, 11])})
    assert msgs[0].startswith("2 of the 2 eval prompts (test_datasets held.jsonl [split train]) are also training prompts")
    assert msgs[1].startswith("1 of the 3 eval prompts") and "held-out M-step reads their training-row accuracy" in msgs[1]
    assert msgs[2].startswith("calib_eval_data_files rep.jsonl: 1 of its 2 prompts are training prompts (train.jsonl)")
    assert "1 of the 3 eval prompts" in caplog.text
    assert check_overlap(cfg, train, np.array([8, 9]), heldout_mstep=True) == []


def test_report_file_rows_get_the_training_rows_sample_ids(tiny_tokenizer, mcq_rows):
    from axolotl.utils.dict import DictDefault

    from axolotl_calib_plugin.train.splits import eval_data_file_ids

    rows = make_mcq_rows(6, seed=1)
    cfg = DictDefault({"plugins": [PLUGIN], "calib_option_letters": LETTERS, "calib_mode": "cft"})
    ids = _tokenize(tiny_tokenizer, cfg, rows[:4])
    train_ids = sorted(max(r["calib_sample_id"]) for r in ids)
    path = str(mcq_rows(rows=rows[2:] + [{"question": "bad row"}], name="report.jsonl"))  # 2 shared, 2 new, 1 bad
    got = eval_data_file_ids(cfg, tiny_tokenizer, [path])[path]
    assert got.size == 4 and np.intersect1d(got, train_ids).size == 2


def test_eval_split_left_empty_by_sequence_len_says_why(tiny_cfg, mcq_rows, tiny_tokenizer):
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets

    from axolotl_calib_plugin.rows import CalibDataError
    from axolotl_calib_plugin.train.splits import check_eval_rows_left

    long_rows = [{"question": "long " * (100 + 10 * i), "choices": ["a", "b"], "answer": i % 2} for i in range(3)]
    held = mcq_rows(rows=long_rows, name="long.jsonl")
    cfg = load_cfg(tiny_cfg(sequence_len=64, test_datasets=[{"path": str(held), "type": "axolotl_calib_plugin.mcq",
                                                              "split": "train"}]))
    eval_ds = load_datasets(cfg=cfg).eval_dataset
    assert eval_ds is None or len(eval_ds) == 0
    with pytest.raises(CalibDataError, match=rf"the eval split has no rows left .* sequence_len 64 .*\n  test_datasets\[0\] "
                                             rf"{held}: 3 of its 3 rows are longer than sequence_len 64 tokens .*\n"
                                             r"Raise sequence_len to at least \d+ tokens"):
        check_eval_rows_left(cfg, tiny_tokenizer, eval_ds)


# ---------------------------------------------------------------------- temperature fits on a bound
def test_temperature_fit_says_when_it_ends_on_a_bound():
    from axolotl_calib_plugin.eval.temperature import fit_temperature, fit_temperature_result, temperature_bound_warning

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.3, 3.0], [1.0, 0.0, 0.2]], dtype=torch.float64)
    right, wrong = logits.argmax(1), (logits.argmax(1) + 1) % 3
    lo = fit_temperature_result(logits, right)
    assert (lo.temperature, lo.at_bound, lo.n) == (0.01, "lower", 4)
    assert "lower bound 0.01" in temperature_bound_warning(lo) and "near one-hot" in temperature_bound_warning(lo)
    hi = fit_temperature_result(logits, wrong)
    assert (hi.temperature, hi.at_bound) == (100.0, "upper") and "near uniform" in temperature_bound_warning(hi)
    mixed = fit_temperature_result(logits, torch.tensor([0, 1, 2, 2]))  # 3 right, 1 wrong: an interior optimum
    assert mixed.at_bound is None and 0.01 < mixed.temperature < 100 and temperature_bound_warning(mixed) is None
    assert fit_temperature(logits, torch.tensor([0, 1, 2, 2])) == mixed.temperature
    # the interior optimum really minimises the NLL
    from axolotl_calib_plugin.eval.temperature import nll

    t = mixed.temperature
    assert nll(logits, [0, 1, 2, 2], t) <= min(nll(logits, [0, 1, 2, 2], t * 1.01), nll(logits, [0, 1, 2, 2], t / 1.01))


@pytest.mark.parametrize("all_right", [True, False])
def test_temperature_targets_fall_back_to_heldout_bins_when_the_fit_hits_a_bound(all_right):
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]], dtype=torch.float64)
    h_probs = torch.tensor([[0.8, 0.2], [0.35, 0.65], [0.7, 0.3], [0.2, 0.8]], dtype=torch.float64)
    h_labels = h_probs.argmax(1) if all_right else 1 - h_probs.argmax(1)
    k = torch.full((3,), 2)
    st = em_state.EMState.from_estep(torch.tensor([5, 6, 7]), probs, torch.tensor([0, 1, 1]), k, 10,
                               heldout=(h_probs, h_labels, torch.full((4,), 2)), targets_kind="temperature", prior=2.0)
    assert st.extra["temperature_fallback"] == ("lower" if all_right else "upper")
    assert float(st.extra["temperature"]) == (0.01 if all_right else 100.0)
    # the targets are the held-out bin rule's (what calib_bin_accuracy: heldout + calib_targets: bin gives)
    ref = em_state.EMState.from_estep(torch.tensor([5, 6, 7]), probs, torch.tensor([0, 1, 1]), k, 10,
                                heldout=(h_probs, h_labels, torch.full((4,), 2)), bin_accuracy="heldout", prior=2.0)
    torch.testing.assert_close(st.targets, ref.targets)
    assert not torch.allclose(st.targets, em.temperature_targets(probs, float(st.extra["temperature"])).float())
    warnings = st.warnings()
    assert len(warnings) == 1 and "calib_targets: temperature: the temperature fit ended on its bound" in warnings[0]
    assert "fall back to the held-out bin rule" in warnings[0]
    assert st.summary()["calib/temperature_fallback"] == 1


def test_training_and_heldout_rows_in_disjoint_bins_are_named():
    """K=2 training rows (top probability >= 0.5) and K=5 held-out rows with a top probability near 0.25: no
    training row's bin holds a held-out row, so every q is a training-row accuracy although the log says held-out."""
    probs = torch.tensor([[0.9, 0.1, 0, 0, 0], [0.35, 0.65, 0, 0, 0]], dtype=torch.float64)
    h_probs = torch.tensor([[0.24, 0.19, 0.19, 0.19, 0.19], [0.2, 0.26, 0.18, 0.18, 0.18]], dtype=torch.float64)
    st = em_state.EMState.from_estep(torch.tensor([1, 2]), probs, torch.tensor([0, 0]), torch.tensor([2, 2]), 10,
                               heldout=(h_probs, torch.tensor([0, 0]), torch.tensor([5, 5])), bin_accuracy="heldout")
    assert float(st.extra["heldout_coverage"]) == 0.0 and st.summary()["calib/heldout_coverage"] == 0.0
    (msg,) = st.warnings()
    assert "none of the 2 training rows' confidence bins (bins [6, 8]) holds one of the 2 held-out target rows " \
           "(bins [2])" in msg
    assert "the training rows have [2] options and the held-out rows [5]" in msg
    # an overlapping bin: half the training rows read a held-out q, no warning
    st2 = em_state.EMState.from_estep(torch.tensor([1, 2]), probs, torch.tensor([0, 0]), torch.tensor([2, 2]), 10,
                                heldout=(probs[:1], torch.tensor([1]), torch.tensor([2])), bin_accuracy="heldout")
    assert float(st2.extra["heldout_coverage"]) == 0.5 and st2.warnings() == []


@pytest.mark.parametrize("keys, said", [
    ({"calib_heldout_prior": 5.0, "calib_bin_accuracy": "train"}, "calib_heldout_prior set, but calib_bin_accuracy is train"),
    ({"calib_heldout_prior": 5.0}, "calib_heldout_prior set, but calib_bin_accuracy is train"),  # auto, no eval split
    ({"calib_target_fraction": 0.3}, "calib_target_fraction set"),
])
def test_heldout_keys_that_nothing_reads_are_named(tiny_cfg, validate_cfg, caplog, keys, said):
    with caplog.at_level("WARNING", logger="axolotl_calib_plugin.train.config_checks"):
        validate_cfg(tiny_cfg(**keys))
    assert said in caplog.text and "has no effect" in caplog.text


def test_heldout_prior_with_heldout_bins_is_not_warned_about(tiny_cfg, validate_cfg, caplog):
    with caplog.at_level("WARNING", logger="axolotl_calib_plugin.train.config_checks"):
        validate_cfg(tiny_cfg(calib_heldout_prior=5.0, calib_bin_accuracy="heldout", val_set_size=0.25))
    assert "has no effect" not in caplog.text


# ---------------------------------------------------------------------- resume and the state file
def _state():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.6, 0.4, 0.0]], dtype=torch.float64)
    st = em_state.EMState.from_estep(torch.tensor([4, 8, 9]), probs, torch.tensor([0, 1, 1]), torch.tensor([2, 3, 2]), 5)
    from axolotl_calib_plugin.train.args import CalibrationArgs
    from axolotl_calib_plugin.train.resume_check import record, record_heldout

    record(st.extra, CalibrationArgs(calib_bins=5), torch.tensor([4, 8, 9]), torch.tensor([0, 1, 1]),
           torch.tensor([2, 3, 2]))
    record_heldout(st.extra, torch.tensor([20, 21]), torch.tensor([1, 0]), torch.tensor([3, 2]))
    return st


def test_resume_refuses_changed_heldout_golds_an_unchecked_state_and_other_bins():
    from types import SimpleNamespace

    from axolotl_calib_plugin.train.args import CalibrationArgs
    from axolotl_calib_plugin.train.resume_check import resume_problems

    st = _state()
    same = SimpleNamespace(sample_id=np.array([21, 20]), answer_idx=np.array([0, 1]), num_options=np.array([2, 3]))
    edited = SimpleNamespace(sample_id=np.array([21, 20]), answer_idx=np.array([1, 1]), num_options=np.array([2, 3]))
    other = SimpleNamespace(sample_id=np.array([21, 22]), answer_idx=np.array([0, 1]), num_options=np.array([2, 3]))
    s5 = CalibrationArgs(calib_bins=5)
    assert resume_problems(st.extra, s5, n_bins=st.n_bins, heldout=same) == []
    assert resume_problems(st.extra, s5, heldout=edited) == ["1 of 2 held-out target prompts have a different gold option"]
    assert resume_problems(st.extra, s5, heldout=other) == [
        "the held-out target rows changed (1 of the 2 it read are gone, 1 are new)"]
    v1 = {k: v for k, v in st.extra.items() if k != "target_settings"}  # a version-1 state records no settings
    assert "records no settings" in resume_problems(v1, s5)[0]
    assert resume_problems(st.extra, CalibrationArgs(calib_bins=10), n_bins=st.n_bins)[-1] == \
        "calib_bins: its targets come from 5 bins, this run has calib_bins: 10"
    assert "calib_bins: 5 -> 10" in resume_problems(st.extra, CalibrationArgs(calib_bins=10))[0]


def test_version_1_state_with_other_bins_is_refused_before_the_model_loads(tmp_path, tiny_cfg):
    from axolotl_calib_plugin.train.resume_check import check_resume_state_early

    ckpt = tmp_path / "out" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    d = _state().to_dict()
    d["version"], d["extra"] = 1, {}
    d["bin_count"], d["bin_accuracy"], d["bin_confidence"] = torch.zeros(10, dtype=torch.int64), torch.zeros(10), torch.zeros(10)
    torch.save(d, ckpt / "calib_state.pt")
    cfg = tiny_cfg(calib_bins=5, resume_from_checkpoint=str(ckpt))
    with pytest.raises(ValueError, match=r"calib_state.pt holds calibration targets made under other settings .*records "
                                         r"no settings.*calib_bins: its targets come from 10 bins, this run has calib_bins: 5"):
        check_resume_state_early(cfg)


@pytest.mark.parametrize("tamper, field", [
    (lambda d: d.update(targets=d["targets"] * 0.5), "targets: 3 row(s) do not sum to 1"),
    (lambda d: d["targets"].__setitem__(0, torch.tensor([0.4, 0.1, 0.5])),  # a K=2 row with mass on option C
     "targets: 1 row(s) put probability on options beyond the row's option count"),
    (lambda d: d.update(refresh_count=[1]), "entry 'refresh_count' must be an int, found list"),
    (lambda d: d.update(global_step="3"), "entry 'global_step' must be an int, found str"),
    (lambda d: d.update(epoch_refreshed=True), "entry 'epoch_refreshed' must be an int, found bool"),
    (lambda d: d.update(extra=[1, 2]), "entry 'extra' must be a dict, found list"),
    (lambda d: d["extra"].update(golds=[0, 1, 1]), "extra entry 'golds' must be a tensor, found list"),
    (lambda d: d["extra"].update(target_settings="calib_bins=5"), "extra entry 'target_settings' must be a dict"),
    (lambda d: d.update(targets=d["targets"].to(torch.int64)), "targets must be floating point"),
    (lambda d: d["extra"].update(golds=torch.tensor([0, 1])), "extra entry 'golds' has shape (2,), sample_ids (3,)"),
    (lambda d: d["extra"].pop("heldout_golds_ids"), "extra entry 'heldout_golds' has shape (2,), heldout_golds_ids None"),
])
def test_tampered_state_is_refused_naming_the_file_and_the_field(tmp_path, tamper, field):
    d = _state().to_dict()
    tamper(d)
    path = tmp_path / "calib_state.pt"
    torch.save(d, path)
    with pytest.raises(em_state.CalibStateError) as err:
        em_state.EMState.load(path)
    assert str(err.value).startswith(f"{path} is not a usable calibration state: ") and field in str(err.value)
    assert "Delete" in str(err.value)


def test_untampered_state_loads(tmp_path):
    st = _state()
    st.save(tmp_path)
    back = em_state.EMState.load(tmp_path)
    torch.testing.assert_close(back.targets, st.targets)


def test_empty_eval_file_is_named_under_its_own_key(tiny_cfg, validate_cfg, mcq_rows):
    empty = mcq_rows(rows=[], name="empty_held.jsonl")
    with pytest.raises(ValueError, match=r"empty_held.jsonl: the dataset file is empty .* remove it from `test_datasets:`"):
        validate_cfg(tiny_cfg(test_datasets=[{"path": str(empty), "type": "axolotl_calib_plugin.mcq", "split": "train"}]))
