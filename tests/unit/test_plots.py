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
    # counts printed for the two filled bins only; the 8 empty bins are shaded and named once, in the legend
    assert sorted(strip_texts) == ["3", "6"]
    (legend,) = fig.legends
    entries = [t.get_text() for t in legend.get_texts()]
    assert entries.count("empty bin (no samples)") == 1
    assert {"accuracy in bin", "gap |confidence - accuracy|", "mean confidence in bin", "perfect calibration"} <= set(entries)
    assert ax.get_legend() is None  # the legend sits below the panels, outside the data
    assert ax.get_title() == (f"Confidence: conf-ECE = {metrics.conf_ece(probs, labels):.4f}, accuracy = "
                              f"{metrics.accuracy(probs, labels):.4f}, n = 9 questions")
    assert ax.get_ylabel() == "accuracy in bin (fraction correct)"
    assert strip.get_xlabel() == "confidence = max option probability" and strip.get_ylabel() == "questions"
    # the accuracy-0 bin (0.6, 0.7] has samples, so it keeps a visible accuracy mark at the bottom
    marks = [c for c in ax.collections if len(c.get_segments()) and np.allclose(c.get_segments()[0][:, 1], 0.008)]
    assert len(marks) == 1 and marks[0].get_segments()[0][0, 0] == pytest.approx(0.605)
    cls = fig.axes[2]
    assert cls.get_title().startswith(f"Class-wise: cw-ECE = {metrics.cw_ece(probs, labels):.4f} (mean of the per-option")
    assert "18 option probabilities of 9 questions" in cls.get_title()  # the strip under it counts 2 x 9
    assert cls.get_ylabel() == "observed frequency (option is the gold one)"
    assert sum(int(t) for t in _texts(fig.axes[3])) == 18


def test_classwise_panel_draws_the_per_option_curves_whose_weighted_ece_is_printed():
    probs, labels, ks = _mixed_k(seed=3)
    ece_k, weights, rb = plots.class_ece(probs, labels, num_options=ks)
    assert (ece_k * weights).sum() == pytest.approx(metrics.cw_ece(probs, labels, num_options=ks), abs=1e-12)
    # option E exists only in the 5-option rows, so it weighs less
    assert weights[4] == pytest.approx((ks == 5).sum() / ks.sum()) and weights[0] == pytest.approx(len(ks) / ks.sum())
    fig = plots.plot_reliability(probs, labels, num_options=ks)
    entries = [t.get_text() for t in fig.legends[0].get_texts()]
    for k, letter in enumerate("ABCDE"):
        assert f"option {letter}: ECE {ece_k[k]:.4f} (weight {weights[k]:.2f})" in entries
    # each drawn curve is that option's (mean predicted probability, observed frequency) per non-empty bin
    lines = [ln for ln in fig.axes[2].lines if ln.get_label().startswith("option ")]
    for k, line in enumerate(lines):
        filled = rb.count[k] > 0
        np.testing.assert_allclose(line.get_xdata(), rb.mean_confidence[k][filled])
        np.testing.assert_allclose(line.get_ydata(), rb.accuracy[k][filled])


@pytest.mark.parametrize("ext, magic", [("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_figures_are_written_in_the_paths_format(tmp_path, ext, magic):
    probs, labels, ks = _mixed_k(seed=2)
    path = tmp_path / f"r.{ext}"
    plots.plot_reliability(probs, labels, str(path), num_options=ks)
    assert path.read_bytes()[: len(magic)] == magic
    with pytest.raises(ValueError, match="png, pdf, svg"):
        plots.plot_reliability(probs, labels, str(tmp_path / "r.jpg"), num_options=ks)


def test_comparison_labels_each_model_with_its_ece_and_keeps_identical_runs_visible(tmp_path):
    probs, labels, ks = _mixed_k(seed=1)
    sharp = probs ** 3
    sharp /= sharp.sum(1, keepdims=True)
    fig = plots.plot_comparison({"aligned": (sharp, labels, ks), "CFT": (probs, labels, ks),
                                 "CFT again": (probs, labels, ks)}, str(tmp_path / "c.png"), title="calib_arc_challenge")
    entries = [t.get_text() for t in fig.legends[0].get_texts()]
    assert entries[0] == "perfect calibration"
    assert entries[1].startswith(f"aligned: conf-ECE {metrics.conf_ece(sharp, labels, num_options=ks):.4f}, acc ")
    assert entries[2].startswith(f"CFT: conf-ECE {metrics.conf_ece(probs, labels, num_options=ks):.4f}")
    pooled = plots.bin_view(sharp, labels, "class", num_options=ks)
    gap = np.nan_to_num(np.abs(pooled.accuracy - pooled.confidence))
    want_pooled = (pooled.count * gap).sum() / pooled.count.sum()
    assert entries[4] == (f"aligned: cw-ECE {metrics.cw_ece(sharp, labels, num_options=ks):.4f}, "
                          f"pooled ECE {want_pooled:.4f}, n = {len(labels)} questions")
    assert entries[1].endswith(f", acc {metrics.accuracy(sharp, labels):.4f}, n = {len(labels)} questions")
    assert "pooled over options" in fig.axes[2].get_title()
    # identical runs: same points, told apart by line style and marker
    lines = [ln for ln in fig.axes[0].lines if ln.get_label().startswith("CFT")]
    assert len(lines) == 2 and lines[0].get_linestyle() != lines[1].get_linestyle()
    np.testing.assert_allclose(lines[0].get_xydata(), lines[1].get_xydata())
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_stats_view_and_bins_figure_hand_case():
    """Bins computed elsewhere (an EM refresh): conf-ECE sum_m n_m/n |acc_m - conf_m| and accuracy by hand,
    one panel per view, the numbers in the panel titles."""
    v = plots.stats_view([0, 2, 1, 0], [np.nan, 0.5, 1.0, np.nan], [np.nan, 0.625, 0.875, np.nan])
    assert v.n == 3 and v.edges.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert v.ece == pytest.approx((2 * 0.125 + 1 * 0.125) / 3, abs=1e-15)
    assert v.model_accuracy == pytest.approx(2 / 3, abs=1e-15)
    held = plots.stats_view([1, 0, 0, 1], [0.0, np.nan, np.nan, 1.0], [0.125, np.nan, np.nan, 0.875])
    fig = plots.plot_bins({"training rows": v, "held-out rows": held}, title="refresh 1")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["training rows: conf-ECE = 0.1250, accuracy = 0.6667, n = 3",
                      "held-out rows: conf-ECE = 0.1250, accuracy = 0.5000, n = 2"]


def _clipped_texts(fig) -> list[str]:
    """What of ``fig`` (drawn as ``save_figure`` draws it: Agg canvas, 120 dpi) leaves the figure: any panel's
    drawn texts (``get_tightbbox``: title, axis labels, the tick labels drawn), each legend, the figure title;
    and any two panel titles that overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    FigureCanvasAgg(fig)
    fig.set_dpi(120)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox

    def outside(bb) -> bool:
        return bb.x0 < box.x0 - 1 or bb.x1 > box.x1 + 1 or bb.y0 < box.y0 - 1 or bb.y1 > box.y1 + 1

    bad = [f"panel {ax.get_title()!r}" for ax in fig.axes if outside(ax.get_tightbbox(renderer))]
    bad += [f"legend {[t.get_text() for t in lg.get_texts()]}" for lg in fig.legends if outside(lg.get_window_extent(renderer))]
    bad += [f"figure text {t.get_text()!r}" for t in fig.get_children()
            if isinstance(t, Text) and t.get_text() and outside(t.get_window_extent(renderer))]  # the suptitle
    titles = [ax.title for ax in fig.axes if ax.get_title()]
    for i, a in enumerate(titles):
        for b in titles[i + 1:]:
            if a.get_window_extent(renderer).overlaps(b.get_window_extent(renderer)):
                bad.append(f"{a.get_text()!r} overlaps {b.get_text()!r}")
    return bad


def test_no_text_is_clipped_at_the_default_size():
    """Every title, subtitle, label, tick and legend entry of the three figures lies inside the figure at the
    size the reports write (the class-wise subtitle with its marker note; a comparison of five runs with a long
    title and a report title naming a long model path)."""
    probs, labels, ks = _mixed_k(seed=3)
    flat = np.where(probs > 0, 1.0, 0.0)
    flat /= flat.sum(1, keepdims=True)
    fig = plots.plot_reliability(probs, labels, title="outputs/smollm2-135m-instruct-cft-lambda10-seed3: "
                                 "calib_in_domain_pooled", num_options=ks)
    assert _clipped_texts(fig) == []
    assert "marker area = share of the option's probabilities in the bin" in fig.axes[2].get_title()
    models = {name: (probs if i % 2 else flat, labels, ks) for i, name in enumerate(("DPO", "TS", "CFT", "RCFT", "SFT"))}
    fig = plots.plot_comparison(models, title="calib_in_domain_pooled on the 89 questions all runs scored (of DPO 99, "
                                "TS 89, CFT 99, RCFT 99, SFT 99)")
    assert _clipped_texts(fig) == []
    v = plots.stats_view([0, 2, 1, 0], [np.nan, 0.5, 1.0, np.nan], [np.nan, 0.625, 0.875, np.nan])
    assert _clipped_texts(plots.plot_bins({"training rows": v, "held-out rows": v}, title="refresh 1")) == []
