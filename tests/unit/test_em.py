"""E-step / M-step / targets as pure tensor functions, against hand-computed values."""

import json
import re
import math

import pytest
import torch

from axolotl_calib_plugin import metrics
from axolotl_calib_plugin.train.em import (
    assign_bins,
    bin_statistics,
    build_targets,
    em_step,
)
from axolotl_calib_plugin.train.em_state import EMState

NAN = float("nan")

# 5 samples, Kmax = 3, M = 4 bins: (0, .25], (.25, .5], (.5, .75], (.75, 1]
PROBS = torch.tensor(
    [
        [0.9, 0.1, 0.0],  # K=2, conf .9 -> bin 3, label 0: correct
        [0.8, 0.2, 0.0],  # K=2, conf .8 -> bin 3, label 1: wrong
        [0.6, 0.3, 0.1],  # K=3, conf .6 -> bin 2, label 0: correct
        [0.2, 0.4, 0.4],  # K=3, tie -> argmax 1 (lowest index), conf .4 -> bin 1, label 2: wrong
        [1.0, 0.0, 0.0],  # K=2, conf 1.0 -> TOP bin 3 (counted), label 0: correct
    ],
    dtype=torch.float64,
)
LABELS = torch.tensor([0, 1, 0, 2, 0])
K = torch.tensor([2, 2, 3, 3, 2])


def test_assign_bins_right_closed_edges_and_top_bin():
    conf = torch.tensor([0.0, 0.05, 0.1, 0.1000001, 0.3, 0.95, 1.0], dtype=torch.float64)
    assert assign_bins(conf, 10).tolist() == [0, 0, 0, 1, 2, 9, 9]
    assert assign_bins(torch.tensor([0.25, 0.2500001, 0.75, 1.0], dtype=torch.float64), 4).tolist() == [0, 1, 2, 3]


def test_bin_statistics_hand_values_with_empty_bin():
    st = bin_statistics(PROBS, LABELS, 4)
    assert st.count.tolist() == [0, 1, 1, 3]
    assert math.isnan(st.accuracy[0]) and math.isnan(st.confidence[0])
    torch.testing.assert_close(st.accuracy[1:], torch.tensor([0.0, 1.0, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(st.confidence[1:], torch.tensor([0.4, 0.6, 0.9], dtype=torch.float64))
    # (1*|0-.4| + 1*|1-.6| + 3*|2/3-.9|) / 5 = 1.5 / 5
    assert st.conf_ece == pytest.approx(0.3)
    assert st.conf_ece == pytest.approx(metrics.conf_ece(PROBS, LABELS, 4))
    assert st.mean_accuracy == pytest.approx(3 / 5)


def test_build_targets_proportional_hand_values():
    q = torch.tensor([2 / 3, 2 / 3, 0.5, 0.0, 1.0], dtype=torch.float64)
    t = build_targets(PROBS, q, "proportional", num_options=K)
    expected = torch.tensor(
        [
            [2 / 3, 1 / 3, 0.0],
            [2 / 3, 1 / 3, 0.0],
            [0.5, 0.375, 0.125],  # 0.5 split 3:1 like the model's 0.3 : 0.1
            [1 / 3, 0.0, 2 / 3],  # argmax is index 1 (tie); 1 - 0 split 0.2 : 0.4
            [1.0, 0.0, 0.0],  # q = 1; the non-max mass is 0 -> uniform fallback of 0
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(t, expected)
    torch.testing.assert_close(t.sum(1), torch.ones(5, dtype=torch.float64))


def test_build_targets_proportional_is_the_kl_projection():
    # Among all p with p_argmax = q, the proportional split minimizes KL(p || pi).
    pi = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)
    q = torch.tensor([0.35], dtype=torch.float64)
    best = build_targets(pi, q, "proportional")[0]

    def kl(p):
        return float((p * (p / pi[0]).log()).sum())

    torch.manual_seed(0)
    for _ in range(200):
        w = torch.rand(3, dtype=torch.float64)
        other = torch.cat([q, (1 - q) * w / w.sum()])
        assert kl(best) <= kl(other) + 1e-12


def test_build_targets_uniform_and_padding():
    q = torch.tensor([2 / 3, 0.5], dtype=torch.float64)
    t = build_targets(PROBS[[0, 2]], q, "uniform", num_options=K[[0, 2]])
    torch.testing.assert_close(t, torch.tensor([[2 / 3, 1 / 3, 0.0], [0.5, 0.25, 0.25]], dtype=torch.float64))


def test_build_targets_reference_tanh_rule_generalised():
    # K=3 row: c = (.3, .1), c_(2) = .3, q = .5 -> gamma = ln 2 / .15, gamma*c = (ln 4, ln 4 / 3)
    q = torch.tensor([0.5, 1.0], dtype=torch.float64)
    t = build_targets(PROBS[[2, 2]], q, "reference", num_options=torch.tensor([3, 3]))
    th1 = 15 / 17  # tanh(ln 4)
    e = 4 ** (2 / 3)
    th2 = (e - 1) / (e + 1)  # tanh(ln 4 / 3)
    a = 0.5 / (th1 + th2 + 2)
    torch.testing.assert_close(t[0], torch.tensor([0.5, a * (1 + th1), a * (1 + th2)], dtype=torch.float64))
    assert float(t[0].sum()) == pytest.approx(1.0)
    torch.testing.assert_close(t[1], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))  # q = 1 -> zeros


def test_build_targets_reference_k4_matches_paper_code_constant_3():
    # The paper's code: gamma = ln(3)/(c2 (1-q)), a = (1-q)/(T+3), t_j = a tanh(gamma c_j) + a.
    p = torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.float64)
    q = torch.tensor([0.7], dtype=torch.float64)
    t = build_targets(p, q, "reference")[0]
    c = torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64)
    gamma = math.log(3) / (0.3 * 0.3)
    th = torch.tanh(gamma * c)
    a = 0.3 / (th.sum() + 3)
    torch.testing.assert_close(t, torch.cat([q, a * th + a]))


def test_build_targets_rejects_bad_q_and_split():
    with pytest.raises(ValueError, match="empty bin"):
        build_targets(PROBS, torch.full((5,), NAN, dtype=torch.float64))
    with pytest.raises(ValueError, match="calib_nonmax_split"):
        build_targets(PROBS, torch.full((5,), 0.5), "softmax")


def test_em_step_end_to_end_and_dedup():
    ids = torch.tensor([50, 7, 9, 3, 7])  # id 7 twice (same prompt: same probs in real data)
    probs = PROBS.clone()
    probs[4] = probs[1]
    labels = LABELS.clone()
    labels[4] = 0  # same prompt, same answer row twice: one right, ... (row 1 label 1 -> wrong)
    labels[1] = 0
    stats, uniq, targets = em_step(ids, probs, labels, K, n_bins=4)
    assert uniq.tolist() == [3, 7, 9, 50]
    assert stats.count.tolist() == [0, 1, 1, 3]
    # bin 3 holds rows 0, 1, 4: all correct now -> q = 1
    torch.testing.assert_close(targets[uniq.tolist().index(50)], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(targets[1], torch.tensor([1.0, 0.0, 0.0]))
    # id 3 (bin 1, q = 0): argmax 1 gets 0, the rest split .2:.4
    torch.testing.assert_close(targets[0], torch.tensor([1 / 3, 0.0, 2 / 3]))
    assert targets.dtype == torch.float32


def test_em_state_roundtrip_lookup_and_summary(tmp_path):
    st = EMState.from_estep(torch.tensor([50, 7, 9, 3, 8]), PROBS, LABELS, K, n_bins=4, refresh_count=2,
                            epoch_refreshed=1, global_step=12)
    path = tmp_path / "calib_state.pt"
    st.save(path)
    back = EMState.load(path)
    assert back.sample_ids.tolist() == [3, 7, 8, 9, 50]
    torch.testing.assert_close(back.targets, st.targets)
    assert (back.refresh_count, back.epoch_refreshed, back.global_step) == (2, 1, 12)
    assert back.bin_count.tolist() == [0, 1, 1, 3]
    got = back.lookup(torch.tensor([9, 3, 9]))
    torch.testing.assert_close(got, st.targets[[3, 0, 3]])
    with pytest.raises(KeyError, match=r"\[4\]"):
        back.lookup(torch.tensor([3, 4]))
    partial, found = back.lookup(torch.tensor([4, 9]), strict=False)
    assert found.tolist() == [False, True] and float(partial[0].abs().sum()) == 0.0
    s = back.summary()
    json.dumps(s, allow_nan=False)
    assert set(s) == {"calib/conf_ece", "calib/acc", "calib/refresh", "calib/n"}  # no per-bin scalars
    assert s["calib/conf_ece"] == pytest.approx(0.3, abs=1e-6)
    assert s["calib/acc"] == pytest.approx(0.6)
    assert (s["calib/refresh"], s["calib/n"]) == (2, 5)
    bins = back.bin_table()
    json.dumps(bins, allow_nan=False)  # JSON-safe: empty bin 0 has acc/conf None
    assert bins[0]["count"] == 0 and bins[0]["acc"] is None and bins[0]["conf"] is None
    assert bins[3]["acc"] == pytest.approx(2 / 3, abs=1e-6)


def _saved_state(tmp_path):
    st = EMState.from_estep(torch.tensor([50, 7, 9, 3, 8]), PROBS, LABELS, K, n_bins=4, refresh_count=2,
                            epoch_refreshed=1, global_step=12)
    st.extra["online_table_ids"] = st.sample_ids.clone()
    path = tmp_path / "checkpoint-12" / "calib_state.pt"
    path.parent.mkdir()
    st.save(path)
    return st, path


def test_em_state_keeps_extra_and_reads_version_1_files(tmp_path):
    st, path = _saved_state(tmp_path)
    assert torch.equal(EMState.load(path).extra["online_table_ids"], st.sample_ids)
    d = torch.load(path, weights_only=True)
    d["version"] = 1
    d.pop("extra")
    torch.save(d, path)
    old = EMState.load(path)
    assert old.extra == {} and torch.equal(old.targets, st.targets)


@pytest.mark.parametrize("damage, message", [
    ("truncate", "cannot be read as a calibration state"),
    ("garbage", "cannot be read as a calibration state"),
    ("empty", "cannot be read as a calibration state"),
    ("version", "version 99"),
    ("missing", "missing entries ['targets']"),
    ("shape", "targets have shape (4, 3) for 5 sample ids"),
    ("unsorted", "not sorted and unique"),
    ("nan", "outside [0, 1] or NaN"),
    ("list", "expected a dict, found list"),
])
def test_corrupted_state_file_names_the_file_and_the_remedy(tmp_path, damage, message):
    from axolotl_calib_plugin.train.em_state import CalibStateError

    st, path = _saved_state(tmp_path)
    raw = path.read_bytes()
    d = torch.load(path, weights_only=True)
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file at all")
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "list":
        torch.save([1, 2], path)
    else:
        if damage == "version":
            d["version"] = 99
        elif damage == "missing":
            d.pop("targets")
        elif damage == "shape":
            d["targets"] = d["targets"][:4]
        elif damage == "unsorted":
            d["sample_ids"] = d["sample_ids"].flip(0)
        elif damage == "nan":
            d["targets"][0, 0] = float("nan")
        torch.save(d, path)
    with pytest.raises(CalibStateError, match=re.escape(message)) as err:
        EMState.load(path)
    text = str(err.value)
    assert str(path) in text and "Delete" in text and "earlier checkpoint" in text
