"""A real 2-process CPU (gloo) data-parallel run of CFT through torchrun: both ranks hold identical E-step
statistics and targets, equal to a single-process run over the same data, and training finishes. The run
uses the online E-step with learning rate 0: its second refresh gathers what both ranks' training forwards
recorded and must reproduce the first (exact) refresh. A second run checks the first epoch's live targets
(``calib_first_estep_fraction`` < 1): their running bin statistics are summed over the ranks after every step."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from helpers import CPU_DEVICE_MAP_FIX, TRAIN_MAIN, log_history, make_mcq_rows, refresh_logs, run_train

pytestmark = pytest.mark.slow


CPU_DDP_TRAIN = CPU_DEVICE_MAP_FIX + TRAIN_MAIN


def _free_port() -> str:
    """A port no other job on the box holds now (a fixed one fails when two suites run side by side)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _states(dump_dir):
    from axolotl_calib_plugin.train.em_state import EMState

    return {f: EMState.load(os.path.join(dump_dir, f)) for f in sorted(os.listdir(dump_dir))}


def _same(a, b):
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("sample_ids", "bin_count")) and all(
        torch.equal(torch.nan_to_num(getattr(a, k), nan=-1.0), torch.nan_to_num(getattr(b, k), nan=-1.0))
        for k in ("targets", "bin_accuracy", "bin_confidence"))  # NaN: a live target row (first E-step fraction < 1)


def test_two_process_estep_identical_on_ranks_and_equal_to_single_process(tmp_path, tiny_cfg, mcq_rows):
    from axolotl_calib_plugin.train.callbacks import DEBUG_DUMP_ENV

    data = mcq_rows(9, num_options=(4, 3, 5, 2), seed=6)  # odd: the rank shards need padding
    # held-out bin accuracies, odd too; questions 9..13, never trained on
    held = mcq_rows(rows=make_mcq_rows(14, num_options=(4, 3, 5, 2), seed=16)[9:], name="held.jsonl")
    common = dict(datasets=[{"path": str(data), "type": "axolotl_calib_plugin.mcq"}], calib_mode="cft",
                  calib_bins=5, num_epochs=2, logging_steps=1, save_strategy="epoch", seed=3,
                  calib_estep_batch_size=2, calib_estep="online", calib_first_estep_fraction=1.0, learning_rate=0.0,
                  calib_bin_accuracy="heldout", calib_heldout_prior=1.0, eval_strategy="epoch",
                  calib_target_fraction=1.0,  # every eval row sets targets (this test is about the ranks)
                  test_datasets=[{"path": str(held), "type": "axolotl_calib_plugin.mcq", "split": "train"}])
    single = tiny_cfg(**{**common, "num_epochs": 1}, output_dir=str(tmp_path / "single"),
                      dataset_prepared_path=str(tmp_path / "p1"))
    (tmp_path / "s").mkdir()
    run_train(single, tmp_path / "s", env_extra={DEBUG_DUMP_ENV: str(tmp_path / "dump_single")})

    multi = tiny_cfg(**common, output_dir=str(tmp_path / "multi"), dataset_prepared_path=str(tmp_path / "p2"),
                     ddp_backend="gloo")
    (tmp_path / "m").mkdir()
    script = tmp_path / "cpu_ddp_train.py"
    script.write_text(CPU_DDP_TRAIN)
    # torchrun (what `accelerate launch --multi_gpu` runs; `accelerate launch --cpu` needs mpirun for
    # 2 processes) + ACCELERATE_USE_CPU: accelerate then sets up MULTI_CPU with the gloo backend.
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port(),
                str(script)]
    run_train(multi, tmp_path / "m", launcher=launcher,
              env_extra={DEBUG_DUMP_ENV: str(tmp_path / "dump_multi"), "OMP_NUM_THREADS": "1",
                         "ACCELERATE_USE_CPU": "true"})

    s = _states(tmp_path / "dump_single")
    m = _states(tmp_path / "dump_multi")
    assert sorted(m) == ["final_rank0.pt", "final_rank1.pt", "refresh1_rank0.pt", "refresh1_rank1.pt",
                         "refresh2_rank0.pt", "refresh2_rank1.pt"]
    assert sorted(s) == ["final_rank0.pt", "refresh1_rank0.pt"]
    assert _same(m["final_rank0.pt"], m["final_rank1.pt"])
    for r in (1, 2):  # every rank holds exactly the same bins, held-out statistics and targets, after every refresh
        assert _same(m[f"refresh{r}_rank0.pt"], m[f"refresh{r}_rank1.pt"])
        x, y = m[f"refresh{r}_rank0.pt"].extra, m[f"refresh{r}_rank1.pt"].extra
        assert torch.equal(x["heldout_bin_count"], y["heldout_bin_count"]) and int(x["heldout_bin_count"].sum()) == 5
        assert torch.equal(x["bin_target"].nan_to_num(-1), y["bin_target"].nan_to_num(-1))
    # the first E-step (same initial model) equals the single-process one
    a, b = s["refresh1_rank0.pt"], m["refresh1_rank0.pt"]
    assert torch.equal(a.sample_ids, b.sample_ids) and torch.equal(a.bin_count, b.bin_count)
    assert int(a.bin_count.sum()) == 9
    torch.testing.assert_close(a.bin_accuracy, b.bin_accuracy, equal_nan=True)
    torch.testing.assert_close(a.bin_confidence, b.bin_confidence, equal_nan=True, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.targets, b.targets, atol=1e-5, rtol=1e-5)
    # the held-out q_m: the sharded forward over the eval split (2 ranks) equals the single-process one
    assert torch.equal(a.extra["heldout_bin_count"], b.extra["heldout_bin_count"])
    torch.testing.assert_close(a.extra["bin_target"], b.extra["bin_target"], equal_nan=True, atol=1e-6, rtol=0)
    # the online refresh (no forward; both ranks' records gathered) reproduces the exact one: lr = 0
    c = m["refresh2_rank0.pt"]
    assert torch.equal(c.bin_count, b.bin_count)
    # refresh 2 took the held-out rows from the evaluation that closed epoch 0 (gathered, padding repeats dropped)
    assert torch.equal(c.extra["heldout_bin_count"], b.extra["heldout_bin_count"])
    torch.testing.assert_close(c.targets, b.targets, atol=2e-6, rtol=0)
    # training finished (2 epochs) as ONE data-parallel job: 9 rows / (2 ranks x 2) = 3 steps per epoch,
    # the refresh of epoch 1 at step 3, the trainable-token counter all-reduced over both ranks
    history = log_history(multi.output_dir)
    assert [(r["calib/refresh"], r["step"], r["calib/estep_online"]) for r in refresh_logs(history)] == \
        [(1, 0, 0), (2, 3, 1)]
    assert refresh_logs(history)[1]["calib/online_seen"] == 9  # 3 steps x 2 ranks x 2 rows, padded: all 9 seen
    losses = [h for h in history if "loss" in h]
    assert len(losses) == 5 and losses[0]["tokens/trainable"] == 8
    assert all(h["calib/ece_loss"] > 0 for h in losses)


def test_two_process_live_statistics_identical_on_ranks(tmp_path, tiny_cfg, mcq_rows):
    """Epoch 0 with a subsampled first E-step: the prompts it did not measure get live targets from running bin
    statistics of the training forwards. Each rank's forwards see other rows, so without the per-step sum over
    ranks the two ranks' statistics (hence their live targets) drift apart; with it they are identical after every
    step, and they moved from what the first E-step measured."""
    from axolotl_calib_plugin.train.callbacks import DEBUG_DUMP_ENV
    from axolotl_calib_plugin.train.em_state import LIVE_COUNT, LIVE_HITS, LIVE_WINDOW

    data = mcq_rows(9, num_options=(4, 3, 5, 2), seed=6)
    cfg = tiny_cfg(datasets=[{"path": str(data), "type": "axolotl_calib_plugin.mcq"}], calib_mode="cft",
                   calib_bins=5, num_epochs=1, logging_steps=1, save_strategy="epoch", seed=3, calib_estep_batch_size=2,
                   calib_estep="online", calib_first_estep_fraction=0.5, learning_rate=1e-3,
                   output_dir=str(tmp_path / "out"), dataset_prepared_path=str(tmp_path / "prep"), ddp_backend="gloo")
    script = tmp_path / "cpu_ddp_train.py"
    script.write_text(CPU_DDP_TRAIN)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port(),
                str(script)]
    (tmp_path / "run").mkdir()
    run_train(cfg, tmp_path / "run", launcher=launcher,
              env_extra={DEBUG_DUMP_ENV: str(tmp_path / "dump"), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"})

    d = _states(tmp_path / "dump")
    assert sorted(d) == ["final_rank0.pt", "final_rank1.pt", "refresh1_rank0.pt", "refresh1_rank1.pt"]
    first, end0, end1 = d["refresh1_rank0.pt"], d["final_rank0.pt"], d["final_rank1.pt"]
    assert _same(first, d["refresh1_rank1.pt"])
    live_rows = torch.isnan(first.targets).all(dim=1)
    assert int(live_rows.sum()) == 4  # ceil(0.5 x 9) = 5 prompts measured, the other 4 live in epoch 0
    assert float(first.extra[LIVE_WINDOW]) == 5.0
    for key in (LIVE_COUNT, LIVE_HITS, LIVE_WINDOW):  # the same statistics on both ranks at the end of epoch 0
        assert torch.equal(end0.extra[key], end1.extra[key]), key
    # they moved (3 steps x 2 ranks of training forwards folded in), and the window's mass stays 5 positions
    assert not torch.equal(end0.extra[LIVE_COUNT], first.extra[LIVE_COUNT])
    torch.testing.assert_close(end0.extra[LIVE_COUNT].sum(), torch.tensor(5.0, dtype=torch.float64))
    losses = [h for h in log_history(cfg.output_dir) if "loss" in h]
    assert len(losses) == 3 and all(h["calib/ece_loss"] > 0 for h in losses)
