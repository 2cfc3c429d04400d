"""``calib_label_smoothing``: the paper's label-smoothing baseline as a plugin key, validated and handed to
the training arguments (its real training step: ``tests/e2e/test_label_smoothing_e2e.py``)."""

from __future__ import annotations

import pytest


def test_label_smoothing_is_validated_and_reaches_training_args(tiny_cfg, validate_cfg):
    from axolotl_calib_plugin.train.plugin import CalibrationPlugin

    with pytest.raises(Exception, match="calib_label_smoothing"):
        validate_cfg(tiny_cfg(calib_label_smoothing=1.0))
    cfg = validate_cfg(tiny_cfg(calib_label_smoothing=0.1, calib_lambda=0.0))
    assert CalibrationPlugin().get_training_args(cfg) == {"label_smoothing_factor": 0.1}
    assert CalibrationPlugin().get_training_args(validate_cfg(tiny_cfg())) is None
