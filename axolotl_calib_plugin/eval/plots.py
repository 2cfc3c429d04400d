"""Reliability diagrams: one figure per model (confidence + class-wise panels) and a comparison of models.

Every number drawn comes from :func:`axolotl_calib_plugin.metrics.reliability_bins` (the one metrics
core), so the ECE printed on a diagram is exactly the ``conf_ece`` / ``cw_ece`` of the lm-eval tasks, and
what is drawn is what is printed:

* confidence panel: per bin the accuracy (bar), the mean confidence (black tick) and the gap (hatched);
  its title carries conf-ECE, accuracy and the number of questions;
* class-wise panel: one reliability curve per option (observed frequency that the option is the gold one
  vs its mean predicted probability, marker area = share of that option's probabilities in the bin), each
  labelled with its own ECE_k; the title's cw-ECE is their weighted mean (the weights are printed);
* under each panel, the number of samples per bin (questions, or option probabilities); empty bins are
  shaded once and named once in the legend, never drawn like accuracy-0 bins;
* legends sit outside the data (below the panels). The file format follows the path's extension
  (``.png``, ``.pdf``, ``.svg``).

Comparisons of several models draw the class-wise panel *pooled over options* (every (question, option)
pair one sample) and say so; its printed "pooled ECE" is the ECE of exactly that drawing, with each model's
cw-ECE beside it. Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot state,
safe in training processes and threads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .. import metrics

__all__ = ["BinView", "bin_view", "plot_bins", "plot_comparison", "plot_reliability", "save_figure", "stats_view"]

_ACC = "#3b75af"          # accuracy bars
_GAP = "#d62728"          # gap between accuracy and confidence
_EMPTY = "#ececec"        # empty-bin shading
_COUNT = "#7f7f7f"        # sample-count bars
_STYLE = {"font.size": 10.5, "axes.titlesize": 11.5, "axes.labelsize": 10.5, "legend.fontsize": 9,
          "xtick.labelsize": 9.5, "ytick.labelsize": 9.5, "figure.titlesize": 13, "hatch.linewidth": 0.8}
_TITLES = {"conf": "Confidence (max option probability)", "class": "Class-wise (every option's probability)"}
_XLABELS = {"conf": "confidence = max option probability", "class": "predicted probability of an option"}
_COUNT_LABELS = {"conf": "questions", "class": "option probs"}


@dataclass(frozen=True)
class BinView:
    """What one diagram shows: per-bin ``count``, ``confidence`` and ``accuracy`` (NaN when empty),
    the bin ``edges``, ``n`` samples and the matching ECE (conf-ECE or cw-ECE) and accuracy."""

    kind: str
    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    n: int
    ece: float
    model_accuracy: float


def bin_view(probs, labels, kind: str = "conf", n_bins: int = metrics.DEFAULT_N_BINS,
             num_options: Sequence[int] | None = None) -> BinView:
    """Per-bin statistics of one diagram, from :func:`metrics.reliability_bins`.

    ``probs`` (n, Kmax), rows zero-padded past each row's own K (``num_options``, optional), as the lm-eval
    tasks stack them. For ``kind="class"`` the K classes are pooled per bin (counts add, confidence and
    accuracy are count-weighted means); the zero-padded entries of short rows are not counted as samples.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    rb = metrics.reliability_bins(p, y, n_bins=n_bins, kind=kind, num_options=num_options)  # padding not counted
    acc = metrics.accuracy(p, y)
    if kind == "conf":
        return BinView(kind, rb.edges, rb.count.astype(np.int64), rb.mean_confidence, rb.accuracy, rb.n, rb.ece, acc)
    count_k = rb.count.astype(np.float64)
    count = count_k.sum(axis=0)
    conf_sum = (np.nan_to_num(rb.mean_confidence) * count_k).sum(axis=0)
    hit_sum = (np.nan_to_num(rb.accuracy) * count_k).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        accs = np.where(count > 0, hit_sum / np.maximum(count, 1), np.nan)
    return BinView(kind, rb.edges, np.rint(count).astype(np.int64), conf, accs, rb.n, rb.ece, acc)


PLOT_FORMATS = ("png", "pdf", "svg")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
_LINESTYLES = ("-", "--", ":", "-.")
_LETTERS = "ABCDEFGHIJ"


def _shade_empty(axes, view: BinView) -> bool:
    """Shade the empty bins of ``view`` on every axis; True when there are any."""
    empty = view.count == 0
    for a, b in zip(view.edges[:-1][empty], view.edges[1:][empty]):
        for axis in axes:
            axis.axvspan(a, b, facecolor=_EMPTY, edgecolor="#b5b5b5", hatch="..", lw=0, zorder=0)
    return bool(empty.any())


def _empty_patch():
    from matplotlib.patches import Patch

    return Patch(facecolor=_EMPTY, edgecolor="#b5b5b5", hatch="..", label="empty bin (no samples)")


def _count_strip(axc, edges, count, ylabel: str, xlabel: str) -> None:
    """Samples per bin as bars, each non-empty bin's count printed above its bar."""
    from matplotlib.ticker import MaxNLocator

    lo, hi = edges[:-1], edges[1:]
    centers, width = (lo + hi) / 2, (hi - lo)
    filled = count > 0
    axc.bar(centers[filled], count[filled], width=0.9 * width[filled], color=_COUNT, zorder=2)
    top = max(int(count.max()), 1)
    for c, k in zip(centers[filled], count[filled]):
        axc.text(c, k + 0.04 * top, str(int(k)), ha="center", va="bottom", fontsize=8.5, zorder=3)
    axc.set_ylim(0, top * 1.35)
    axc.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    axc.set_xlim(0, 1)
    axc.set_xticks(edges)
    axc.set_xticklabels([f"{e:.1f}" for e in edges])
    axc.set_ylabel(ylabel)
    axc.set_xlabel(xlabel)


def _frame(ax, edges, ylabel: str, title: str) -> None:
    ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1.2, zorder=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(edges)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.25)
    ax.tick_params(labelbottom=False)


def _draw_conf(ax, axc, view: BinView) -> list:
    """The confidence panel (``ax``) and its question-count strip (``axc``); returns the legend handles."""
    edges = view.edges
    lo, hi = edges[:-1], edges[1:]
    centers, width = (lo + hi) / 2, (hi - lo)
    filled = view.count > 0
    has_empty = _shade_empty((ax, axc), view)
    acc = np.where(filled, view.accuracy, 0.0)
    conf = np.where(filled, view.confidence, 0.0)
    ax.bar(centers[filled], acc[filled], width=0.9 * width[filled], color=_ACC, edgecolor="white", zorder=2,
           label="accuracy in bin")
    zero = filled & (acc == 0)
    if zero.any():  # accuracy 0 with samples: a flat mark, so the bar is visibly there
        ax.hlines(np.full(zero.sum(), 0.008), lo[zero] + 0.05 * width[zero], hi[zero] - 0.05 * width[zero],
                  colors=_ACC, lw=4, zorder=3)
    bottom, gap = np.minimum(acc, conf), np.abs(conf - acc)
    ax.bar(centers[filled], gap[filled], bottom=bottom[filled], width=0.9 * width[filled], facecolor=(1, 1, 1, 0),
           edgecolor=_GAP, hatch="///", lw=1.0, zorder=3, label="gap |confidence - accuracy|")
    ax.hlines(conf[filled], lo[filled] + 0.05 * width[filled], hi[filled] - 0.05 * width[filled], colors="black",
              lw=2, zorder=4, label="mean confidence in bin")
    _frame(ax, edges, "accuracy in bin (fraction correct)",
           f"Confidence: conf-ECE = {view.ece:.4f}, accuracy = {view.model_accuracy:.4f}, n = {view.n} questions")
    _count_strip(axc, edges, view.count, "questions", _XLABELS["conf"])
    handles, labels = ax.get_legend_handles_labels()
    order = [labels.index(x) for x in ("accuracy in bin", "mean confidence in bin", "gap |confidence - accuracy|",
                                       "perfect calibration") if x in labels]
    return [handles[i] for i in order] + ([_empty_patch()] if has_empty else [])


def class_ece(probs, labels, n_bins: int = metrics.DEFAULT_N_BINS, num_options: Sequence[int] | None = None):
    """Per-option ECE_k (K,), the weights n_k / N (K,) with which they average to cw-ECE, and the class-wise
    ``ReliabilityBins``. ``(weights * ece_k).sum()`` equals :func:`metrics.cw_ece` (the same sums)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    rb = metrics.reliability_bins(p, y, n_bins=n_bins, kind="class", num_options=num_options)
    gap = np.nan_to_num(np.abs(rb.accuracy - rb.mean_confidence), nan=0.0)
    rows = np.maximum(rb.class_rows, 1).astype(np.float64)
    ece_k = (rb.count * gap).sum(axis=1) / rows
    weights = rb.class_rows / max(rb.class_rows.sum(), 1)
    return ece_k, weights, rb


def _draw_classwise(ax, axc, probs, labels, n_bins, num_options) -> list:
    """Per-option reliability curves (``ax``) and the option-probability counts per bin (``axc``)."""
    import matplotlib

    ece_k, weights, rb = class_ece(probs, labels, n_bins, num_options)
    colors = matplotlib.colormaps["tab10"].colors
    edges = rb.edges
    for k in range(rb.count.shape[0]):
        filled = rb.count[k] > 0
        if not filled.any():
            continue
        share = rb.count[k] / max(rb.class_rows[k], 1)
        ax.plot(rb.mean_confidence[k][filled], rb.accuracy[k][filled], color=colors[k % 10],
                ls=_LINESTYLES[k % 4], lw=1.4, zorder=3, marker=_MARKERS[k % 10], ms=0,
                label=f"option {_LETTERS[k] if k < 10 else k}: ECE {ece_k[k]:.4f} (weight {weights[k]:.2f})")
        ax.scatter(rb.mean_confidence[k][filled], rb.accuracy[k][filled], s=20 + 300 * share[filled],
                   color=colors[k % 10], marker=_MARKERS[k % 10], edgecolor="white", lw=0.7, zorder=4, alpha=0.9)
    pooled = rb.count.sum(axis=0)
    view = BinView("class", edges, pooled, np.full(len(pooled), np.nan), np.full(len(pooled), np.nan), rb.n,
                   rb.ece, float("nan"))
    has_empty = _shade_empty((ax, axc), view)
    same_k = bool(np.all(rb.class_rows == rb.class_rows[0]))
    how = "mean of the per-option ECEs" if same_k else "per-option ECEs weighted by their rows"
    _frame(ax, edges, "observed frequency (option is the gold one)",
           f"Class-wise: cw-ECE = {rb.ece:.4f} ({how})\n{int(pooled.sum())} option probabilities of {rb.n} "
           "questions\nmarker area = share of the option's probabilities in the bin")
    _count_strip(axc, edges, pooled, "option probs", _XLABELS["class"])
    handles, _ = ax.get_legend_handles_labels()
    return handles + ([_empty_patch()] if has_empty else [])


def _suptitle(title: str, n_bins: int, width: int = 110) -> str:
    """The figure's title with its binning, wrapped so that a long one (task, run names, counts) stays inside
    the 13.5-inch figure instead of running past its edges."""
    import textwrap

    text = f"{title}  ({n_bins} equal-width bins)" if title else f"Reliability ({n_bins} equal-width bins)"
    return textwrap.fill(text, width)


def _figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def save_figure(fig, path: str, dpi: int = 120) -> str:
    """Write ``fig`` in the format of ``path``'s extension (png, pdf or svg; Agg canvas), creating the folder."""
    import matplotlib

    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in PLOT_FORMATS:
        raise ValueError(f"{path}: figures are written as {', '.join(PLOT_FORMATS)} (by the file extension), got {ext!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with matplotlib.rc_context(_STYLE):
        fig.savefig(path, dpi=dpi)
    return path


def plot_reliability(probs, labels, path: str | None = None, *, title: str = "",
                     n_bins: int = metrics.DEFAULT_N_BINS, num_options: Sequence[int] | None = None):
    """One model: confidence and class-wise reliability diagrams side by side, counts underneath, legends below.

    ``probs`` (n, K) option probabilities (rows zero-padded to Kmax for mixed K, with ``num_options``),
    ``labels`` (n,) gold indices. Saves the figure when ``path`` is given; returns the ``Figure``.
    """
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        fig = _figure((13.5, 7.4))
        gs = fig.add_gridspec(2, 2, height_ratios=[3.3, 1.0])
        ax = fig.add_subplot(gs[0, 0])
        axc = fig.add_subplot(gs[1, 0], sharex=ax)
        conf_handles = _draw_conf(ax, axc, bin_view(probs, labels, "conf", n_bins, num_options))
        ax2 = fig.add_subplot(gs[0, 1])
        axc2 = fig.add_subplot(gs[1, 1], sharex=ax2)
        cls_handles = _draw_classwise(ax2, axc2, probs, labels, n_bins, num_options)
        seen, handles = set(), []
        for h in conf_handles + cls_handles:
            if h.get_label() not in seen:
                seen.add(h.get_label())
                handles.append(h)
        fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), framealpha=0.92)
        fig.suptitle(_suptitle(title, n_bins))
    if path:
        save_figure(fig, path)
    return fig


def stats_view(count, accuracy, confidence) -> BinView:
    """The confidence view of bin statistics already binned elsewhere (the EM refresh's per-bin ``count``,
    ``accuracy`` and mean ``confidence``, NaN where empty); conf-ECE and accuracy are their count-weighted sums."""
    count = np.asarray(count, dtype=np.int64)
    acc = np.asarray(accuracy, dtype=np.float64)
    conf = np.asarray(confidence, dtype=np.float64)
    n = int(count.sum())
    w = count / max(n, 1)
    return BinView("conf", metrics.bin_edges(len(count)).numpy(), count, conf, acc, n,
                   float((w * np.nan_to_num(np.abs(acc - conf))).sum()), float((w * np.nan_to_num(acc)).sum()))


def plot_bins(views: Mapping[str, BinView], path: str | None = None, *, title: str = ""):
    """Confidence reliability panels side by side, one per named view (e.g. the training rows and the held-out
    rows of one EM refresh), counts underneath, one legend below. Saves when ``path`` is given; returns the figure."""
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        fig = _figure((6.8 * len(views), 7.0))
        gs = fig.add_gridspec(2, len(views), height_ratios=[3.3, 1.0])
        seen, handles = set(), []
        for i, (name, view) in enumerate(views.items()):
            ax = fig.add_subplot(gs[0, i])
            axc = fig.add_subplot(gs[1, i], sharex=ax)
            for h in _draw_conf(ax, axc, view):
                if h.get_label() not in seen:
                    seen.add(h.get_label())
                    handles.append(h)
            ax.set_title(f"{name}: conf-ECE = {view.ece:.4f}, accuracy = {view.model_accuracy:.4f}, n = {view.n}")
        fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), framealpha=0.92)
        if title:
            fig.suptitle(title)
    if path:
        save_figure(fig, path)
    return fig


def _pooled_ece(view: BinView) -> float:
    """ECE of the pooled class-wise drawing: sum_m (count_m / total) |accuracy_m - confidence_m|."""
    total = max(int(view.count.sum()), 1)
    gap = np.nan_to_num(np.abs(view.accuracy - view.confidence), nan=0.0)
    return float((view.count * gap).sum() / total)


def plot_comparison(models: Mapping[str, tuple], path: str | None = None, *, title: str = "",
                    n_bins: int = metrics.DEFAULT_N_BINS):
    """Several models on one pair of panels (confidence; class-wise pooled over options, labelled as such): each
    model's per-bin (mean confidence, accuracy) curve with its own marker and line style (identical runs stay
    visible), marker area by the share of samples in the bin, and the share of samples per bin underneath.
    ``models``: ``{name: (probs, labels)}`` or ``{name: (probs, labels, num_options)}``, in legend order."""
    import matplotlib

    colors = matplotlib.colormaps["tab10"].colors
    with matplotlib.rc_context(_STYLE):
        fig = _figure((13.5, 7.4))
        gs = fig.add_gridspec(2, 2, height_ratios=[3.3, 1.0])
        n_models = max(len(models), 1)
        legends = []
        for col, kind in enumerate(("conf", "class")):
            ax = fig.add_subplot(gs[0, col])
            axc = fig.add_subplot(gs[1, col], sharex=ax)
            ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1.2, label="perfect calibration")
            edges = None
            for j, (name, data) in enumerate(models.items()):
                probs, labels = data[0], data[1]
                ks = data[2] if len(data) > 2 else None
                view = bin_view(probs, labels, kind, n_bins, ks)
                edges = view.edges
                filled = view.count > 0
                share = view.count / max(view.count.sum(), 1)
                color = colors[j % len(colors)]
                if kind == "conf":
                    label = f"{name}: conf-ECE {view.ece:.4f}, acc {view.model_accuracy:.4f}, n = {view.n} questions"
                else:
                    label = f"{name}: cw-ECE {view.ece:.4f}, pooled ECE {_pooled_ece(view):.4f}, n = {view.n} questions"
                ax.plot(view.confidence[filled], view.accuracy[filled], color=color, lw=1.6, zorder=3 + j,
                        ls=_LINESTYLES[j % 4], label=label)
                ax.scatter(view.confidence[filled], view.accuracy[filled], s=25 + 500 * share[filled], color=color,
                           marker=_MARKERS[j % len(_MARKERS)], facecolors="none" if j % 2 else color,
                           lw=1.2, zorder=4 + j, alpha=0.9)
                width = (edges[1:] - edges[:-1]) / (n_models + 1)
                left = edges[:-1] + width * (j + 0.5)
                axc.bar(left + width / 2, 100 * share, width=width, color=color, zorder=2)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_ylabel("accuracy in bin (fraction correct)" if kind == "conf"
                          else "observed frequency (option is the gold one)")
            ax.set_title(_TITLES[kind] if kind == "conf" else
                         "Class-wise, pooled over options (the drawing's ECE is the pooled ECE)")
            ax.grid(alpha=0.25)
            ax.tick_params(labelbottom=False)
            if edges is not None:
                ax.set_xticks(edges)
                axc.set_xticks(edges)
                axc.set_xticklabels([f"{e:.1f}" for e in edges])
            axc.set_xlim(0, 1)
            axc.set_ylabel(f"% of {_COUNT_LABELS[kind]}")
            axc.set_xlabel(_XLABELS[kind] + " (marker area = share of samples in the bin)")
            axc.grid(axis="y", alpha=0.25)
            handles, labels = ax.get_legend_handles_labels()
            legends.append((handles[1:], labels[1:]))  # the diagonal is named once, below
        (h_conf, l_conf), (h_cls, l_cls) = legends
        fig.legend(handles=[ax.lines[0]] + h_conf + h_cls, labels=["perfect calibration"] + l_conf + l_cls,
                   loc="outside lower center", ncols=2, framealpha=0.92)
        fig.suptitle(_suptitle(title, n_bins))
    if path:
        save_figure(fig, path)
    return fig
