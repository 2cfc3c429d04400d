"""Held-out M-step variants end to end: real ``axolotl train`` runs whose logged per-bin statistics, q_m, fitted
temperature and saved targets equal an independent per-row forward of the same model."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from axolotl_calib_plugin.train import em, em_state
from axolotl_calib_plugin.train.em import temperature_targets
from axolotl_calib_plugin.train.eval_calibration import target_sample_ids
from helpers import expected_targets, hand_estep, log_history, prepared_train_dataset, run_train


def _refreshes(output_dir):
    with open(os.path.join(output_dir, "calib_refresh.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]



def _hand_bins(probs, labels, n_bins=10):
    """Per-bin count and accuracy by plain numpy: bins ((m-1)/M, m/M] of the max probability."""
    conf = probs.max(1).values.numpy()
    pred = probs.argmax(1).numpy()
    b = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    right = np.bincount(b, weights=(pred == labels.numpy()).astype(float), minlength=n_bins)
    return count, np.where(count > 0, right / np.maximum(count, 1), np.nan)



def test_heldout_bins_in_a_real_run_equal_a_hand_forward(tmp_path, tiny_cfg, tiny_model_dir, mcq_rows):
    n, n_val, prior = 20, 6, 2.0
    cfg = tiny_cfg(datasets=[{"path": str(mcq_rows(n, seed=21)), "type": "axolotl_calib_plugin.mcq"}],
                   calib_mode="cft", calib_bin_accuracy="heldout", calib_heldout_prior=prior, num_epochs=2,
                   val_set_size=n_val, eval_strategy="epoch", save_strategy="epoch", logging_steps=1, seed=3)
    run_train(cfg, tmp_path)
    refreshes = _refreshes(cfg.output_dir)
    assert [r["refresh"] for r in refreshes] == [1, 2]
    ds = prepared_train_dataset(cfg.dataset_prepared_path)
    train_rows, eval_rows = ds.select(range(n - n_val)), ds.select(range(n - n_val, n))
    # held-out means never fitted: half the eval prompts (by sample id) set the targets, the other half is eval_calib
    eval_ids = np.array([max(r["calib_sample_id"]) for r in eval_rows])
    target = target_sample_ids(eval_ids, 0.5)
    is_target = np.isin(eval_ids, target)
    held_rows = eval_rows.select(np.nonzero(is_target)[0].tolist())
    assert len(held_rows) == 3
    # refresh 1 (step 0): the start model, by hand, on the training rows and on the held-out target rows
    p_tr, y_tr, _, k_tr = hand_estep(tiny_model_dir, train_rows, cfg)
    p_h, y_h, _, _ = hand_estep(tiny_model_dir, held_rows, cfg)
    c_tr, a_tr = _hand_bins(p_tr, y_tr)
    c_h, a_h = _hand_bins(p_h, y_h)
    bins = refreshes[0]["bins"]
    assert [b["count"] for b in bins] == c_tr.tolist() and [b["heldout_count"] for b in bins] == c_h.tolist()
    want_q = np.where(c_h > 0, (c_h * np.nan_to_num(a_h) + prior * np.nan_to_num(a_tr)) / (c_h + prior), a_tr)
    want_q = np.where(np.isnan(a_tr), np.where(c_h > 0, a_h, np.nan), want_q)
    got_q = np.array([np.nan if b["q"] is None else b["q"] for b in bins])
    assert np.allclose(got_q, want_q, atol=1e-5, equal_nan=True)
    # the targets saved after epoch 1 were built from that q
    steps_per_epoch = math.ceil((n - n_val) / cfg.micro_batch_size)
    state = em_state.EMState.load(os.path.join(cfg.output_dir, f"checkpoint-{steps_per_epoch}"))
    _, _, ids, _ = hand_estep(tiny_model_dir, train_rows, cfg)
    want = expected_targets(p_tr, torch.from_numpy(want_q), k_tr, 10)
    w = state.targets.shape[1]
    assert torch.all(want[:, w:] == 0)
    assert torch.allclose(state.targets, want[torch.argsort(ids)][:, :w], atol=1e-5)
    # refresh 2 took its held-out rows from the evaluation that ended epoch 1 (same model, no extra forward): the
    # target half, logged as eval_calib_fit/*; eval_calib/* is the other half, whose ids never set a target
    ev = [h for h in log_history(cfg.output_dir) if "eval_calib/acc" in h and h["step"] == steps_per_epoch][0]
    held2 = refreshes[1]["bins"]
    n_h = sum(b["heldout_count"] for b in held2)
    acc_h = sum(b["heldout_count"] * (b["heldout_acc"] or 0.0) for b in held2) / n_h
    assert n_h == ev["eval_calib_fit/n"] == 3 and acc_h == pytest.approx(ev["eval_calib_fit/acc"], abs=2e-6)
    assert ev["eval_calib/n"] == 3
    final = em_state.EMState.load(cfg.output_dir)
    read = set(final.extra["heldout_golds_ids"].tolist())
    assert read == set(target.tolist()) and not read & set(eval_ids[~is_target].tolist())



def test_temperature_targets_in_a_real_run_equal_softmax_of_hand_probs(tmp_path, tiny_cfg, tiny_model_dir, mcq_rows):
    from axolotl_calib_plugin.eval.temperature import fit_temperature

    n, n_val = 16, 6
    cfg = tiny_cfg(datasets=[{"path": str(mcq_rows(n, seed=22)), "type": "axolotl_calib_plugin.mcq"}],
                   calib_mode="cft", calib_targets="temperature", calib_ece_loss="kl", num_epochs=1,
                   val_set_size=n_val, save_strategy="epoch", logging_steps=1, seed=4)
    run_train(cfg, tmp_path)
    ds = prepared_train_dataset(cfg.dataset_prepared_path)
    p_tr, _, ids, k_tr = hand_estep(tiny_model_dir, ds.select(range(n - n_val)), cfg)
    eval_rows = ds.select(range(n - n_val, n))
    eval_ids = np.array([max(r["calib_sample_id"]) for r in eval_rows])
    target_rows = eval_rows.select(np.nonzero(np.isin(eval_ids, target_sample_ids(eval_ids, 0.5)))[0].tolist())
    p_h, y_h, _, k_h = hand_estep(tiny_model_dir, target_rows, cfg)
    want_t = fit_temperature(em.option_log_probs(p_h, k_h), y_h)
    logged = [h for h in log_history(cfg.output_dir) if "calib/heldout_temperature" in h][0]
    assert logged["calib/heldout_temperature"] == pytest.approx(want_t, rel=1e-3)
    state = em_state.EMState.load(cfg.output_dir)
    want = temperature_targets(p_tr, float(state.extra["temperature"]), k_tr).float()
    w = state.targets.shape[1]
    assert torch.all(want[:, w:] == 0)
    assert torch.allclose(state.targets, want[torch.argsort(ids)][:, :w], atol=1e-5)
