"""Held-out M-step variants (``calib_bin_accuracy: heldout``, ``calib_targets: temperature``).

Unit level: the shrinkage rule and the temperature targets on hand-computed cases; the config refuses a
held-out variant without an eval split. End to end: ``tests/e2e/test_heldout_targets_e2e.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from axolotl_calib_plugin.train import em, em_state
from axolotl_calib_plugin.train.em import BinStatistics, heldout_bin_accuracy, temperature_targets

NAN = float("nan")


def _stats(count, acc):
    return BinStatistics(torch.tensor(count, dtype=torch.int64), torch.tensor(acc, dtype=torch.float64),
                         torch.zeros(len(count), dtype=torch.float64))


# ---------------------------------------------------------------------- unit: the M-step rules
def test_heldout_q_is_shrunk_toward_training_accuracy_by_hand():
    train = _stats([0, 2, 0, 3, 5], [NAN, 1.0, NAN, 0.5, 0.8])
    held = _stats([1, 0, 0, 4, 10], [0.0, NAN, NAN, 0.25, 0.3])
    q = heldout_bin_accuracy(train, held, prior=2.0)
    # bin 0: no training row -> the held-out accuracy; bin 1: no held-out row -> training accuracy;
    # bin 2: neither -> NaN (no sample reads it); bins 3, 4: (n acc + 2 q_train) / (n + 2)
    assert q[0] == 0.0 and q[1] == 1.0 and math.isnan(q[2])
    assert q[3] == pytest.approx((4 * 0.25 + 2 * 0.5) / 6)
    assert q[4] == pytest.approx((10 * 0.3 + 2 * 0.8) / 12)
    # prior 0: the held-out accuracy wherever there are held-out rows
    q0 = heldout_bin_accuracy(train, held, prior=0.0)
    assert q0[3] == 0.25 and q0[4] == 0.3 and q0[1] == 1.0
    with pytest.raises(ValueError, match="calib_heldout_prior"):
        heldout_bin_accuracy(train, held, prior=-1.0)


def test_em_step_with_heldout_bins_uses_heldout_q_for_every_training_row():
    # training rows: two in bin 9 (conf 0.95, both right), one in bin 5 (conf 0.55, wrong)
    probs = torch.tensor([[0.95, 0.05], [0.05, 0.95], [0.55, 0.45]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    k = torch.tensor([2, 2, 2])
    # held-out rows: four in bin 9, one right (the model memorised its training rows)
    h_probs = torch.tensor([[0.96, 0.04]] * 4, dtype=torch.float64)
    h_labels = torch.tensor([0, 1, 1, 1])
    stats, ids, targets, info = em.em_step(torch.tensor([3, 1, 2]), probs, labels, k, 10, heldout=(h_probs, h_labels, k[:1].repeat(4)),
                                           bin_accuracy="heldout", prior=4.0, return_info=True)
    q9 = (4 * 0.25 + 4 * 1.0) / 8  # shrunk halfway toward the training-row accuracy 1.0
    assert float(info["bin_target"][9]) == pytest.approx(q9)
    assert float(info["bin_target"][5]) == 0.0  # no held-out row in bin 5: the training accuracy (0 of 1)
    assert int(info["heldout_bin_count"][9]) == 4 and float(info["heldout_bin_accuracy"][9]) == 0.25
    # ids sorted: 1 -> row 1 (argmax 1), 2 -> row 2 (argmax 0), 3 -> row 0 (argmax 0)
    assert torch.allclose(targets, torch.tensor([[1 - q9, q9], [0.0, 1.0], [q9, 1 - q9]], dtype=torch.float32))
    # the training-row rule on the same data: q9 = 1
    _, _, t_train = em.em_step(torch.tensor([3, 1, 2]), probs, labels, k, 10)
    assert torch.allclose(t_train[0], torch.tensor([0.0, 1.0]))


def test_temperature_targets_equal_softmax_of_scaled_log_probs_and_mask_padding():
    p = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.5, 0.5, 0.0, 0.0]], dtype=torch.float64)
    t = temperature_targets(p, 2.0, torch.tensor([3, 2]))
    want0 = np.sqrt([0.7, 0.2, 0.1]) / np.sqrt([0.7, 0.2, 0.1]).sum()  # p^(1/T), renormalised
    assert np.allclose(t[0, :3].numpy(), want0) and t[0, 3] == 0
    assert torch.equal(t[1], torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(temperature_targets(p, 1.0, torch.tensor([3, 2])), p)
    with pytest.raises(ValueError, match="temperature"):
        temperature_targets(p, 0.0)


def test_em_step_temperature_targets_use_the_heldout_fit():
    from axolotl_calib_plugin.eval.temperature import fit_temperature

    g = torch.Generator().manual_seed(0)
    h_logits = 4.0 * torch.randn(200, 4, generator=g, dtype=torch.float64)
    # labels drawn from softmax(logits / 4): a model 4x over-confident, so T comes out near 4 (inside the bounds)
    h_labels = torch.multinomial(torch.softmax(h_logits / 4, 1), 1, generator=g).view(-1)
    h_probs = torch.softmax(h_logits, 1)
    probs = torch.softmax(torch.randn(6, 4, generator=g, dtype=torch.float64) * 3, 1)
    k = torch.full((6,), 4)
    _, ids, targets, info = em.em_step(torch.arange(6), probs, torch.zeros(6, dtype=torch.int64), k, 10,
                                       heldout=(h_probs, h_labels, torch.full((200,), 4)), targets_kind="temperature",
                                       return_info=True)
    want_t = fit_temperature(torch.log(h_probs), h_labels)
    assert float(info["temperature"]) == pytest.approx(want_t, rel=1e-6) and want_t > 3
    assert torch.allclose(targets, torch.softmax(torch.log(probs) / want_t, 1).float(), atol=1e-6)


def test_heldout_variants_need_heldout_rows_in_the_mstep():
    p = torch.tensor([[0.6, 0.4]], dtype=torch.float64)
    with pytest.raises(ValueError, match="held-out rows"):
        em.em_step(torch.tensor([0]), p, torch.tensor([0]), torch.tensor([2]), 10, bin_accuracy="heldout")


def test_state_keeps_heldout_statistics_through_save_and_load(tmp_path):
    probs = torch.tensor([[0.95, 0.05], [0.3, 0.7]], dtype=torch.float64)
    st = em_state.EMState.from_estep(torch.tensor([0, 1]), probs, torch.tensor([0, 0]), torch.tensor([2, 2]), 10,
                               heldout=(probs, torch.tensor([1, 1]), torch.tensor([2, 2])), bin_accuracy="heldout",
                               prior=0.0)
    st.save(tmp_path)
    back = em_state.EMState.load(tmp_path)
    assert torch.equal(back.extra["bin_target"].nan_to_num(-1), st.extra["bin_target"].nan_to_num(-1))
    table = back.bin_table()
    assert table[9] == {"bin": 9, "count": 1, "acc": 1.0, "conf": 0.95, "q": 0.0, "heldout_count": 1, "heldout_acc": 0.0}
    assert back.summary()["calib/heldout_n"] == 2


@pytest.mark.parametrize("keys, message", [
    ({"calib_bin_accuracy": "heldout"}, "need held-out rows"),
    ({"calib_targets": "temperature"}, "val_set_size: 0.1"),
])
def test_config_without_eval_split_is_refused(tiny_cfg, validate_cfg, keys, message):
    with pytest.raises(ValueError, match=message):
        validate_cfg(tiny_cfg(**keys))


def test_config_with_non_mcq_test_dataset_is_refused(tiny_cfg, validate_cfg, mcq_rows):
    cfg = tiny_cfg(calib_bin_accuracy="heldout",
                   test_datasets=[{"path": str(mcq_rows(4, name="t.jsonl")), "type": "alpaca", "split": "train"}])
    with pytest.raises(ValueError, match="no test_datasets entry has `type: axolotl_calib_plugin.mcq`"):
        validate_cfg(cfg)


@pytest.mark.parametrize("split, want", [
    ({"val_set_size": 0.1}, "heldout"),
    ({"val_set_size": 0}, "train"),
    ({"test_datasets": [{"path": "held.jsonl", "type": "axolotl_calib_plugin.mcq", "split": "train"}]}, "heldout"),
])
def test_auto_bin_accuracy_reads_heldout_rows_exactly_when_an_eval_split_exists(tiny_cfg, validate_cfg, mcq_rows,
                                                                                split, want):
    from axolotl_calib_plugin.train.args import CalibrationArgs

    if "test_datasets" in split:
        split = {"test_datasets": [dict(split["test_datasets"][0], path=str(mcq_rows(4, name="held.jsonl")))]}
    raw = tiny_cfg(calib_bin_accuracy="auto", **split)
    assert validate_cfg(raw).calib_bin_accuracy == want
    assert CalibrationArgs.from_cfg(raw).calib_bin_accuracy == want  # raw configs resolve the same way


def test_settings_built_without_a_config_resolve_auto_from_the_eval_dataset():
    """``CalibrationArgs()`` in a script has no config to resolve ``auto`` from: the M-step reads the held-out rows
    exactly when the trainer's eval dataset carries calibration rows."""
    from datasets import Dataset

    from axolotl_calib_plugin.train.args import CalibrationArgs
    from axolotl_calib_plugin.train.context import CalibrationContext

    ctx = CalibrationContext(settings=CalibrationArgs(), option_ids=(1, 2))
    assert ctx.settings.calib_bin_accuracy == "auto"
    calib_rows = Dataset.from_dict({"input_ids": [[1]], "calib_sample_id": [[0]]})
    plain_rows = Dataset.from_dict({"input_ids": [[1]]})
    assert ctx.bin_accuracy(None) == "train" and not ctx.needs_heldout(None)
    assert ctx.bin_accuracy(plain_rows) == "train"
    assert ctx.bin_accuracy(calib_rows) == "heldout" and ctx.needs_heldout({"a": plain_rows, "b": calib_rows})
    explicit = CalibrationContext(settings=CalibrationArgs(calib_bin_accuracy="train"), option_ids=(1, 2))
    assert explicit.bin_accuracy(calib_rows) == "train"
