"""Temperature scaling: recovers a known T, keeps accuracy, T=1 on calibrated data."""

from __future__ import annotations

import numpy as np
import pytest

from axolotl_calib_plugin import metrics
from axolotl_calib_plugin.temperature import apply_temperature, fit_temperature, nll, probs_to_logits


def _sample(logits, rng):
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return (rng.random(len(p))[:, None] > np.cumsum(p, 1)).sum(1).clip(max=p.shape[1] - 1)


@pytest.mark.parametrize("t_true", [0.5, 2.0, 3.0])
def test_recovers_known_temperature(t_true):
    rng = np.random.default_rng(0)
    z = rng.normal(scale=2.0, size=(20000, 4))
    y = _sample(z, rng)  # labels drawn from softmax(z): the calibrated logits are z
    t = fit_temperature(z * t_true, y)  # the model reports logits scaled by t_true
    assert abs(t - t_true) / t_true < 0.05


def test_temperature_one_on_calibrated_data():
    rng = np.random.default_rng(1)
    z = rng.normal(scale=1.5, size=(20000, 4))
    y = _sample(z, rng)
    assert abs(fit_temperature(z, y) - 1.0) < 0.05


def test_accuracy_unchanged_and_ece_reduced():
    rng = np.random.default_rng(2)
    z = rng.normal(scale=1.5, size=(5000, 4))
    y = _sample(z, rng)
    over = z * 3.0  # over-confident model
    t = fit_temperature(over, y)
    p_before = apply_temperature(over, 1.0)
    p_after = apply_temperature(over, t)
    assert t > 2.0
    assert metrics.accuracy(p_before, y) == metrics.accuracy(p_after, y)
    assert np.array_equal(p_before.argmax(1), p_after.argmax(1))
    assert metrics.conf_ece(p_after, y) < metrics.conf_ece(p_before, y) / 2
    assert nll(over, y, t) < nll(over, y, 1.0)


def test_log_probs_work_like_logits():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(3000, 4)) * 2
    y = _sample(z / 2, rng)
    p = apply_temperature(z, 1.0)
    assert abs(fit_temperature(probs_to_logits(p), y) - fit_temperature(z, y)) < 1e-4


def test_gradient_flows_not_stuck_at_init():
    # the reference code's bug left T at its init of 1.5; a real fit must move
    rng = np.random.default_rng(4)
    z = rng.normal(size=(2000, 4))
    y = _sample(z, rng)
    assert abs(fit_temperature(z, y, init=1.5) - 1.5) > 0.2


def test_bad_inputs():
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((3,)), [0, 1, 2])
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((3, 4)), [0, 1, 7])
    with pytest.raises(ValueError):
        apply_temperature(np.zeros((3, 4)), 0.0)
