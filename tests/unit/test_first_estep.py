"""The subsampled first E-step (``calib_first_estep_fraction`` < 1): which prompts it measures, the M-step on the
measured rows only, the live targets of the others in epoch 0 (hand-computed) and the state file. A real in-process
training run of the path is in test_trainer.py (``test_online_run_measures_a_fraction_first...``)."""

import math

import numpy as np
import pytest
import torch

from helpers import make_mcq_rows


# ----------------------------------------------------------------------------- which prompts are measured
def test_first_estep_entries_picks_whole_prompts_deterministically():
    from axolotl_calib_plugin.train.estep import first_estep_entries

    sid = np.array([5, 3, 5, 9, 1, 3, 7, 8, 2, 0, 4, 6])  # 10 distinct prompts, 5 and 3 twice (packed duplicates)
    a = first_estep_entries(sid, 0.25, seed=1)
    assert np.array_equal(a, first_estep_entries(sid, 0.25, seed=1))  # every rank picks the same
    chosen = set(sid[a].tolist())
    assert len(chosen) == math.ceil(0.25 * 10) == 3
    assert set(a.tolist()) == {i for i, s in enumerate(sid) if s in chosen}  # every row of a chosen prompt
    assert np.all(np.diff(a) > 0)
    picks = {tuple(sorted(set(sid[first_estep_entries(sid, 0.25, seed=s)].tolist()))) for s in range(20)}
    assert len(picks) > 5  # the seed decides
    assert len(first_estep_entries(sid, 1e-9, seed=0)) >= 1  # at least one prompt
    assert np.array_equal(first_estep_entries(sid, 1.0, seed=0), np.arange(12))
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="calib_first_estep_fraction"):
            first_estep_entries(sid, bad, seed=0)


def _context(**cfg):
    from axolotl_calib_plugin.train.args import CalibrationArgs
    from axolotl_calib_plugin.train.context import CalibrationContext

    return CalibrationContext(settings=CalibrationArgs.from_cfg({"calib_mode": "cft", **cfg}), option_ids=(1, 2))


def test_fraction_default_follows_the_estep_and_the_targets_and_bad_values_are_refused():
    from pydantic import ValidationError

    from axolotl_calib_plugin.train.args import ONLINE_FIRST_ESTEP_FRACTION

    assert _context().first_estep_fraction() == 1.0
    assert _context(calib_estep="online").first_estep_fraction() == ONLINE_FIRST_ESTEP_FRACTION == 0.1
    # held-out variants: live targets would need held-out statistics, so every prompt is measured first
    assert _context(calib_estep="online", calib_bin_accuracy="heldout").first_estep_fraction() == 1.0
    assert _context(calib_estep="online", calib_targets="temperature").first_estep_fraction() == 1.0
    assert _context(calib_estep="online", calib_first_estep_fraction=1).first_estep_fraction() == 1.0
    assert _context(calib_first_estep_fraction=0.3).first_estep_fraction() == 0.3
    assert _context(calib_first_estep_fraction="0.25").first_estep_fraction() == 0.25  # a YAML number as text
    with pytest.raises(ValueError, match="needs calib_bin_accuracy: train and calib_targets: bin"):
        _context(calib_first_estep_fraction=0.3, calib_bin_accuracy="heldout").first_estep_fraction()
    for bad in (0, -0.5, 1.01, float("nan"), "all", True, "10%"):
        with pytest.raises(ValidationError, match="calib_first_estep_fraction"):
            _context(calib_first_estep_fraction=bad)


def test_config_with_a_fraction_and_heldout_targets_is_refused_naming_both(validate_cfg, tiny_cfg, mcq_rows):
    data = mcq_rows(6)
    with pytest.raises(Exception, match=r"calib_first_estep_fraction: 0.2 .*calib_targets: temperature"):
        validate_cfg(tiny_cfg(datasets=[{"path": str(data), "type": "axolotl_calib_plugin.mcq"}], calib_mode="cft",
                              calib_first_estep_fraction=0.2, calib_targets="temperature", val_set_size=0.2))
    ok = validate_cfg(tiny_cfg(datasets=[{"path": str(data), "type": "axolotl_calib_plugin.mcq"}], calib_mode="cft",
                               calib_first_estep_fraction=0.2, calib_estep="online"))
    assert ok["calib_first_estep_fraction"] == 0.2
    # the number as text is the same number: refused with held-out targets just the same, read as 0.2 otherwise
    with pytest.raises(Exception, match=r"calib_first_estep_fraction: '?0.2'? .*calib_targets: temperature"):
        validate_cfg(tiny_cfg(datasets=[{"path": str(data), "type": "axolotl_calib_plugin.mcq"}], calib_mode="cft",
                              calib_first_estep_fraction="0.2", calib_targets="temperature", val_set_size=0.2))
    ok = validate_cfg(tiny_cfg(datasets=[{"path": str(data), "type": "axolotl_calib_plugin.mcq"}], calib_mode="cft",
                               calib_first_estep_fraction="0.2", calib_estep="online"))
    assert ok["calib_first_estep_fraction"] == 0.2
    for bad in ("abc", "nan", 0, 1.5, True):
        with pytest.raises(Exception, match="calib_first_estep_fraction"):
            validate_cfg(tiny_cfg(datasets=[{"path": str(data), "type": "axolotl_calib_plugin.mcq"}], calib_mode="cft",
                                  calib_first_estep_fraction=bad, calib_estep="online"))


# ----------------------------------------------------------------------------- the M-step on measured rows
def _nan_rows(probs, measured):
    p = probs.clone()
    p[~measured] = float("nan")
    return p


def test_em_step_uses_measured_rows_only_and_leaves_nan_targets():
    from axolotl_calib_plugin.train.em_state import EMState

    probs = torch.tensor([[0.95, 0.05, 0.0], [0.7, 0.2, 0.1], [0.1, 0.85, 0.05], [0.6, 0.4, 0.0], [0.5, 0.3, 0.2]])
    labels = torch.tensor([0, 1, 1, 1, 0])
    k = torch.tensor([2, 3, 3, 2, 3])
    ids = torch.tensor([10, 11, 12, 13, 11])  # id 11 twice: its second row measured, its first not
    measured = torch.tensor([True, False, True, False, True])
    st = EMState.from_estep(ids, _nan_rows(probs, measured), labels, k, n_bins=4)
    # bins of the measured rows: 0.95 -> bin 3 (hit), 0.85 -> bin 3 (hit), 0.5 -> bin 1 (hit)
    assert st.bin_count.tolist() == [0, 1, 0, 2]
    assert st.bin_accuracy[3].item() == 1.0 and st.bin_accuracy[1].item() == 1.0
    assert st.sample_ids.tolist() == [10, 11, 12, 13]
    assert torch.isnan(st.targets[3]).all()  # 13 unmeasured: live in epoch 0
    assert torch.isfinite(st.targets[:3]).all()  # 11 takes its measured row's target
    torch.testing.assert_close(st.targets[1], torch.tensor([1.0, 0.0, 0.0]))  # argmax 0 gets q=1 (bin 1)
    assert st.has_live and st.summary()["calib/n"] == 3
    with pytest.raises(ValueError, match="measured no training sample"):
        EMState.from_estep(ids, torch.full((5, 3), float("nan")), labels, k, n_bins=4)


def test_fill_live_takes_q_from_running_statistics_and_updates_them_by_hand():
    from axolotl_calib_plugin.train.em_state import EMState

    probs = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.8, 0.1, 0.1, 0.0], [0.3, 0.3, 0.4, 0.0], [0.65, 0.35, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 1])
    k = torch.tensor([2, 3, 3, 2])
    # measured: rows 0, 1, 2 -> bin 3 (0.9 hit, 0.8 miss: q 0.5), bin 1 (0.4 hit: q 1); bins 0 and 2 empty
    st = EMState.from_estep(torch.arange(4), _nan_rows(probs, torch.tensor([1, 1, 1, 0]).bool()), labels, k, n_bins=4)
    assert st.extra["live_bin_count"].tolist() == [0, 1, 0, 2] and st.extra["live_bin_hits"].tolist() == [0, 1, 0, 1]
    assert float(st.extra["live_window"]) == 3.0
    live_probs = torch.tensor([[0.2, 0.8, 0.0, 0.0],   # bin 3: q = 1/2 -> [0.5, 0.5]; gold 1: a hit
                               [0.1, 0.3, 0.6, 0.0],   # bin 2: no statistics -> its own probabilities; gold 0: miss
                               [0.45, 0.35, 0.2, 0.0],  # bin 1: q = 1 -> [1, 0, 0]; gold 0: hit
                               [0.7, 0.2, 0.1, 0.0]])  # a measured prompt (fixed target kept); bin 2, gold 2: miss
    fixed = st.lookup(torch.tensor([3, 3, 3, 0]))
    out = st.fill_live(fixed, live_probs, torch.tensor([2, 3, 3, 3]), torch.tensor([1, 0, 0, 2]))
    torch.testing.assert_close(out[:3], torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.1, 0.3, 0.6, 0.0], [1.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(out[3], st.targets[0])
    # 4 positions against a window of 3: the old statistics are forgotten (keep = max(0, 1 - 4/3) = 0)
    assert st.extra["live_bin_count"].tolist() == [0, 1, 2, 1] and st.extra["live_bin_hits"].tolist() == [0, 1, 0, 1]
    # the next call reads them: bin 2 now has q = 0/2, bin 3 q = 1
    out = st.fill_live(torch.full((2, 4), float("nan")), torch.tensor([[0.6, 0.4, 0, 0], [0.05, 0.95, 0, 0]]),
                       torch.tensor([2, 2]), torch.tensor([0, 1]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]), atol=1e-6, rtol=0)


def test_fill_live_forgets_in_proportion_to_the_window():
    from axolotl_calib_plugin.train.em_state import EMState

    probs = torch.tensor([[0.9, 0.1]] * 8 + [[0.6, 0.4]] * 2)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 0, 1])
    st = EMState.from_estep(torch.arange(10), _nan_rows(probs, torch.tensor([1] * 8 + [0] * 2).bool()), labels,
                            torch.full((10,), 2), n_bins=2)
    assert st.extra["live_bin_count"].tolist() == [0, 8] and st.extra["live_bin_hits"].tolist() == [0, 6]
    out = st.fill_live(torch.full((2, 2), float("nan")), torch.tensor([[0.95, 0.05], [0.7, 0.3]]), torch.tensor([2, 2]),
                       torch.tensor([1, 1]))
    torch.testing.assert_close(out, torch.tensor([[0.75, 0.25], [0.75, 0.25]]))  # q of bin 1 = 6/8
    keep = 1 - 2 / 8
    torch.testing.assert_close(st.extra["live_bin_count"], torch.tensor([0.0, 8 * keep + 2], dtype=torch.float64))
    torch.testing.assert_close(st.extra["live_bin_hits"], torch.tensor([0.0, 6 * keep + 0], dtype=torch.float64))


_SYNC_SCRIPT = r"""
import sys, torch, torch.distributed as dist
from axolotl_calib_plugin.train.distributed import all_reduce_sum, dist_info
from axolotl_calib_plugin.train.em_state import EMState
dist.init_process_group("gloo")
rank, world = dist_info()
g = torch.Generator().manual_seed(0)
probs = torch.softmax(3 * torch.randn(12, 3, generator=g), 1)
labels, k = torch.randint(0, 3, (12,), generator=g), torch.full((12,), 3)
measured = torch.arange(12) < 5
st = EMState.from_estep(torch.arange(12), torch.where(measured[:, None], probs, float("nan")), labels, k, n_bins=4)
steps = [[torch.arange(0, 3), torch.arange(3, 7)], [torch.arange(7, 9), torch.arange(0)]]  # rank 1 empty in step 2
out = []
for step in steps:
    rows = step[rank]
    if len(rows):
        p = torch.softmax(2 * torch.randn(len(rows), 3, generator=torch.Generator().manual_seed(int(rows[0]))), 1)
        out.append(st.fill_live(st.lookup(rows + 0), p, k[rows], labels[rows]))
    st.sync_live(lambda t: all_reduce_sum(t))
torch.save({"count": st.extra["live_bin_count"], "hits": st.extra["live_bin_hits"], "out": out}, sys.argv[1] + f"/rank{rank}.pt")
dist.barrier()
dist.destroy_process_group()  # exiting with gloo's threads alive can abort a rank ("terminate called ...")
"""


def test_sync_live_makes_the_statistics_every_ranks_as_in_one_process(tmp_path):
    """2 real gloo processes (torchrun) feed different answer positions to the same live state and sync after each
    step (rank 1 sees none in step 2 and still takes part): both end with identical statistics, equal to ONE process
    fed each step's positions of both ranks as one batch."""
    import subprocess
    import sys

    from axolotl_calib_plugin.train.em_state import EMState

    script = tmp_path / "sync.py"
    script.write_text(_SYNC_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["count"], r1["count"]) and torch.equal(r0["hits"], r1["hits"])
    # one process, each step's positions of both ranks as one batch
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(12, 3, generator=g), 1)
    labels, k = torch.randint(0, 3, (12,), generator=g), torch.full((12,), 3)
    measured = torch.arange(12) < 5
    one = EMState.from_estep(torch.arange(12), torch.where(measured[:, None], probs, float("nan")), labels, k, n_bins=4)
    live = lambda rows: torch.softmax(2 * torch.randn(len(rows), 3, generator=torch.Generator().manual_seed(int(rows[0]))), 1)
    for parts in ([torch.arange(0, 3), torch.arange(3, 7)], [torch.arange(7, 9)]):
        rows = torch.cat(parts)
        one.fill_live(one.lookup(rows), torch.cat([live(p) for p in parts]), k[rows], labels[rows])
    torch.testing.assert_close(r0["count"], one.extra["live_bin_count"], rtol=0, atol=1e-12)
    torch.testing.assert_close(r0["hits"], one.extra["live_bin_hits"], rtol=0, atol=1e-12)
    assert not torch.equal(one.extra["live_bin_count"], one.bin_count.double())  # the statistics moved
    # step 2's targets on rank 0 read the statistics synced after step 1 (both ranks' positions)
    two = EMState.from_estep(torch.arange(12), torch.where(measured[:, None], probs, float("nan")), labels, k, n_bins=4)
    rows = torch.arange(0, 7)
    two.fill_live(two.lookup(rows), torch.cat([live(torch.arange(0, 3)), live(torch.arange(3, 7))]), k[rows], labels[rows])
    rows = torch.arange(7, 9)
    torch.testing.assert_close(r0["out"][1], two.fill_live(two.lookup(rows), live(rows), k[rows], labels[rows]))


def test_live_targets_are_refused_with_heldout_or_temperature_targets():
    from axolotl_calib_plugin.train.em_state import EMState

    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6]])
    held = (probs, torch.tensor([0, 1, 1]), torch.tensor([2, 2, 2]))
    for kw in ({"bin_accuracy": "heldout"}, {"targets_kind": "temperature"}):
        with pytest.raises(ValueError, match="live targets"):
            EMState.from_estep(torch.arange(3), _nan_rows(probs, torch.tensor([1, 0, 1]).bool()), torch.tensor([0, 0, 1]),
                               torch.tensor([2, 2, 2]), n_bins=5, heldout=held, **kw)


def test_state_with_live_rows_round_trips_and_a_partial_nan_row_is_refused(tmp_path):
    from axolotl_calib_plugin.train.em_state import CalibStateError, EMState

    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6]])
    st = EMState.from_estep(torch.arange(3), _nan_rows(probs, torch.tensor([1, 0, 1]).bool()), torch.tensor([0, 0, 1]),
                            torch.tensor([2, 2, 2]), n_bins=5)
    st.save(tmp_path / "s.pt")
    back = EMState.load(tmp_path / "s.pt")
    assert back.has_live and torch.equal(back.targets.isnan(), st.targets.isnan())
    assert back.extra["target_rule"] == {"split": "proportional", "targets": "bin"}
    assert torch.equal(back.extra["live_bin_count"], st.extra["live_bin_count"])
    d = st.to_dict()
    d["targets"] = d["targets"].clone()
    d["targets"][0, 1] = float("nan")  # half a row: corruption, not an unmeasured prompt
    torch.save(d, tmp_path / "bad.pt")
    with pytest.raises(CalibStateError, match="outside"):
        EMState.load(tmp_path / "bad.pt")
    d = st.to_dict()
    del d["extra"]["live_bin_hits"]
    torch.save(d, tmp_path / "norule.pt")
    with pytest.raises(CalibStateError, match="no running bin statistics"):
        EMState.load(tmp_path / "norule.pt")


def test_the_refresh_callback_syncs_live_statistics_after_every_step_only_when_data_parallel(monkeypatch):
    """EMRefreshCallback.on_step_end calls the sum over ranks while live rows remain and the world has > 1 rank
    (here a twin rank that added the same positions: the sum doubles them), and never in one process."""
    from types import SimpleNamespace

    from axolotl_calib_plugin.train import callbacks
    from axolotl_calib_plugin.train.em_state import EMState

    probs = torch.tensor([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    labels = torch.tensor([0, 0, 0, 1, 0, 1])
    k = torch.full((6,), 2)

    def state():
        return EMState.from_estep(torch.arange(6), _nan_rows(probs, torch.tensor([1] * 4 + [0] * 2).bool()), labels, k,
                                  n_bins=2)

    live = torch.tensor([[0.95, 0.05], [0.7, 0.3]])
    calls = []
    monkeypatch.setattr(callbacks, "all_reduce_sum", lambda t, device=None: calls.append(device) or 2 * t)
    cb = SimpleNamespace(calib=SimpleNamespace(em_state=state()), refresh="epoch")
    args, st = SimpleNamespace(device="cpu"), SimpleNamespace(global_step=1, max_steps=9)
    cb.calib.em_state.fill_live(torch.full((2, 2), float("nan")), live, torch.tensor([2, 2]), torch.tensor([0, 1]))
    callbacks.EMRefreshCallback.on_step_end(cb, args, st, None)  # one process: nothing to sync
    assert calls == []
    monkeypatch.setattr(callbacks, "dist_info", lambda: (0, 2))
    callbacks.EMRefreshCallback.on_step_end(cb, args, st, None)
    assert calls == ["cpu"]
    twin = state()  # one process fed both ranks' (identical) positions as one batch
    twin.fill_live(torch.full((4, 2), float("nan")), torch.cat([live, live]), torch.full((4,), 2),
                   torch.tensor([0, 1, 0, 1]))
    torch.testing.assert_close(cb.calib.em_state.extra["live_bin_count"], twin.extra["live_bin_count"])
    torch.testing.assert_close(cb.calib.em_state.extra["live_bin_hits"], twin.extra["live_bin_hits"])
    cb.calib.em_state = EMState.from_estep(torch.arange(6), probs, labels, k, n_bins=2)  # no live rows: no collective
    callbacks.EMRefreshCallback.on_step_end(cb, args, st, None)
    assert calls == ["cpu"]
