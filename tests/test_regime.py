"""The regime rule (our heuristic): over-confident but rank-consistent -> calibratable (CFT);
confidence uninformative / accuracy above the oracle -> non-calibratable (RCFT)."""

from __future__ import annotations

import numpy as np

from axolotl_calib_plugin.regime import accuracy_preserving_floor, cross_fitted_ts_ece, diagnose


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _world(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, 4))
    p = _softmax(z)
    y = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1).clip(max=3)
    return z, p, y


def test_overconfident_aligned_model_is_calibratable():
    z, p, y = _world()
    over = _softmax(z * 3)  # sharpened: preference collapse
    d = diagnose(over, y)
    assert d.conf_ece > 0.1
    assert d.verdict == "calibratable" and d.advice == "CFT"
    assert d.ts_conf_ece < 0.05 and d.ts_temperature > 2
    assert "Verdict: calibratable" in d.render()


def test_calibrated_model_is_calibratable():
    z, p, y = _world(seed=1)
    d = diagnose(p, y)
    assert d.conf_ece < 0.05 and d.advice == "CFT"


def test_confidence_anticorrelated_with_correctness_is_non_calibratable():
    # the most confident half is right 10% of the time (below chance 1/K = 0.25), the least
    # confident half 90%: no accuracy-preserving recalibration can fix the confident half.
    n = 4000
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 4, size=n)
    confident = np.arange(n) < n // 2
    conf = np.where(confident, 0.95, 0.4)
    right = np.where(confident, rng.random(n) < 0.1, rng.random(n) < 0.9)
    y = np.where(right, pred, (pred + 1 + rng.integers(0, 3, size=n)) % 4)
    q = np.repeat(((1 - conf) / 3)[:, None], 4, axis=1)
    q[np.arange(n), pred] = conf
    d = diagnose(q, y)
    assert d.floor > 0.05
    assert d.verdict == "non-calibratable" and d.advice == "RCFT"


def test_random_guessing_is_calibratable():
    # accuracy at chance with random confidences: T -> large makes it uniform, ECE ~ 0 at the same accuracy
    n = 4000
    rng = np.random.default_rng(5)
    pred = rng.integers(0, 4, size=n)
    y = rng.integers(0, 4, size=n)
    conf = rng.uniform(0.5, 1.0, size=n)
    q = np.repeat(((1 - conf) / 3)[:, None], 4, axis=1)
    q[np.arange(n), pred] = conf
    d = diagnose(q, y)
    assert d.advice == "CFT" and d.ts_conf_ece < 0.05


def test_accuracy_above_oracle_is_non_calibratable():
    z, p, y = _world(seed=4)
    d = diagnose(p, y, acc_star=0.3)
    assert d.acc > 0.32 and d.advice == "RCFT"
    assert any("oracle" in r for r in d.reasons)


def test_floor_counts_bins_below_chance():
    # 4 options, all confidences 0.95 and accuracy 0.1 -> floor = 0.25 - 0.1
    n = 1000
    q = np.full((n, 4), 0.05 / 3)
    q[:, 0] = 0.95
    y = np.where(np.arange(n) < 100, 0, 1)
    assert abs(accuracy_preserving_floor(q, y) - 0.15) < 1e-9
    t, e = cross_fitted_ts_ece(q, y)
    assert t > 0 and 0 <= e <= 1


def test_noise_estimate_matches_calibrated_sampling_noise():
    from axolotl_calib_plugin import metrics
    from axolotl_calib_plugin.regime import ece_noise

    eces, noises = [], []
    for seed in range(10):
        z, p, y = _world(n=1000, seed=100 + seed)
        eces.append(metrics.conf_ece(p, y))
        noises.append(ece_noise(p, y))
    assert 0.6 < np.mean(eces) / np.mean(noises) < 1.5
