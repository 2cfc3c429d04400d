"""Checkpoint resume through the real CLI: the EM state comes back from ``calib_state.pt`` and the
resumed run's targets and loss curve equal those of an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from test_train_e2e import log_history, loss_logs, refresh_logs, run_train


def test_resume_mid_epoch_restores_em_state_and_matches_uninterrupted_run(tmp_path, tiny_cfg, mcq_rows):
    from axolotl_calib_plugin.em import EMState

    data = mcq_rows(12, num_options=(4, 3, 2), seed=4)
    common = dict(datasets=[{"path": str(data), "type": "axolotl_calib_plugin.mcq"}], calib_mode="cft",
                  calib_bins=5, num_epochs=2, logging_steps=1, save_strategy="steps", save_steps=3, seed=7)
    # 1) uninterrupted: 6 steps per epoch, refreshes at steps 0 and 6, checkpoints 3, 6, 9, 12
    full = tiny_cfg(**common, output_dir=str(tmp_path / "full"), dataset_prepared_path=str(tmp_path / "prep_full"))
    (tmp_path / "a").mkdir()
    run_train(full, tmp_path / "a")
    full_hist = log_history(full.output_dir)
    assert [r["step"] for r in refresh_logs(full_hist)] == [0, 6]

    # 2) "killed" after checkpoint-9 (mid epoch 1): a fresh output dir holding only that checkpoint
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(os.path.join(full.output_dir, "checkpoint-9"), resumed_dir / "checkpoint-9")
    saved = EMState.load(resumed_dir / "checkpoint-9")
    assert (saved.refresh_count, saved.epoch_refreshed, saved.global_step) == (2, 1, 6)
    res = tiny_cfg(**common, output_dir=str(resumed_dir), dataset_prepared_path=str(tmp_path / "prep_res"),
                   auto_resume_from_checkpoints=True)
    (tmp_path / "b").mkdir()
    out = run_train(res, tmp_path / "b")
    assert "restored EM state (refresh 2, epoch 1, step 6)" in out
    res_hist = log_history(res.output_dir)
    # no E-step ran after the resume: the targets of the refresh at step 6 were restored, not recomputed
    assert [r["step"] for r in refresh_logs(res_hist)] == [0, 6]  # (history up to step 9 comes from the checkpoint)
    assert "calib E-step" not in out

    # same targets as the uninterrupted run at the end ...
    a = EMState.load(os.path.join(full.output_dir, "calib_state.pt"))
    b = EMState.load(os.path.join(res.output_dir, "calib_state.pt"))
    assert torch.equal(a.sample_ids, b.sample_ids) and torch.equal(a.targets, b.targets)
    assert a.refresh_count == b.refresh_count == 2
    # ... and the same loss curve after the resume point
    fl = {h["step"]: h for h in loss_logs(full_hist)}
    rl = {h["step"]: h for h in loss_logs(res_hist)}
    for step in (10, 11, 12):
        for key in ("loss", "calib/sft_loss", "calib/ece_loss"):
            assert rl[step][key] == pytest.approx(fl[step][key], rel=1e-3, abs=1e-5), (step, key)

    # Determinism: a second uninterrupted run with the same seed and data gives bit-identical
    # targets, bin statistics and loss curve.
    again = tiny_cfg(**common, output_dir=str(tmp_path / "again"), dataset_prepared_path=str(tmp_path / "prep_again"))
    (tmp_path / "c").mkdir()
    run_train(again, tmp_path / "c")
    c = EMState.load(os.path.join(again.output_dir, "calib_state.pt"))
    assert torch.equal(a.sample_ids, c.sample_ids) and torch.equal(a.targets, c.targets)
    assert torch.equal(a.bin_count, c.bin_count)
    assert torch.equal(torch.nan_to_num(a.bin_accuracy, nan=-1), torch.nan_to_num(c.bin_accuracy, nan=-1))
    again_hist = log_history(again.output_dir)
    assert refresh_logs(again_hist) == refresh_logs(full_hist)
    assert [{k: h[k] for k in ("step", "loss", "calib/sft_loss", "calib/ece_loss")} for h in loss_logs(again_hist)] == \
        [{k: h[k] for k in ("step", "loss", "calib/sft_loss", "calib/ece_loss")} for h in loss_logs(full_hist)]
