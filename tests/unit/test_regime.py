"""The regime rule (our heuristic): a model that has fitted its training questions (training accuracy above
held-out accuracy beyond noise) or is more accurate than the oracle is non-calibratable (RCFT); an
over-confident model whose training and held-out accuracy agree is calibratable (CFT)."""

from __future__ import annotations

import numpy as np
from scipy.special import softmax

from axolotl_calib_plugin import metrics
from axolotl_calib_plugin.eval.regime import accuracy_gap_z, cross_fitted_ts_ece, diagnose, ece_noise


def _world(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, 4))
    p = softmax(z, axis=1)
    y = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1).clip(max=3)
    return z, p, y


def _confident(pred, conf, k=4):
    q = np.repeat(((1 - conf) / (k - 1))[:, None], k, axis=1)
    q[np.arange(len(pred)), pred] = conf
    return q


def test_constant_remap_reaches_zero_ece_at_unchanged_accuracy():
    """Why an 'accuracy-preserving floor' (bins with accuracy below 1/K) is not a lower bound:
    mapping every confidence to the overall accuracy keeps every argmax and gives conf-ECE exactly 0."""
    rng = np.random.default_rng(3)
    n = 4000
    pred = rng.integers(0, 4, size=n)
    confident = np.arange(n) < n // 2
    conf = np.where(confident, 0.95, 0.4)  # the confident half is right 10% of the time (below 1/K)
    right = np.where(confident, rng.random(n) < 0.1, rng.random(n) < 0.9)
    y = np.where(right, pred, (pred + 1 + rng.integers(0, 3, size=n)) % 4)
    q = _confident(pred, conf)
    acc = metrics.accuracy(q, y)
    assert metrics.conf_ece(q, y) > 0.4
    remap = _confident(pred, np.full(n, acc))  # every row at the overall accuracy, same argmax
    assert metrics.accuracy(remap, y) == acc
    assert metrics.conf_ece(remap, y) < 1e-12
    # so the verdict does not rest on such a floor: same accuracy on its training data -> calibratable
    d = diagnose(q, y, train_probs=q, train_labels=y)
    assert d.verdict == "calibratable" and not hasattr(d, "floor")


def test_overconfident_aligned_model_is_calibratable():
    z, p, y = _world()
    over = softmax(z * 3, axis=1)  # sharpened: preference collapse
    z2, p2, y2 = _world(seed=9)
    d = diagnose(over, y, train_probs=softmax(z2 * 3, axis=1), train_labels=y2)  # same accuracy on its training data
    assert d.conf_ece > 0.1 and abs(d.gap) < 0.03
    assert d.verdict == "calibratable" and d.advice == "CFT"
    assert d.ts_conf_ece < 0.05 and d.ts_temperature > 2
    assert "Verdict: calibratable" in d.render() and "accuracy gap" in d.render()


def test_memorised_training_set_is_non_calibratable():
    """98% right (and confident) on the questions it was trained on, 60% on new ones: the E-step's bin
    accuracies would say 'be confident', so calibration cannot be reached without giving up the fit."""
    rng = np.random.default_rng(7)
    n = 3000
    pred = rng.integers(0, 4, size=n)
    q = _confident(pred, np.full(n, 0.97))
    y_train = np.where(rng.random(n) < 0.98, pred, (pred + 1) % 4)
    y_held = np.where(rng.random(n) < 0.60, pred, (pred + 1) % 4)
    d = diagnose(q, y_held, train_probs=q, train_labels=y_train)
    assert d.train_acc > 0.97 and d.acc < 0.63 and d.gap_z > 10
    assert d.verdict == "non-calibratable" and d.advice == "RCFT"
    assert "fitted those questions" in d.reasons[1]
    # the same model without training-set predictions: the held-out temperature test passes (the
    # confidence is uniformly too high), so the weaker verdict is calibratable -- and it says so
    weak = diagnose(q, y_held)
    assert weak.verdict == "calibratable" and any("cannot rule out memorisation" in r for r in weak.reasons)


def test_accuracy_gap_within_sampling_noise_is_not_flagged():
    rng = np.random.default_rng(11)
    pred = rng.integers(0, 4, size=60)
    q = _confident(pred, np.full(60, 0.9))
    y_train = np.where(np.arange(60) < 42, pred, (pred + 1) % 4)  # 0.70
    y_held = np.where(np.arange(60) < 38, pred, (pred + 1) % 4)  # 0.633: gap 0.067 > gap_tol, z ~ 0.8
    d = diagnose(q, y_held, train_probs=q, train_labels=y_train)
    assert d.gap > 0.05 and d.gap_z < 2.33 and d.verdict == "calibratable"
    assert abs(accuracy_gap_z(0.7, 60, 38 / 60, 60) - d.gap_z) < 1e-12


def test_without_training_data_a_failed_temperature_test_decides():
    # K=2: the most confident half (0.99) is a coin flip, the unsure half (0.6) always right. One temperature
    # cannot reorder them: the best it can do is flatten everything to 0.5 (conf-ECE |0.75 - 0.5| = 0.25),
    # not below half of the raw conf-ECE (0.445)
    n = 4000
    pred = np.zeros(n, dtype=int)
    confident = np.arange(n) < n // 2
    y = np.where(confident, np.arange(n) % 2, 0)
    q = _confident(pred, np.where(confident, 0.99, 0.6), k=2)
    d = diagnose(q, y)
    assert abs(d.conf_ece - 0.445) < 1e-9 and d.ts_conf_ece > d.ts_threshold
    assert d.verdict == "non-calibratable"
    assert any("--train-data" in r for r in d.reasons)


def test_accuracy_above_oracle_is_non_calibratable():
    z, p, y = _world(seed=4)
    d = diagnose(p, y, acc_star=0.3)
    assert d.acc > 0.32 and d.advice == "RCFT"
    assert any("oracle" in r for r in d.reasons)


def test_cross_fitted_temperature_on_a_tiny_set():
    q = _confident(np.zeros(3, dtype=int), np.full(3, 0.9))
    t, e = cross_fitted_ts_ece(q, np.array([0, 1, 0]))
    assert t > 0 and 0 <= e <= 1


def test_noise_estimate_matches_calibrated_sampling_noise():
    eces, noises = [], []
    for seed in range(10):
        z, p, y = _world(n=1000, seed=100 + seed)
        eces.append(metrics.conf_ece(p, y))
        noises.append(ece_noise(p, y))
    assert 0.6 < np.mean(eces) / np.mean(noises) < 1.5


def test_a_model_at_chance_gets_no_advice_and_its_large_temperature_is_explained():
    """A model that prefers option A slightly on every question (99 questions, golds 24/25/25/25): accuracy 0.2424
    is chance, A takes 100 % of the answers, and the fitted T is large (the probabilities it leaves are near 1/4).
    The rule alone says calibratable -> CFT; the diagnosis must not print that as advice, and must say what the
    large T means. A model that answers (same n) keeps its plain verdict line."""
    import json

    rng = np.random.default_rng(0)
    y = np.array([0] * 24 + [1] * 25 + [2] * 25 + [3] * 25)
    z = rng.normal(0, 0.05, (99, 4))
    z[:, 0] += 0.3
    d = diagnose(softmax(z, axis=1), y)
    assert d.chance["near_chance"] and d.chance["one_letter"] and d.chance["predicted"] == [99, 0, 0, 0]
    assert d.ts_temperature > 10 and d.flat and abs(d.ts_mean_conf - 0.25) < 0.01
    text = d.render()
    assert "held-out: WARNING: accuracy 0.2424 is within noise of chance 0.2500 (1/K)" in text
    assert "predicted letters: A 99 (100%), B 0 (0%), C 0 (0%), D 0 (0%)" in text
    assert "scaled probabilities are near-uniform (mean confidence 0.25" in text and "flattening every answer" in text
    assert "Verdict: none to act on. The model is not answering these questions" in text
    assert "CFT advised" not in text and "(The rule alone would give: calibratable -> CFT.)" in text
    assert json.loads(json.dumps(d.as_dict()))["caveat"] == d.caveat  # --json carries it
    good = diagnose(_confident(y, np.full(99, 0.7)), y)
    assert good.caveat is None and not good.chance["warnings"] and "Verdict: calibratable -> CFT advised" in good.render()
    # zero-padded mixed option counts (K = 2 and 4): chance is the mean of 1/K, padding stays at probability 0
    mixed = diagnose(np.array([[0.9, 0.1, 0, 0], [0.1, 0.7, 0.1, 0.1]] * 10), np.array([0, 1] * 10))
    assert mixed.chance["chance"] == (1 / 2 + 1 / 4) / 2 and mixed.chance["mixed_k"]


def test_zero_padding_does_not_change_the_fitted_temperature():
    """Rows of 3 options zero-padded to 5 (as mixed option counts are stacked) give the temperature and scaled
    conf-ECE of the unpadded rows, also for a flat model whose T is large (there the padded options used to
    take probability once divided by T)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    for scale in (1.0, 4.0):
        z = rng.normal(0, scale, (400, 3))
        z[np.arange(400), y] += 0.3 * scale
        p = softmax(z, axis=1)
        padded = np.hstack([p, np.zeros((400, 2))])
        t, ece = cross_fitted_ts_ece(p, y)
        t_pad, ece_pad = cross_fitted_ts_ece(padded, y)
        assert abs(t_pad - t) < 1e-6 * t and abs(ece_pad - ece) < 1e-9, (scale, t, t_pad)
