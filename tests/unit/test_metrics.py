"""Tests for the shared metrics core (``axolotl_calib_plugin.metrics``).

Hand-computed cases carry their arithmetic in comments. Bins are right-closed,
B_m = ((m-1)/M, m/M], and a confidence of exactly 0 falls in the first bin.
Property tests compare against an independent plain-Python reference (textbook form
sum_m |B_m|/n * |acc_m - conf_m|, bins found by comparing with m/M one edge at a time).
No timing assertions here, ever: speed lives in benchmarks/.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axolotl_calib_plugin.metrics import (
    ROW_SUM_ATOL,
    ReliabilityBins,
    accuracy,
    bin_edges,
    bin_index,
    calibration_metrics,
    conf_ece,
    cw_ece,
    reliability_bins,
    row_sum_tolerance,
    validate_probs_labels,
)

PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


# ----------------------------------------------------------------------------- reference (loops)
def ref_bin(c: float, n_bins: int) -> int:
    """Right-closed bins: the first m with c <= m/M is bin m-1 (so 0 -> bin 0, 1 -> bin M-1)."""
    for m in range(1, n_bins + 1):
        if c <= m / n_bins:
            return m - 1
    raise AssertionError(f"confidence {c} > 1")


def _ref_ece_1d(values, hits, n_bins):
    n = len(values)
    count = [0] * n_bins
    s_val = [0.0] * n_bins
    s_hit = [0.0] * n_bins
    for v, h in zip(values, hits):
        b = ref_bin(v, n_bins)
        count[b] += 1
        s_val[b] += v
        s_hit[b] += h
    total = 0.0
    for m in range(n_bins):
        if count[m]:
            total += count[m] / n * abs(s_hit[m] / count[m] - s_val[m] / count[m])
    return total


def ref_argmax(row) -> int:
    best = 0
    for j in range(1, len(row)):
        if row[j] > row[best]:
            best = j
    return best


def ref_conf_ece(probs, labels, n_bins):
    probs = [[float(v) for v in row] for row in np.asarray(probs, dtype=np.float64)]
    labels = [int(y) for y in labels]
    confs, hits = [], []
    for row, y in zip(probs, labels):
        j = ref_argmax(row)
        confs.append(row[j])
        hits.append(1.0 if j == y else 0.0)
    return _ref_ece_1d(confs, hits, n_bins)


def ref_cw_ece(probs, labels, n_bins):
    probs = [[float(v) for v in row] for row in np.asarray(probs, dtype=np.float64)]
    labels = [int(y) for y in labels]
    k = len(probs[0])
    per_class = []
    for c in range(k):
        per_class.append(_ref_ece_1d([row[c] for row in probs], [1.0 if y == c else 0.0 for y in labels], n_bins))
    return sum(per_class) / k


def ref_accuracy(probs, labels):
    probs = np.asarray(probs, dtype=np.float64)
    return sum(1 for row, y in zip(probs, labels) if ref_argmax(list(row)) == int(y)) / len(labels)


# ----------------------------------------------------------------------------- hand-computed cases
# Case A: K=2, four samples.
#   probs              label  max conf  pred  correct
#   [0.9, 0.1]         0      0.9       0     1
#   [0.8, 0.2]         1      0.8       0     0
#   [0.4, 0.6]         1      0.6       1     1
#   [0.3, 0.7]         1      0.7       1     1
CASE_A_PROBS = [[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]]
CASE_A_LABELS = [0, 1, 1, 1]

# Case B: K=5, five samples, with argmax ties (ties go to the lowest index).
#   probs                              label  max conf  pred        correct
#   [0.6, 0.1, 0.1, 0.1, 0.1]          0      0.6       0           1
#   [0.2, 0.2, 0.2, 0.2, 0.2]          2      0.2       0 (5-tie)   0
#   [0.05, 0.05, 0.3, 0.3, 0.3]        3      0.3       2 (3-tie)   0
#   [0.0, 0.0, 0.0, 0.0, 1.0]          4      1.0       4           1
#   [0.55, 0.45, 0.0, 0.0, 0.0]        1      0.55      0           0
CASE_B_PROBS = [
    [0.6, 0.1, 0.1, 0.1, 0.1],
    [0.2, 0.2, 0.2, 0.2, 0.2],
    [0.05, 0.05, 0.3, 0.3, 0.3],
    [0.0, 0.0, 0.0, 0.0, 1.0],
    [0.55, 0.45, 0.0, 0.0, 0.0],
]
CASE_B_LABELS = [0, 2, 3, 4, 1]


def test_case_a_conf_ece_10_bins():
    # M=10, every confidence lands in its own bin (0.8, 0.6, 0.7 sit exactly on right edges):
    #   0.9 -> (0.8,0.9] gap |1-0.9|=0.1 ; 0.8 -> (0.7,0.8] gap |0-0.8|=0.8
    #   0.6 -> (0.5,0.6] gap |1-0.6|=0.4 ; 0.7 -> (0.6,0.7] gap |1-0.7|=0.3
    #   ECE = (0.1+0.8+0.4+0.3)/4 = 1.6/4 = 0.4
    assert conf_ece(CASE_A_PROBS, CASE_A_LABELS, n_bins=10) == pytest.approx(0.4, abs=1e-12)


def test_case_a_conf_ece_5_bins():
    # M=5, bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]:
    #   bin 2 (.4,.6]: {0.6 correct}            -> 1/4 * |1 - 0.6|      = 0.1
    #   bin 3 (.6,.8]: {0.8 wrong, 0.7 correct} -> 2/4 * |0.5 - 0.75|   = 0.125
    #   bin 4 (.8,1]:  {0.9 correct}            -> 1/4 * |1 - 0.9|      = 0.025
    #   bins 0, 1 empty -> 0.   ECE = 0.1 + 0.125 + 0.025 = 0.25
    assert conf_ece(CASE_A_PROBS, CASE_A_LABELS, n_bins=5) == pytest.approx(0.25, abs=1e-12)


def test_case_a_cw_ece_5_bins():
    # class 0: p=[.9,.8,.4,.3], y=[1,0,0,0]
    #   bin 4 {.9}: |1-.9|=.1 ; bin 3 {.8}: |0-.8|=.8 ; bin 1 {.4,.3}: |0-.7|=.7  -> 1.6/4 = 0.4
    # class 1: p=[.1,.2,.6,.7], y=[0,1,1,1]
    #   bin 0 {.1,.2}: |1-.3|=.7 ; bin 2 {.6}: |1-.6|=.4 ; bin 3 {.7}: |1-.7|=.3 -> 1.4/4 = 0.35
    # cw-ECE = (0.4 + 0.35)/2 = 0.375
    assert cw_ece(CASE_A_PROBS, CASE_A_LABELS, n_bins=5) == pytest.approx(0.375, abs=1e-12)


def test_case_a_accuracy():
    # correct = [1, 0, 1, 1] -> 3/4
    assert accuracy(CASE_A_PROBS, CASE_A_LABELS) == 0.75


def test_case_b_k5_with_ties():
    # conf-ECE, M=10:
    #   bin 5 (.5,.6]: {0.6 correct, 0.55 wrong} -> |1 - 1.15| = 0.15 (as sums)
    #   bin 1 (.1,.2]: {0.2 wrong}  -> 0.2 ;  bin 2 (.2,.3]: {0.3 wrong} -> 0.3 ; bin 9: {1.0 correct} -> 0
    #   ECE = (0.15 + 0.2 + 0.3 + 0)/5 = 0.13
    assert conf_ece(CASE_B_PROBS, CASE_B_LABELS) == pytest.approx(0.13, abs=1e-12)
    # accuracy: correct = [1, 0, 0, 1, 0] (ties resolved to index 0 and 2) -> 2/5
    assert accuracy(CASE_B_PROBS, CASE_B_LABELS) == pytest.approx(0.4, abs=1e-15)
    # cw-ECE, M=10 (sums of |sum hits - sum probs| per bin, per class):
    #   class 0: p=[.6,.2,.05,0,.55] y=[1,0,0,0,0]: bin5 |1-1.15|=.15, bin1 .2, bin0 |0-.05|=.05 -> 0.4
    #   class 1: p=[.1,.2,.05,0,.45] y=[0,0,0,0,1]: bin0 |0-.15|=.15, bin1 .2, bin4 |1-.45|=.55 -> 0.9
    #   class 2: p=[.1,.2,.3,0,0]    y=[0,1,0,0,0]: bin0 .1, bin1 |1-.2|=.8, bin2 .3           -> 1.2
    #   class 3: p=[.1,.2,.3,0,0]    y=[0,0,1,0,0]: bin0 .1, bin1 .2, bin2 |1-.3|=.7           -> 1.0
    #   class 4: p=[.1,.2,.3,1,0]    y=[0,0,0,1,0]: bin0 .1, bin1 .2, bin2 .3, bin9 |1-1|=0    -> 0.6
    #   cw-ECE = (0.4+0.9+1.2+1.0+0.6) / 5 samples / 5 classes = 4.1/25 = 0.164
    assert cw_ece(CASE_B_PROBS, CASE_B_LABELS) == pytest.approx(0.164, abs=1e-12)


def test_ties_go_to_lowest_index():
    # [0.5, 0.5] -> pred 0 ; [0.25, 0.375, 0.375] -> pred 1.
    assert accuracy([[0.5, 0.5]], [0]) == 1.0
    assert accuracy([[0.5, 0.5]], [1]) == 0.0
    assert accuracy([[0.25, 0.375, 0.375]], [1]) == 1.0
    # conf-ECE with the tie counted correct: |1 - 0.5| = 0.5 ; counted wrong: |0 - 0.5| = 0.5.
    assert conf_ece([[0.5, 0.5], [0.75, 0.25]], [0, 0], n_bins=4) == pytest.approx((0.5 + 0.25) / 2)
    assert conf_ece([[0.5, 0.5], [0.75, 0.25]], [1, 0], n_bins=4) == pytest.approx((0.5 + 0.25) / 2)
    #   with n_bins=1 both rows share a bin, so the tie's correctness matters:
    #   labels [0,0]: |2 - 1.25|/2 = 0.375 ; labels [1,0]: |1 - 1.25|/2 = 0.125
    assert conf_ece([[0.5, 0.5], [0.75, 0.25]], [0, 0], n_bins=1) == pytest.approx(0.375)
    assert conf_ece([[0.5, 0.5], [0.75, 0.25]], [1, 0], n_bins=1) == pytest.approx(0.125)


def test_all_samples_in_one_bin():
    # max confs .75, .8, .72, .75 all in (0.7, 0.8] (0.8 on the right edge), correct [1,0,1,1]:
    #   acc = 0.75, mean conf = 3.02/4 = 0.755 -> ECE = |0.75 - 0.755| = 0.005
    probs = [[0.75, 0.25], [0.8, 0.2], [0.72, 0.28], [0.25, 0.75]]
    labels = [0, 1, 0, 1]
    assert conf_ece(probs, labels) == pytest.approx(0.005, abs=1e-12)
    rb = reliability_bins(probs, labels)
    assert rb.count.tolist() == [0, 0, 0, 0, 0, 0, 0, 4, 0, 0]
    # n_bins=1: the single bin (0, 1] gives the same 0.005
    assert conf_ece(probs, labels, n_bins=1) == pytest.approx(0.005, abs=1e-12)


# ----------------------------------------------------------------------------- bin edges
def test_bin_index_right_closed_edges():
    # ((m-1)/10, m/10] -> m-1 ; 0 -> bin 0 ; 1 -> bin 9
    got = bin_index([0.0, 0.05, 0.1, 0.3, 0.7, 1.0], 10).tolist()
    assert got == [0, 0, 0, 2, 6, 9]
    # just above an edge opens the next bin, just below stays
    assert bin_index([math.nextafter(0.3, 1.0), math.nextafter(0.3, 0.0)], 10).tolist() == [3, 2]
    assert bin_index([math.nextafter(0.0, 1.0)], 10).tolist() == [0]
    # every edge m/M goes to bin m-1, for several M (including M not dividing 10)
    for m_bins in (1, 2, 3, 7, 10, 15, 100):
        edges = [m / m_bins for m in range(1, m_bins + 1)]
        assert bin_index(edges, m_bins).tolist() == list(range(m_bins))
        assert bin_index([0.0], m_bins).tolist() == [0]


def test_bin_index_any_shape_and_matches_reference():
    rng = np.random.default_rng(0)
    c = rng.random((7, 3))
    c[0, :] = [0.0, 0.3, 1.0]
    got = bin_index(torch.from_numpy(c), 10)
    assert got.shape == (7, 3) and got.dtype == torch.int64
    assert got.numpy().tolist() == [[ref_bin(float(v), 10) for v in row] for row in c]


def test_bin_edges():
    assert bin_edges(4).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert bin_edges(10)[3].item() == 0.3  # correctly rounded m/M: the same float as the literal
    with pytest.raises(ValueError, match="n_bins"):
        bin_edges(0)


def test_edge_confidence_decides_the_bin_in_ece():
    # conf 0.7 (correct) and 0.75 (wrong), M=10.
    #   right-closed: 0.7 -> (0.6,0.7], 0.75 -> (0.7,0.8]: (|1-0.7| + |0-0.75|)/2 = 0.525
    #   (a left-closed implementation would pool them: |1-1.45|/2 = 0.225)
    probs = [[0.7, 0.3], [0.25, 0.75]]
    assert conf_ece(probs, [0, 0], n_bins=10) == pytest.approx(0.525, abs=1e-12)
    # confidence exactly 1.0 is in the last bin: |1-1| = 0, and |0 - 1| = 1
    assert conf_ece([[1.0, 0.0]], [0]) == 0.0
    assert conf_ece([[1.0, 0.0]], [1]) == 1.0
    # class prob exactly 0 is in bin 0 (cw): class 1 prob 0 with label 0 -> 0 gap;
    # class 0 prob 1 label 0 -> 0 gap  => cw-ECE 0
    assert cw_ece([[1.0, 0.0]], [0]) == 0.0


def test_float32_values_are_binned_by_their_exact_value():
    # float32(0.3) = 0.300000011920929 > 0.3, so it opens bin 3; float32(0.7) = 0.699999988 stays in bin 6.
    # (Documented consequence of computing in float64: no silent rounding to the edge.)
    assert bin_index(np.float32([0.3, 0.7]), 10).tolist() == [3, 6]
    assert bin_index(torch.tensor([0.3, 0.7], dtype=torch.float32), 10).tolist() == [3, 6]


def test_float32_and_float64_agree_on_exactly_representable_inputs():
    # dyadic values are exact in float32, so float32 and float64 inputs must give identical results
    probs64 = np.array([[0.75, 0.25], [0.5, 0.5], [0.125, 0.875], [0.375, 0.625], [1.0, 0.0]])
    labels = np.array([0, 1, 1, 0, 0])
    probs32 = probs64.astype(np.float32)
    for fn in (conf_ece, cw_ece):
        for m in (2, 4, 8, 10):
            assert fn(probs32, labels, n_bins=m) == fn(probs64, labels, n_bins=m)
    assert accuracy(probs32, labels) == accuracy(probs64, labels)


def test_float32_softmax_close_to_float64():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(500, 4))
    p64 = torch.softmax(torch.from_numpy(logits), dim=1)
    p32 = torch.softmax(torch.from_numpy(logits).float(), dim=1)
    y = torch.from_numpy(rng.integers(0, 4, 500))
    # a float32 value can only cross a bin edge when it is within ~1e-7 of it; none is here
    assert conf_ece(p32, y) == pytest.approx(conf_ece(p64, y), abs=1e-5)
    assert cw_ece(p32, y) == pytest.approx(cw_ece(p64, y), abs=1e-5)


def test_numpy_torch_list_inputs_agree():
    probs = np.array(CASE_B_PROBS)
    labels = np.array(CASE_B_LABELS)
    variants = [
        (probs, labels),
        (torch.from_numpy(probs), torch.from_numpy(labels)),
        (probs.tolist(), labels.tolist()),
        (torch.from_numpy(probs).requires_grad_(True), labels.astype(np.int32)),
        (probs, labels.astype(np.float64)),  # integral floats are accepted as labels
        (probs, torch.from_numpy(labels).to(torch.uint8)),
    ]
    results = {(conf_ece(p, y), cw_ece(p, y), accuracy(p, y)) for p, y in variants}
    assert len(results) == 1
    for p, y in variants:
        for kind in ("conf", "class"):
            assert reliability_bins(p, y, kind=kind).ece == reliability_bins(probs, labels, kind=kind).ece


def test_return_types_are_python_floats():
    for fn in (conf_ece, cw_ece):
        assert type(fn(CASE_A_PROBS, CASE_A_LABELS)) is float
    assert type(accuracy(CASE_A_PROBS, CASE_A_LABELS)) is float


# ----------------------------------------------------------------------------- empty bins
def test_empty_bins_contribute_zero():
    # one sample, conf 0.9 correct: |1 - 0.9| = 0.1 regardless of how many bins stay empty
    for m in (1, 2, 10, 1000):
        assert conf_ece([[0.9, 0.1]], [0], n_bins=m) == pytest.approx(0.1, abs=1e-12)
    rb = reliability_bins([[0.9, 0.1]], [0], n_bins=1000)
    assert int(rb.count.sum()) == 1 and np.isnan(rb.accuracy).sum() == 999


def test_zero_padded_mixed_option_counts():
    # A K=3 row padded with zeros to K=5: conf-ECE and accuracy unchanged; each padded class
    # has probs 0 (bin 0) and indicator 0 -> gap 0, so cw-ECE_padded = cw-ECE * K/K_pad.
    rng = np.random.default_rng(2)
    p3 = rng.dirichlet(np.ones(3), size=40)
    y = rng.integers(0, 3, size=40)
    p5 = np.concatenate([p3, np.zeros((40, 2))], axis=1)
    assert conf_ece(p5, y) == pytest.approx(conf_ece(p3, y), abs=1e-12)
    assert accuracy(p5, y) == accuracy(p3, y)
    assert cw_ece(p5, y) == pytest.approx(cw_ece(p3, y) * 3 / 5, abs=1e-12)


# ----------------------------------------------------------------------------- mixed K (num_options)
# Case C: rows with 2 and 3 options, zero-padded to K=3, M=2 bins [0, .5] (.5, 1].
#   probs              K  label  max  pred  correct
#   [0.8, 0.2, 0.0]    2  0      0.8  0     1
#   [0.6, 0.3, 0.1]    3  1      0.6  0     0
#   [0.1, 0.2, 0.7]    3  2      0.7  2     1
CASE_C_PROBS = [[0.8, 0.2, 0.0], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]
CASE_C_LABELS = [0, 1, 2]
CASE_C_K = [2, 3, 3]


def test_mixed_k_cw_ece_hand_case():
    # class 0 (n_0 = 3): bin1 {.8 y1, .6 y0} |1 - 1.4| = .4 ; bin0 {.1 y0} .1        -> sum .5
    # class 1 (n_1 = 3): bin0 {.2 y0, .3 y1, .2 y0} |1 - .7| = .3                     -> sum .3
    # class 2 (n_2 = 2, the K=2 row has no class 2): bin0 {.1 y0} .1 ; bin1 {.7 y1} .3 -> sum .4
    # cw-ECE = sum_k n_k/N * ECE_k = (.5 + .3 + .4) / (3 + 3 + 2) = 1.2 / 8 = 0.15
    # (without num_options the padded 0 is a real class-2 probability: 1.2 / 9)
    assert cw_ece(CASE_C_PROBS, CASE_C_LABELS, n_bins=2, num_options=CASE_C_K) == pytest.approx(0.15, abs=1e-12)
    assert cw_ece(CASE_C_PROBS, CASE_C_LABELS, n_bins=2) == pytest.approx(1.2 / 9, abs=1e-12)
    # conf-ECE and accuracy do not depend on the padding: bin1 {.8 ok, .6 wrong, .7 ok} |2 - 2.1| / 3
    for k in (None, CASE_C_K):
        assert conf_ece(CASE_C_PROBS, CASE_C_LABELS, n_bins=2, num_options=k) == pytest.approx(0.1 / 3, abs=1e-12)
        assert accuracy(CASE_C_PROBS, CASE_C_LABELS, num_options=k) == pytest.approx(2 / 3, abs=1e-15)
    got = calibration_metrics(CASE_C_PROBS, CASE_C_LABELS, n_bins=2, num_options=CASE_C_K)
    assert got == {"conf_ece": pytest.approx(0.1 / 3, abs=1e-12), "cw_ece": pytest.approx(0.15, abs=1e-12),
                   "accuracy": pytest.approx(2 / 3, abs=1e-15)}


def test_mixed_k_reliability_bins_exclude_padding():
    rb = reliability_bins(CASE_C_PROBS, CASE_C_LABELS, n_bins=2, kind="class", num_options=CASE_C_K)
    np.testing.assert_array_equal(rb.class_rows, [3, 3, 2])
    np.testing.assert_array_equal(rb.count, [[1, 2], [3, 0], [1, 1]])  # class 2: no padded 0 in bin 0
    np.testing.assert_allclose(rb.mean_confidence[2], [0.1, 0.7], atol=1e-12)
    np.testing.assert_allclose(rb.weight.sum(axis=1), [1.0, 1.0, 1.0])
    assert rb.ece == cw_ece(CASE_C_PROBS, CASE_C_LABELS, n_bins=2, num_options=CASE_C_K)
    padded = reliability_bins(CASE_C_PROBS, CASE_C_LABELS, n_bins=2, kind="class")
    np.testing.assert_array_equal(padded.count[2], [2, 1])
    np.testing.assert_array_equal(padded.class_rows, [3, 3, 3])
    conf = reliability_bins(CASE_C_PROBS, CASE_C_LABELS, n_bins=2, num_options=CASE_C_K)
    assert conf.class_rows is None and conf.ece == pytest.approx(0.1 / 3, abs=1e-12)


def test_mixed_k_cw_ece_is_continuous_in_one_extra_option():
    """1000 four-option rows, then ONE five-option row: the plain mean over Kmax=5 padded classes
    drops to ~4/5 of the value; with num_options the change is of the order of that one row."""
    rng = np.random.default_rng(0)
    p4 = rng.dirichlet(np.full(4, 0.5), size=1000)
    y4 = rng.integers(0, 4, size=1000)
    base = cw_ece(p4, y4)
    assert cw_ece(p4, y4, num_options=np.full(1000, 4)) == pytest.approx(base, abs=1e-12)  # fixed K: the plain mean
    p5 = np.zeros((1001, 5))
    p5[:1000, :4] = p4
    p5[1000] = [0.1, 0.1, 0.1, 0.1, 0.6]
    y5 = np.append(y4, 4)
    k5 = np.append(np.full(1000, 4), 5)
    assert cw_ece(p5, y5) == pytest.approx(base * 4 / 5, rel=0.01)  # without num_options: the plain mean over all 5 columns (jumps with one K=5 row)
    assert abs(cw_ece(p5, y5, num_options=k5) - base) < 2e-3
    assert conf_ece(p5, y5, num_options=k5) == conf_ece(p5, y5)


def ref_cw_ece_mixed(probs, labels, num_options, n_bins):
    """Textbook form: ECE_k over the rows that have class k, weighted by their number."""
    probs = np.asarray(probs, dtype=np.float64)
    total, weight = 0.0, 0
    for c in range(probs.shape[1]):
        rows = [i for i, k in enumerate(num_options) if k > c]
        if rows:
            e = _ref_ece_1d([float(probs[i, c]) for i in rows], [1.0 if labels[i] == c else 0.0 for i in rows], n_bins)
            total += len(rows) * e
            weight += len(rows)
    return total / weight


@st.composite
def mixed_k_cases(draw):
    n = draw(st.integers(1, 30))
    kmax = draw(st.integers(2, 6))
    ks = draw(st.lists(st.integers(2, kmax), min_size=n, max_size=n))
    probs = np.zeros((n, kmax))
    labels = []
    for i, k in enumerate(ks):
        w = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k)))
        w[0] += 1e-3 if w.sum() == 0 else 0.0
        probs[i, :k] = w / w.sum()
        labels.append(draw(st.integers(0, k - 1)))
    return probs, np.array(labels), np.array(ks), draw(st.sampled_from([1, 2, 5, 10]))


@PROPERTY_SETTINGS
@given(mixed_k_cases())
def test_mixed_k_matches_loop_reference(case):
    probs, labels, ks, m = case
    assert cw_ece(probs, labels, m, num_options=ks) == pytest.approx(ref_cw_ece_mixed(probs, labels, ks, m), abs=1e-12)
    assert conf_ece(probs, labels, m, num_options=ks) == pytest.approx(ref_conf_ece(probs, labels, m), abs=1e-12)
    rb = reliability_bins(probs, labels, m, kind="class", num_options=ks)
    assert rb.ece == cw_ece(probs, labels, m, num_options=ks)
    np.testing.assert_array_equal(rb.count.sum(axis=1), [(ks > c).sum() for c in range(probs.shape[1])])


@pytest.mark.parametrize(
    "num_options, labels, probs, match",
    [
        ([2, 3], [0, 1, 2], CASE_C_PROBS, r"num_options must have shape \(3,\)"),
        ([2, 4, 3], CASE_C_LABELS, CASE_C_PROBS, r"num_options must lie in \[2, 3\].*row 1 has 4"),
        ([1, 3, 3], CASE_C_LABELS, CASE_C_PROBS, r"row 0 has 1"),
        ([2.5, 3, 3], CASE_C_LABELS, CASE_C_PROBS, r"num_options must be integer"),
        ([2, 3, 3], [2, 1, 2], [[0.2, 0.0, 0.8], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]], r"row 0 has label 2 but only num_options=2"),
        ([2, 2, 3], CASE_C_LABELS, CASE_C_PROBS, r"row 1 has label 1|row 1 has num_options=2 but non-zero"),
        ([2, 3, 3], CASE_C_LABELS, [[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]],
         r"row 0 has num_options=2 but non-zero probabilities after its first 2 columns.*pad each row with zeros"),
    ],
)
def test_num_options_invalid(num_options, labels, probs, match):
    for fn in (conf_ece, cw_ece, calibration_metrics):
        with pytest.raises(ValueError, match=match):
            fn(probs, labels, num_options=num_options)
    with pytest.raises(ValueError, match=match):
        validate_probs_labels(probs, labels, num_options=num_options)


# ----------------------------------------------------------------------------- reliability_bins
def test_reliability_bins_conf_hand_case():
    # Case A, M=5 (see test_case_a_conf_ece_5_bins):
    #   bin 2: {0.6 ok}            count 1, conf 0.6,  acc 1
    #   bin 3: {0.8 wrong, 0.7 ok} count 2, conf 0.75, acc 0.5
    #   bin 4: {0.9 ok}            count 1, conf 0.9,  acc 1
    rb = reliability_bins(CASE_A_PROBS, CASE_A_LABELS, n_bins=5)
    assert isinstance(rb, ReliabilityBins) and rb.kind == "conf" and rb.n == 4
    np.testing.assert_array_equal(rb.edges, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_array_equal(rb.count, [0, 0, 1, 2, 1])
    np.testing.assert_allclose(rb.mean_confidence, [np.nan, np.nan, 0.6, 0.75, 0.9], atol=1e-12)
    np.testing.assert_allclose(rb.accuracy, [np.nan, np.nan, 1.0, 0.5, 1.0], atol=1e-12)
    np.testing.assert_allclose(rb.weight, [0, 0, 0.25, 0.5, 0.25])
    assert rb.ece == pytest.approx(0.25, abs=1e-12)
    assert rb.ece == conf_ece(CASE_A_PROBS, CASE_A_LABELS, n_bins=5)


def test_reliability_bins_class_hand_case():
    # Case A, M=5, kind="class": row k is class k (see test_case_a_cw_ece_5_bins)
    #   class 0: bin1 {.4,.3} y 0,0 ; bin3 {.8} y 0 ; bin4 {.9} y 1
    #   class 1: bin0 {.1,.2} y 0,1 ; bin2 {.6} y 1 ; bin3 {.7} y 1
    rb = reliability_bins(CASE_A_PROBS, CASE_A_LABELS, n_bins=5, kind="class")
    assert rb.kind == "class" and rb.count.shape == (2, 5)
    np.testing.assert_array_equal(rb.count, [[0, 2, 0, 1, 1], [2, 0, 1, 1, 0]])
    np.testing.assert_allclose(
        rb.mean_confidence, [[np.nan, 0.35, np.nan, 0.8, 0.9], [0.15, np.nan, 0.6, 0.7, np.nan]], atol=1e-12
    )
    np.testing.assert_allclose(
        rb.accuracy, [[np.nan, 0.0, np.nan, 0.0, 1.0], [0.5, np.nan, 1.0, 1.0, np.nan]], atol=1e-12
    )
    np.testing.assert_array_equal(rb.count.sum(axis=1), [4, 4])
    np.testing.assert_allclose(rb.weight.sum(axis=1), [1.0, 1.0])
    assert rb.ece == pytest.approx(0.375, abs=1e-12)
    assert rb.ece == cw_ece(CASE_A_PROBS, CASE_A_LABELS, n_bins=5)


def test_reliability_bins_invalid_kind():
    with pytest.raises(ValueError, match="kind"):
        reliability_bins(CASE_A_PROBS, CASE_A_LABELS, kind="classwise")


# ----------------------------------------------------------------------------- invalid input
GOOD_P = [[0.5, 0.5], [0.25, 0.75]]
GOOD_Y = [0, 1]


@pytest.mark.parametrize(
    "probs, labels, match",
    [
        ([0.5, 0.5], [0], r"shape \(n, K\)"),  # 1-D probs
        (np.full((2, 2, 2), 0.5), [0, 1], r"shape \(n, K\)"),  # 3-D probs
        (np.zeros((0, 4)), [], "empty"),  # no samples
        ([[1.0], [1.0]], [0, 0], "K >= 2"),  # K = 1
        (GOOD_P, [0, 1, 1], r"labels must have shape \(2,\)"),  # too many labels
        (GOOD_P, [[0], [1]], r"labels must have shape \(2,\)"),  # 2-D labels
        (GOOD_P, [0, 2], r"\[0, 2\).*row 1 has label 2"),  # label == K
        (GOOD_P, [-1, 0], r"row 0 has label -1"),  # negative label
        (GOOD_P, [0.5, 1.0], "integer"),  # non-integer float label
        (GOOD_P, [0.0, float("nan")], "integer"),  # NaN label
        (GOOD_P, [True, False], "integer"),  # bool labels
        ([[0.5, 0.4], [0.25, 0.75]], GOOD_Y, r"sum to 1 \(row 0 sums to 0.900000\)"),
        ([[2.0, 3.0], [0.25, 0.75]], GOOD_Y, r"\[0, 1\]"),  # logits, not probabilities
        ([[1.5, -0.5], [0.25, 0.75]], GOOD_Y, r"\[0, 1\] \(row 0"),  # sums to 1 but out of range
        ([[0.5, 0.5], [float("nan"), 1.0]], GOOD_Y, "NaN or inf.*row 1"),
        ([[float("inf"), 0.5], [0.25, 0.75]], GOOD_Y, "NaN or inf.*row 0"),
        ([[True, False], [False, True]], GOOD_Y, "real numbers"),
    ],
)
def test_invalid_input_raises_value_error(probs, labels, match):
    for fn in (conf_ece, cw_ece, accuracy, reliability_bins, validate_probs_labels):
        with pytest.raises(ValueError, match=match):
            fn(probs, labels)


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, "10", True, None])
def test_invalid_n_bins(n_bins):
    for fn in (conf_ece, cw_ece):
        with pytest.raises(ValueError, match="n_bins must be a positive integer"):
            fn(GOOD_P, GOOD_Y, n_bins=n_bins)
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins(GOOD_P, GOOD_Y, n_bins=n_bins)
    with pytest.raises(ValueError, match="n_bins"):
        bin_index([0.5], n_bins)


def test_numpy_integer_n_bins_ok():
    assert conf_ece(CASE_A_PROBS, CASE_A_LABELS, n_bins=np.int64(5)) == pytest.approx(0.25)


def test_row_sum_tolerance_accepts_float32_softmax():
    # rows within 1e-3 of 1 are accepted (float32 softmax rounding), the check can be turned off
    validate_probs_labels([[0.5004, 0.5]], [0])
    with pytest.raises(ValueError, match="sum to 1"):
        validate_probs_labels([[0.502, 0.5]], [0])
    validate_probs_labels([[0.3, 0.3]], [0], check_row_sums=False)


def test_validate_returns_float64_int64():
    p, y = validate_probs_labels(np.float32(GOOD_P), np.int32(GOOD_Y))
    assert p.dtype == torch.float64 and y.dtype == torch.int64
    assert p.shape == (2, 2) and y.shape == (2,)


def test_string_labels_raise_value_error():
    # Non-numeric input must be a ValueError that says what is wrong, not torch's TypeError
    # "can't convert np.ndarray of type numpy.str_". Fix in metrics._as_tensor: see B's report.
    with pytest.raises(ValueError, match="labels"):
        conf_ece(GOOD_P, ["A", "B"])
    with pytest.raises(ValueError, match="probs"):
        conf_ece([["0.5", "0.5"], ["0.25", "0.75"]], GOOD_Y)


def test_non_numeric_inputs_raise_value_error():
    # object arrays and ragged lists are not numbers either
    with pytest.raises(ValueError, match="probs"):
        conf_ece(np.array([[0.5, 0.5], [0.25, None]], dtype=object), GOOD_Y)
    with pytest.raises(ValueError):
        cw_ece([[0.5, 0.5], [1.0]], GOOD_Y)
    with pytest.raises(ValueError, match="labels"):
        calibration_metrics(GOOD_P, np.array(["0", "1"]))


# ----------------------------------------------------------------------------- calibration_metrics + the fast engine
def test_calibration_metrics_hand_case():
    # Case A, M=5: conf-ECE 0.25, cw-ECE 0.375, accuracy 0.75 (see the hand-computed tests above)
    got = calibration_metrics(CASE_A_PROBS, CASE_A_LABELS, n_bins=5)
    assert got == {"conf_ece": pytest.approx(0.25, abs=1e-12), "cw_ece": pytest.approx(0.375, abs=1e-12),
                   "accuracy": 0.75}
    assert list(got) == ["conf_ece", "cw_ece", "accuracy"]
    assert all(type(v) is float for v in got.values())


@pytest.mark.parametrize("n_bins", [0, 2.5, None])
def test_calibration_metrics_invalid(n_bins):
    with pytest.raises(ValueError, match="n_bins"):
        calibration_metrics(GOOD_P, GOOD_Y, n_bins=n_bins)
    with pytest.raises(ValueError, match="NaN"):  # bad data is reported before a bad n_bins
        calibration_metrics([[float("nan"), 1.0]], [0], n_bins=n_bins)


def _all_results(probs, labels, m):
    return (
        conf_ece(probs, labels, m),
        cw_ece(probs, labels, m),
        accuracy(probs, labels),
        tuple(calibration_metrics(probs, labels, m).values()),
        *[(rb.count.tolist(), np.nan_to_num(rb.mean_confidence, nan=-1.0).tolist(),
           np.nan_to_num(rb.accuracy, nan=-1.0).tolist(), rb.ece)
          for rb in (reliability_bins(probs, labels, m, kind=kind) for kind in ("conf", "class"))],
    )


def test_results_do_not_depend_on_row_order_of_equal_inputs_and_match_the_loop():
    rng = np.random.default_rng(5)
    for k, m in ((2, 10), (3, 5), (3, 49), (4, 15)):
        probs = rng.dirichlet(np.full(k, 0.5), size=50)
        probs[::7] = np.eye(k)[rng.integers(0, k, size=len(probs[::7]))]  # zeros and ones
        labels = rng.integers(0, k, size=50)
        first = _all_results(probs, labels, m)
        assert _all_results(torch.from_numpy(probs), torch.from_numpy(labels), m) == first
        assert first[0] == pytest.approx(ref_conf_ece(probs, labels, m), abs=1e-12)
        assert first[1] == pytest.approx(ref_cw_ece(probs, labels, m), abs=1e-12)


def test_errors_name_the_global_row():
    probs = np.tile([[0.25, 0.75]], (40, 1))
    labels = np.zeros(40, dtype=np.int64)
    bad = probs.copy()
    bad[31] = [float("nan"), 1.0]
    bad_sum = probs.copy()
    bad_sum[17] = [0.5, 0.4]
    bad_range = probs.copy()
    bad_range[23] = [1.5, -0.5]
    bad_labels = labels.copy()
    bad_labels[38] = 2
    for fn in (conf_ece, cw_ece, calibration_metrics):
        with pytest.raises(ValueError, match="NaN or inf.*row 31"):
            fn(bad, labels)
        with pytest.raises(ValueError, match="row 17 sums to 0.900000"):
            fn(bad_sum, labels)
        with pytest.raises(ValueError, match=r"\[0, 1\] \(row 23"):
            fn(bad_range, labels)
        with pytest.raises(ValueError, match="row 38 has label 2"):
            fn(probs, bad_labels)
    with pytest.raises(ValueError, match="row 31"):
        accuracy(bad, labels)


def test_row_sums_at_the_tolerance_are_decided_by_the_reference_validator():
    # the fast path accepts rows well inside the tolerance and asks validate_probs_labels about the rest,
    # so both agree on every row sum, including those within rounding of 1 +- ROW_SUM_ATOL
    for delta in (ROW_SUM_ATOL - 1e-9, ROW_SUM_ATOL - 1e-12, ROW_SUM_ATOL, ROW_SUM_ATOL + 1e-12, ROW_SUM_ATOL + 1e-9):
        for sign in (1.0, -1.0):
            probs = [[0.25, 0.75], [0.5 + sign * delta, 0.5]]
            try:
                validate_probs_labels(probs, [0, 1])
                reference_ok = True
            except ValueError:
                reference_ok = False
            if reference_ok:
                assert calibration_metrics(probs, [0, 1])["accuracy"] == ref_accuracy(probs, [0, 1])
            else:
                with pytest.raises(ValueError, match="sum to 1"):
                    calibration_metrics(probs, [0, 1])


def test_row_sum_tolerance_by_dtype():
    # 16-bit floats get their machine epsilon on top (rounding K probabilities moves the sum by up to
    # half an epsilon); float32/float64/integer/list input keeps 1e-3
    assert row_sum_tolerance(torch.bfloat16) == ROW_SUM_ATOL + 2.0**-7
    assert row_sum_tolerance(torch.float16) == ROW_SUM_ATOL + 2.0**-10
    for dt in (torch.float32, torch.float64, torch.int64):
        assert row_sum_tolerance(dt) == ROW_SUM_ATOL


def test_low_precision_softmax_is_accepted_and_logits_still_refused():
    # softmax output rounded to bf16/fp16 sums to 1 only within the dtype's precision (0.998... is common):
    # it is probabilities and must be accepted, while logits are still refused
    g = torch.Generator().manual_seed(0)
    worst = {torch.bfloat16: 0.0, torch.float16: 0.0}
    for k in (2, 4, 5, 10, 32):
        x = torch.randn(3000, k, generator=g) * 3
        y = torch.randint(0, k, (3000,), generator=g)
        for dt in worst:
            for p in (torch.softmax(x, 1).to(dt), torch.softmax(x.to(dt), 1)):
                worst[dt] = max(worst[dt], float((p.double().sum(1) - 1).abs().max()))
                got = calibration_metrics(p, y)  # accepted, and computed on the values as given
                p64 = p.double().numpy()
                assert got["conf_ece"] == pytest.approx(ref_conf_ece(p64, y.numpy(), 10), abs=1e-12)
                assert got["cw_ece"] == pytest.approx(ref_cw_ece(p64, y.numpy(), 10), abs=1e-12)
                assert got["accuracy"] == ref_accuracy(p64, y.numpy())
    assert worst[torch.bfloat16] > ROW_SUM_ATOL  # the float32 tolerance would refuse these rows
    # logits (outside [0, 1]) and unnormalised scores are still refused, in every precision
    x = torch.randn(50, 4, generator=g) * 3
    y = torch.zeros(50, dtype=torch.int64)
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            calibration_metrics(x.to(dt), y)
        with pytest.raises(ValueError, match=f"sum to 1.*tolerance for {str(dt)[6:]} input is"):
            calibration_metrics(torch.sigmoid(x).to(dt), y)
    with pytest.raises(ValueError, match=r"row 0 sums to 0\.98"):  # 2 x 0.490234375: 20 ulps short in bf16
        calibration_metrics(torch.tensor([[0.49, 0.49]], dtype=torch.bfloat16), [0])
    with pytest.raises(ValueError, match="tolerance for float32 input is 0.001"):  # float32 unchanged
        validate_probs_labels(torch.tensor([[0.499, 0.499]], dtype=torch.float32), [0])
    validate_probs_labels(torch.tensor([[0.499, 0.499]], dtype=torch.bfloat16), [0])  # 0.998 in bf16: ok


def test_conf_ece_matches_torchmetrics_away_from_bin_edges():
    # Cross-check with torchmetrics' multiclass_calibration_error(norm="l1"). Binning difference:
    # torchmetrics bins float32 confidences with bucketize(right=True) on linspace(0, 1, M+1), i.e.
    # left-closed [(m-1)/M, m/M), and a confidence of exactly 1 gets a bin of its own; ours are
    # right-closed ((m-1)/M, m/M]. Everything else (max-probability confidence, argmax accuracy,
    # sum_m |B_m|/n |acc - conf|) is the same, so with no confidence on an edge the two agree up to
    # torchmetrics' float32 sums.
    tmc = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(11)
    for k, n, m in ((2, 500, 10), (4, 4000, 10), (5, 2000, 15), (10, 1000, 10), (4, 3000, 7)):
        probs = rng.dirichlet(np.full(k, 0.7), size=n).astype(np.float32)
        conf = probs.max(axis=1).astype(np.float64)
        probs = probs[np.abs(conf * m - np.round(conf * m)) > 1e-4]  # no confidence within 1e-4/M of an edge
        labels = rng.integers(0, k, size=len(probs))
        theirs = tmc.multiclass_calibration_error(
            torch.from_numpy(probs), torch.from_numpy(labels), num_classes=k, n_bins=m, norm="l1"
        )
        assert len(probs) > 0.9 * n
        assert conf_ece(probs, labels, n_bins=m) == pytest.approx(float(theirs), abs=2e-6), (k, m)
    # on an edge the two differ: n_bins=4, confidences 0.75 (right) and 0.875 (wrong)
    #   ours:   (0.5, 0.75] {0.75 ok} gap 0.25; (0.75, 1] {0.875 wrong} gap 0.875 -> (0.25 + 0.875) / 2 = 0.5625
    #   theirs: [0.75, 1) {both}: acc 0.5, conf 0.8125 -> 0.3125
    edge_p, edge_y = [[0.75, 0.25], [0.875, 0.125]], [0, 1]
    assert conf_ece(edge_p, edge_y, n_bins=4) == 0.5625
    theirs = tmc.multiclass_calibration_error(torch.tensor(edge_p), torch.tensor(edge_y), num_classes=2, n_bins=4)
    assert float(theirs) == 0.3125


def test_fast_binning_near_edges_matches_bucketize():
    # _bin_fast skips the exact comparisons when fl(v*M) is more than M*2^-48 from an integer: values
    # at, just inside and just outside that distance from an edge, for small and very large M
    rng = np.random.default_rng(8)
    for m in (*range(1, 65), 100, 997, 1000, 4096, 12345, 10**6, 2**31 - 1):
        js = np.arange(m + 1) if m <= 1000 else np.unique(np.r_[0, 1, m - 1, m, rng.integers(0, m + 1, 300)])
        edges = js / m
        offsets = [0.0, *(s * d for s in (1, -1) for d in (2.0**-52, 2.0**-50, 2.0**-48, 2.0**-47, 2.0**-44, 1e-9))]
        vals = np.clip(np.concatenate([edges + o for o in offsets]), 0.0, 1.0)
        got = bin_index(vals, m).numpy()
        # the definition: b/M < v <= (b+1)/M with correctly rounded edges (0 in bin 0)
        for v, b in zip(vals.tolist(), got.tolist()):
            assert 0 <= b < m and (b == 0 or v > b / m) and v <= (b + 1) / m, (m, v, b)
        if m <= 1000:
            np.testing.assert_array_equal(got, [ref_bin(v, m) for v in vals], err_msg=f"M={m}")
        if m <= 10**6:  # the search over all edges, and the one-pass engine
            searched = torch.bucketize(torch.from_numpy(vals), bin_edges(m)[1:-1], right=False).numpy()
            np.testing.assert_array_equal(got, searched, err_msg=f"M={m}")
            probs = np.stack([vals, 1.0 - vals], axis=1)
            rb = reliability_bins(probs, np.zeros(len(vals), dtype=np.int64), m, kind="class")
            np.testing.assert_array_equal(rb.count[0], np.bincount(got, minlength=m), err_msg=f"M={m}")


def test_exact_binning_matches_bucketize_for_many_n_bins():
    # the search-free binning puts every value, edges and their neighbours included, in the same
    # bin as a binary search over the edges (torch.bucketize, right-closed) and as the loop reference
    rng = np.random.default_rng(3)
    for m in [*range(1, 121), 200, 256, 500, 997, 1000]:
        edges = [j / m for j in range(m + 1)]
        vals = [0.0, 1.0, *edges, *(math.nextafter(e, 2.0) for e in edges[:-1]),
                *(math.nextafter(e, -1.0) for e in edges[1:]), *rng.random(50).tolist(),
                float(np.float32(0.3)), float(np.float32(0.7)), 5e-324]
        vals = np.array(vals)
        probs = np.stack([vals, 1.0 - vals], axis=1)  # class 0 holds every value
        labels = np.zeros(len(vals), dtype=np.int64)
        rb = reliability_bins(probs, labels, m, kind="class")
        searched = torch.bucketize(torch.from_numpy(vals), bin_edges(m)[1:-1], right=False)
        np.testing.assert_array_equal(bin_index(vals, m).numpy(), searched.numpy(), err_msg=f"M={m}")
        expected = np.bincount(searched.numpy(), minlength=m)
        np.testing.assert_array_equal(rb.count[0], expected, err_msg=f"M={m}")
        np.testing.assert_array_equal(
            rb.count[0], np.bincount([ref_bin(v, m) for v in vals], minlength=m), err_msg=f"M={m}"
        )


def test_concurrent_threads_agree():
    # the compiled kernel releases the GIL: concurrent calls must not share state
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(4)
    cases = [(rng.dirichlet(np.ones(k), size=3000), rng.integers(0, k, size=3000)) for k in (2, 3, 4, 5)] * 3
    expected = [calibration_metrics(p, y) for p, y in cases]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda c: calibration_metrics(*c), cases))
    assert got == expected


def test_noncontiguous_and_low_precision_inputs():
    rng = np.random.default_rng(6)
    probs = rng.dirichlet(np.ones(4), size=200)
    labels = rng.integers(0, 4, size=200)
    ref = calibration_metrics(probs, labels)
    t = torch.from_numpy(np.ascontiguousarray(probs.T)).t()  # a transposed (non-contiguous) view
    assert not t.is_contiguous()
    assert calibration_metrics(t, torch.from_numpy(labels)) == ref
    assert calibration_metrics(probs.astype(">f8"), labels.astype(">i4")) == ref  # big-endian numpy
    # float16 / bfloat16 / integer probabilities are converted exactly (multiples of 1/16 here)
    sixteenths = rng.multinomial(16, np.full(4, 0.25), size=200) / 16.0
    ref16 = calibration_metrics(sixteenths, labels)
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        assert calibration_metrics(torch.from_numpy(sixteenths).to(dt), labels) == ref16
    onehot = np.eye(4, dtype=np.int64)[labels]
    assert calibration_metrics(onehot, labels) == {"conf_ece": 0.0, "cw_ece": 0.0, "accuracy": 1.0}


# ----------------------------------------------------------------------------- properties
@st.composite
def probs_labels(draw, max_n=40, max_k=6, snap=None):
    """Random (probs, labels, n_bins). Rows are normalised non-negative weights. With small
    integer weights summing to 10 or 20 (snap), many probabilities land exactly on bin edges."""
    n = draw(st.integers(1, max_n))
    k = draw(st.integers(2, max_k))
    snap = draw(st.booleans()) if snap is None else snap
    if snap:
        rows = []
        total = draw(st.sampled_from([4, 5, 10, 20]))
        for _ in range(n):
            cuts = sorted(draw(st.lists(st.integers(0, total), min_size=k - 1, max_size=k - 1)))
            w = np.diff([0, *cuts, total]).astype(np.float64)
            rows.append(w / total)
        probs = np.array(rows)
    else:
        w = np.array(
            draw(st.lists(st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k), min_size=n, max_size=n))
        )
        w[w.sum(axis=1) == 0, 0] = 1.0
        probs = w / w.sum(axis=1, keepdims=True)
    labels = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    n_bins = draw(st.sampled_from([1, 2, 3, 5, 10, 15]))
    return probs, labels, n_bins


@PROPERTY_SETTINGS
@given(probs_labels())
def test_matches_loop_reference(case):
    probs, labels, m = case
    assert conf_ece(probs, labels, m) == pytest.approx(ref_conf_ece(probs, labels, m), abs=1e-12)
    assert cw_ece(probs, labels, m) == pytest.approx(ref_cw_ece(probs, labels, m), abs=1e-12)
    assert accuracy(probs, labels) == pytest.approx(ref_accuracy(probs, labels), abs=1e-15)
    rb = reliability_bins(probs, labels, m)
    ref_bins = [ref_bin(float(c), m) for c in probs.max(axis=1)]
    np.testing.assert_array_equal(rb.count, np.bincount(ref_bins, minlength=m))


@PROPERTY_SETTINGS
@given(probs_labels())
def test_ece_in_unit_interval_and_reliability_consistent(case):
    probs, labels, m = case
    n = len(labels)
    for kind, fn in (("conf", conf_ece), ("class", cw_ece)):
        e = fn(probs, labels, m)
        assert 0.0 <= e <= 1.0
        rb = reliability_bins(probs, labels, m, kind=kind)
        assert rb.ece == pytest.approx(e, abs=1e-12)
        assert rb.n == n
        np.testing.assert_array_equal(rb.count.sum(axis=-1), n)
        empty = rb.count == 0
        assert np.isnan(rb.mean_confidence[empty]).all() and np.isnan(rb.accuracy[empty]).all()
        assert not np.isnan(rb.mean_confidence[~empty]).any()
        # the ECE recomputed from the per-bin fields (empty bins contribute 0)
        gaps = np.where(empty, 0.0, rb.weight * np.abs(np.nan_to_num(rb.accuracy - rb.mean_confidence)))
        assert gaps.sum(axis=-1).mean() == pytest.approx(e, abs=1e-12)
        # mean confidences lie inside their bins ((m-1)/M, m/M] (bin 0 also holds 0)
        lo = np.broadcast_to(rb.edges[:-1], rb.count.shape)
        hi = np.broadcast_to(rb.edges[1:], rb.count.shape)
        mc = rb.mean_confidence[~empty]
        assert (mc <= hi[~empty] + 1e-12).all() and (mc >= lo[~empty] - 1e-12).all()
    assert 0.0 <= accuracy(probs, labels) <= 1.0


@PROPERTY_SETTINGS
@given(probs_labels(), st.randoms(use_true_random=False))
def test_permutation_invariance(case, rnd):
    probs, labels, m = case
    n, k = probs.shape
    rows = list(range(n))
    rnd.shuffle(rows)
    for fn in (conf_ece, cw_ece):
        assert fn(probs[rows], labels[rows], m) == pytest.approx(fn(probs, labels, m), abs=1e-12)
    assert accuracy(probs[rows], labels[rows]) == accuracy(probs, labels)
    # relabelling the classes consistently leaves cw-ECE unchanged (conf-ECE too, barring argmax ties)
    cols = list(range(k))
    rnd.shuffle(cols)
    inv = np.argsort(cols)
    assert cw_ece(probs[:, cols], inv[labels], m) == pytest.approx(cw_ece(probs, labels, m), abs=1e-12)
    if all(len(set(r)) == k for r in probs.tolist()):
        assert conf_ece(probs[:, cols], inv[labels], m) == pytest.approx(conf_ece(probs, labels, m), abs=1e-12)


@PROPERTY_SETTINGS
@given(
    st.integers(1, 50), st.integers(2, 6), st.sampled_from([1, 5, 10, 15]), st.integers(0, 2**32 - 1)
)
def test_one_hot_correct_predictor_is_perfectly_calibrated(n, k, m, seed):
    labels = np.random.default_rng(seed).integers(0, k, size=n)
    probs = np.eye(k)[labels]
    assert conf_ece(probs, labels, m) == 0.0
    assert cw_ece(probs, labels, m) == 0.0
    assert accuracy(probs, labels) == 1.0


@settings(max_examples=5, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1), st.sampled_from([2, 4, 5]))
def test_calibrated_sampler_ece_vanishes(seed, k):
    """Labels drawn from each probs row: the predictor is calibrated, so both ECEs are pure
    sampling noise, E[ECE] <= sqrt(2/pi) * 0.5 * sqrt(M/n) (Cauchy-Schwarz over bins).
    Assert the 3*sqrt(M/n) bound (a > 7-sigma margin) at each n, and the decrease overall."""
    rng = np.random.default_rng(seed)
    m = 10
    conf_e, cw_e = [], []
    for n in (1_000, 10_000, 100_000):
        probs = rng.dirichlet(np.full(k, 0.7), size=n)
        u = rng.random((n, 1))
        labels = np.minimum((probs.cumsum(axis=1) < u).sum(axis=1), k - 1)
        bound = 3 * math.sqrt(m / n)
        conf_e.append(conf_ece(probs, labels, m))
        cw_e.append(cw_ece(probs, labels, m))
        assert conf_e[-1] < bound and cw_e[-1] < bound, (n, conf_e[-1], cw_e[-1], bound)
    assert conf_e[-1] < conf_e[0] and cw_e[-1] < cw_e[0]
    assert conf_e[-1] < 0.03 and cw_e[-1] < 0.03


def test_miscalibrated_sampler_ece_does_not_vanish():
    # Sanity of the sampler test above: labels drawn from a *flattened* distribution (true accuracy
    # lower than the stated confidence) keep conf-ECE well away from 0 at large n.
    rng = np.random.default_rng(0)
    n, k = 100_000, 4
    probs = rng.dirichlet(np.full(k, 0.7), size=n)
    true = 0.5 * probs + 0.5 / k
    labels = (true.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1).clip(max=k - 1)
    assert conf_ece(probs, labels) > 0.1
    assert cw_ece(probs, labels) > 0.02


@PROPERTY_SETTINGS
@given(probs_labels())
def test_calibration_metrics_identical_to_single_functions(case):
    probs, labels, m = case
    got = calibration_metrics(probs, labels, m)
    assert got == {"conf_ece": conf_ece(probs, labels, m), "cw_ece": cw_ece(probs, labels, m),
                   "accuracy": accuracy(probs, labels)}


@pytest.mark.parametrize("m", [1, 3, 7, 10, 20, 97])
def test_every_public_function_bins_edge_values_like_the_reference(m):
    # the public functions run different compiled kernels (some with their options constant); all, with and without
    # num_options, must put every edge, its float neighbours and 0 in the reference's right-closed bin
    edges = [j / m for j in range(m + 1)]
    vals = [0.0, 1.0, *edges, *(math.nextafter(e, 2.0) for e in edges[:-1]),
            *(math.nextafter(e, -1.0) for e in edges[1:]), float(np.float32(0.3)), 5e-324]
    rng = np.random.default_rng(m)
    rows = []
    for v in vals:  # each value once as the max (3 options) and once beside a larger one (4 options, 1 padding)
        rows.append([v, (1.0 - v) / 2, (1.0 - v) / 2, 0.0])
        rows.append([v / 4, v / 4, 1.0 - v / 2, 0.0] if v > 0.5 else [v, 1.0 - v, 0.0, 0.0])
    probs = np.array(rows)
    labels = rng.integers(0, 2, len(rows))
    k = np.where(probs[:, 2] > 0, 3, 2)
    want = {"conf_ece": ref_conf_ece(probs, labels, m), "cw_ece": ref_cw_ece(probs, labels, m),
            "accuracy": ref_accuracy(probs, labels)}
    got = calibration_metrics(probs, labels, m)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert conf_ece(probs, labels, m) == got["conf_ece"] and cw_ece(probs, labels, m) == got["cw_ece"]
    assert accuracy(probs, labels) == got["accuracy"]
    mixed = calibration_metrics(probs, labels, m, num_options=k)
    assert mixed["cw_ece"] == pytest.approx(ref_cw_ece_mixed(probs, labels, k, m), abs=1e-12)
    assert cw_ece(probs, labels, m, num_options=k) == mixed["cw_ece"]
    assert conf_ece(probs, labels, m, num_options=k) == mixed["conf_ece"] == got["conf_ece"]
