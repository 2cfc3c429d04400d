"""Reliability diagrams (``axolotl_calib_plugin.plots``): the numbers drawn are the metrics core's, empty bins
are marked as such (never drawn like accuracy-0 bins), every bin's count is printed, axes are labelled."""

from __future__ import annotations

import numpy as np
import pytest

from axolotl_calib_plugin import metrics

from axolotl_calib_plugin.eval import plots


def _mixed_k(n=300, seed=0):
    rng = np.random.default_rng(seed)
    ks = 3 + rng.integers(0, 3, size=n)  # K = 3..5, zero-padded to 5 as the calib tasks stack them
    probs = np.zeros((n, 5))
    for i, k in enumerate(ks):
        z = rng.normal(scale=2.0, size=k)
        probs[i, :k] = np.exp(z) / np.exp(z).sum()
    labels = np.array([rng.integers(0, k) for k in ks])
    return probs, labels, ks


def test_bin_view_numbers_are_the_metrics_core_numbers():
    probs, labels, ks = _mixed_k()
    conf = plots.bin_view(probs, labels, "conf", num_options=ks)
    assert conf.count.sum() == len(labels)
    assert conf.ece == metrics.conf_ece(probs, labels, num_options=ks)
    assert conf.model_accuracy == metrics.accuracy(probs, labels)
    rb = metrics.reliability_bins(probs, labels, kind="conf", num_options=ks)
    np.testing.assert_array_equal(conf.count, rb.count)
    np.testing.assert_allclose(conf.accuracy, rb.accuracy, equal_nan=True)
    cls = plots.bin_view(probs, labels, "class", num_options=ks)
    assert cls.count.sum() == ks.sum()  # every option probability of every question, padding not counted
    assert cls.ece == pytest.approx(metrics.cw_ece(probs, labels, num_options=ks), abs=1e-15)
    hits = np.nansum(cls.accuracy * cls.count)
    assert hits == pytest.approx(len(labels))  # each question's gold option is hit exactly once


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_empty_and_zero_accuracy_bins_are_told_apart_and_counts_are_printed(tmp_path):
    # 6 questions at confidence 0.95 (right), 3 at 0.65 all wrong (accuracy 0); bins below 0.6 are empty
    probs = np.array([[0.95, 0.05]] * 6 + [[0.65, 0.35]] * 3)
    labels = np.array([0] * 6 + [1] * 3)
    path = tmp_path / "r.png"
    fig = plots.plot_reliability(probs, labels, str(path), title="toy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    ax, strip = fig.axes[0], fig.axes[1]  # confidence panel and its count strip
    strip_texts = _texts(strip)
    assert strip_texts.count("empty") == 8 and "6" in strip_texts and "3" in strip_texts
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "empty bin (no samples)" in legend and "accuracy in bin" in legend and "gap |confidence - accuracy|" in legend
    assert any(t.startswith(f"conf-ECE = {metrics.conf_ece(probs, labels):.4f}") for t in _texts(ax))
    assert ax.get_ylabel() == "accuracy (fraction correct)"
    assert strip.get_xlabel() == "confidence = max option probability" and strip.get_ylabel() == "questions"
    # the accuracy-0 bin (0.6, 0.7] has samples, so it keeps a visible accuracy mark at the bottom
    marks = [c for c in ax.collections if len(c.get_segments()) and np.allclose(c.get_segments()[0][:, 1], 0.008)]
    assert len(marks) == 1 and marks[0].get_segments()[0][0, 0] == pytest.approx(0.605)
    assert "Class-wise" in fig.axes[2].get_title() and "cw-ECE" in " ".join(_texts(fig.axes[2]))


def test_comparison_labels_each_model_with_its_ece(tmp_path):
    probs, labels, ks = _mixed_k(seed=1)
    sharp = probs ** 3
    sharp /= sharp.sum(1, keepdims=True)
    fig = plots.plot_comparison({"aligned": (sharp, labels, ks), "CFT": (probs, labels, ks)}, str(tmp_path / "c.png"),
                                title="calib_arc_challenge")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"aligned: conf-ECE {metrics.conf_ece(sharp, labels, num_options=ks):.4f}, acc " in legend[1]
    assert legend[2].startswith(f"CFT: conf-ECE {metrics.conf_ece(probs, labels, num_options=ks):.4f}")
    cw_legend = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
    assert cw_legend[1].startswith(f"aligned: cw-ECE {metrics.cw_ece(sharp, labels, num_options=ks):.4f}")
    assert (tmp_path / "c.png").stat().st_size > 10_000
