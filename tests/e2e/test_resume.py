"""Checkpoint resume and run-to-run determinism through the real CLI.

One pair of uninterrupted LoRA CFT runs with the same seed and config is trained once for this module: the
twins must be bit-identical (logs, bins, targets), and the first is "killed" at checkpoint-9 and resumed: the EM
state comes back from ``calib_state.pt`` and the resumed run's targets and loss curve equal the uninterrupted run's.
"""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from helpers import log_history, loss_logs, make_mcq_rows, refresh_logs, run_train, tiny_config, write_mcq_rows

#: log keys that measure time, not the computation
TIMING_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "calib/refresh_seconds",
               "tokens/train_per_sec_per_gpu"}


def _comparable(history):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


@pytest.fixture(scope="module")
def twin_runs(tmp_path_factory, tiny_model_dir):
    """Two uninterrupted LoRA CFT runs, same seed and data (6 steps per epoch, 2 epochs: refreshes at steps 0
    and 6, checkpoints 3, 6, 9, 12): ``full`` (the run the resume tests interrupt) and ``again`` (its twin)."""
    root = tmp_path_factory.mktemp("twin_runs")
    data = write_mcq_rows(root / "data.jsonl", 12, num_options=(4, 3, 2), seed=4)
    common = dict(datasets=[{"path": str(data), "type": "axolotl_calib_plugin.mcq"}], calib_mode="cft",
                  calib_bins=5, num_epochs=2, logging_steps=1, save_strategy="steps", save_steps=3, seed=7,
                  adapter="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_linear=True,
                  lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False)  # Triton kernels: GPU only
    runs = {}
    for name in ("full", "again"):
        (root / name).mkdir()
        runs[name] = tiny_config(tiny_model_dir, root / name, **common, output_dir=str(root / name / "out"),
                                 dataset_prepared_path=str(root / name / "prep"))
        run_train(runs[name], root / name)
    return SimpleNamespace(data=data, common=common, **runs)


def test_same_seed_gives_identical_logs_bins_and_targets_with_lora(twin_runs):
    """torch seeds its generator randomly per process and Axolotl seeds only after the adapter exists: the
    plugin seeds before the model loads, so two LoRA runs with one seed are identical (logs, bins and targets)."""
    from axolotl_calib_plugin.train.em_state import EMState

    ha, hb = log_history(twin_runs.full.output_dir), log_history(twin_runs.again.output_dir)
    a = EMState.load(os.path.join(twin_runs.full.output_dir, "calib_state.pt"))
    c = EMState.load(os.path.join(twin_runs.again.output_dir, "calib_state.pt"))
    assert len(loss_logs(ha)) == 12 and len(refresh_logs(ha)) == 2
    assert _comparable(ha) == _comparable(hb)  # every loss, grad norm and refresh statistic, bit for bit
    assert torch.equal(a.sample_ids, c.sample_ids) and torch.equal(a.targets, c.targets)
    assert torch.equal(a.bin_count, c.bin_count)
    assert torch.equal(torch.nan_to_num(a.bin_accuracy, nan=-1), torch.nan_to_num(c.bin_accuracy, nan=-1))
    timing = {"calib/refresh_seconds"}
    assert [{k: v for k, v in h.items() if k not in timing} for h in refresh_logs(hb)] == \
        [{k: v for k, v in h.items() if k not in timing} for h in refresh_logs(ha)]
    assert [{k: h[k] for k in ("step", "loss", "calib/sft_loss", "calib/ece_loss")} for h in loss_logs(hb)] == \
        [{k: h[k] for k in ("step", "loss", "calib/sft_loss", "calib/ece_loss")} for h in loss_logs(ha)]


def test_resume_mid_epoch_restores_em_state_and_matches_uninterrupted_run(tmp_path, tiny_cfg, twin_runs):
    from axolotl_calib_plugin.train.em_state import EMState

    full, common = twin_runs.full, twin_runs.common
    full_hist = log_history(full.output_dir)
    assert [r["step"] for r in refresh_logs(full_hist)] == [0, 6]

    # "killed" after checkpoint-9 (mid epoch 1): a fresh output dir holding only that checkpoint
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
    _check_edited_data_is_refused(tmp_path, tiny_cfg, full, common, twin_runs.data)


def _check_edited_data_is_refused(tmp_path, tiny_cfg, full, common, data):
    """Resuming on edited training data (a new prepared-data folder) stops before the first step with what
    to do, instead of a KeyError deep in the loss."""
    import json

    rows = [json.loads(line) for line in open(data)]
    rows[0]["question"] = rows[0]["question"] + " (edited)"
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out_dir = tmp_path / "edited_out"
    out_dir.mkdir()
    shutil.copytree(os.path.join(full.output_dir, "checkpoint-9"), out_dir / "checkpoint-9")
    cfg = tiny_cfg(**{**common, "datasets": [{"path": str(edited), "type": "axolotl_calib_plugin.mcq"}]},
                   output_dir=str(out_dir), dataset_prepared_path=str(tmp_path / "prep_edited"),
                   auto_resume_from_checkpoints=True)

    def resume():
        return run_train(cfg, tmp_path, name="edited.yml", expect_ok=False)

    out = resume()
    # caught before the model is even loaded, with what to do; never a KeyError at the first step
    assert "the training data changed since" in out and "1 of its 12 targets belong to prompts that are no longer" \
        in out, out[-3000:]
    assert "delete that calib_state.pt" in out and "KeyError" not in out and "Loading weights" not in out
    # a truncated state file is named, with the remedy, also before the model loads
    state = out_dir / "checkpoint-9" / "calib_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    out = resume()
    assert f"{state} cannot be read as a calibration state" in out and "Delete" in out, out[-3000:]


def test_online_estep_resume_mid_interval_restores_the_record(tmp_path, tiny_cfg, mcq_rows):
    """calib_estep: online, 3 epochs (refreshes at steps 0, 6, 12), killed at step 9: the refresh at step 12
    needs what steps 7-9 recorded before the interruption; the resumed run's targets equal the uninterrupted ones.
    With held-out bin accuracies (a 6-row eval split evaluated every epoch): the held-out statistics are saved in
    the checkpoint and the resumed run's q_m equal the uninterrupted run's."""
    import json

    from axolotl_calib_plugin.train.em_state import EMState

    data = mcq_rows(12, num_options=(4, 3, 2), seed=5)
    # held-out questions the model never trains on (rows 12..17: other questions than the training rows 0..11)
    held = mcq_rows(rows=make_mcq_rows(18, num_options=(4, 3, 2), seed=15)[12:], name="held.jsonl")
    common = dict(datasets=[{"path": str(data), "type": "axolotl_calib_plugin.mcq"}], calib_mode="cft",
                  calib_estep="online", calib_first_estep_fraction=1.0, calib_bins=5, num_epochs=3, logging_steps=1,
                  save_strategy="steps",
                  save_steps=3, seed=7, calib_bin_accuracy="heldout", calib_heldout_prior=1.0, eval_strategy="epoch",
                  calib_target_fraction=1.0,  # every eval row sets targets (this test is about the resume)
                  test_datasets=[{"path": str(held), "type": "axolotl_calib_plugin.mcq", "split": "train"}])
    full = tiny_cfg(**common, output_dir=str(tmp_path / "full"), dataset_prepared_path=str(tmp_path / "p1"))
    (tmp_path / "a").mkdir()
    run_train(full, tmp_path / "a")
    refreshes = refresh_logs(log_history(full.output_dir))
    assert [(r["step"], r["calib/estep_online"]) for r in refreshes] == [(0, 0), (6, 1), (12, 1)]
    saved = EMState.load(os.path.join(full.output_dir, "checkpoint-9"))
    assert saved.extra["online_record_ids"].numel() == 6  # steps 7, 8, 9 x 2 rows recorded before the save
    assert int(saved.extra["heldout_bin_count"].sum()) == 6  # the refresh at step 6 read the whole eval split
    with open(os.path.join(full.output_dir, "calib_refresh.jsonl"), encoding="utf-8") as f:
        logged = [json.loads(line) for line in f]
    assert [sum(b["heldout_count"] for b in r["bins"]) for r in logged] == [6, 6, 6]
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(os.path.join(full.output_dir, "checkpoint-9"), resumed_dir / "checkpoint-9")
    res = tiny_cfg(**common, output_dir=str(resumed_dir), dataset_prepared_path=str(tmp_path / "p2"),
                   auto_resume_from_checkpoints=True)
    (tmp_path / "b").mkdir()
    run_train(res, tmp_path / "b")
    a = EMState.load(os.path.join(full.output_dir, "calib_state.pt"))
    b = EMState.load(os.path.join(res.output_dir, "calib_state.pt"))
    assert a.refresh_count == b.refresh_count == 3
    torch.testing.assert_close(b.targets, a.targets, rtol=0, atol=1e-6)
    torch.testing.assert_close(b.extra["bin_target"], a.extra["bin_target"], rtol=0, atol=1e-6, equal_nan=True)
    assert torch.equal(b.extra["heldout_bin_count"], a.extra["heldout_bin_count"])
    fl = {h["step"]: h for h in loss_logs(log_history(full.output_dir))}
    rl = {h["step"]: h for h in loss_logs(log_history(res.output_dir))}
    for step in range(10, 19):
        assert rl[step]["calib/ece_loss"] == pytest.approx(fl[step]["calib/ece_loss"], rel=1e-4, abs=1e-6), step
