"""Reliability diagrams: one figure per model (confidence + class-wise panels) and a comparison of models.

Every number drawn comes from :func:`axolotl_calib_plugin.metrics.reliability_bins` (the one metrics
core), so the ECE printed on a diagram is exactly the ``conf_ece`` / ``cw_ece`` of the lm-eval tasks.
What a reader needs to see (the paper's Fig. 5 style, with the bin density made explicit):

* per bin, the accuracy (bar), the mean confidence (black tick) and the gap between them (hatched);
* the number of samples in each bin (strip under the diagram, numbers printed);
* empty bins (no sample: nothing to report) shaded grey and labelled, so they are never mistaken
  for bins whose accuracy is 0 (those keep their count, their gap and a flat accuracy mark).

Class-wise panels pool the K classes per bin (each question contributes its K option probabilities,
each scored against ``1[label == k]``); their title carries the cw-ECE, which averages the per-class
ECEs (:func:`axolotl_calib_plugin.metrics.cw_ece`). Figures are built on ``matplotlib.figure.Figure``
with the Agg canvas: no pyplot state, safe in training processes and threads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .. import metrics

__all__ = ["BinView", "bin_view", "plot_comparison", "plot_reliability", "save_figure"]

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


def _draw_bins(ax, axc, view: BinView) -> None:
    """One reliability panel (``ax``) and its sample-count strip (``axc``)."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    edges = view.edges
    lo, hi = edges[:-1], edges[1:]
    centers, width = (lo + hi) / 2, (hi - lo)
    filled = view.count > 0
    empty = ~filled
    for a, b in zip(lo[empty], hi[empty]):
        for axis in (ax, axc):
            axis.axvspan(a, b, facecolor=_EMPTY, edgecolor="#b5b5b5", hatch="..", lw=0, zorder=0)
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
    ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1.2, zorder=1, label="perfect calibration")
    handles, labels = ax.get_legend_handles_labels()
    order = [labels.index(x) for x in ("accuracy in bin", "mean confidence in bin", "gap |confidence - accuracy|",
                                       "perfect calibration") if x in labels]
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if empty.any():
        handles.append(Patch(facecolor=_EMPTY, edgecolor="#b5b5b5", hatch="..", label="empty bin (no samples)"))
        labels.append("empty bin (no samples)")
    ax.legend(handles, labels, loc="upper left", framealpha=0.92)
    ece_name = "conf-ECE" if view.kind == "conf" else "cw-ECE"
    ax.text(0.98, 0.03, f"{ece_name} = {view.ece:.4f}\naccuracy = {view.model_accuracy:.4f}\nn = {view.n} questions",
            transform=ax.transAxes, ha="right", va="bottom", zorder=5,
            bbox={"boxstyle": "round,pad=0.4", "facecolor": "white", "edgecolor": "0.6", "alpha": 0.95})
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(edges)
    ax.set_ylabel("accuracy (fraction correct)")
    ax.set_title(_TITLES[view.kind])
    ax.grid(axis="y", alpha=0.25)
    ax.tick_params(labelbottom=False)

    axc.bar(centers[filled], view.count[filled], width=0.9 * width[filled], color=_COUNT, zorder=2)
    top = max(int(view.count.max()), 1)
    for c, k in zip(centers, view.count):
        axc.text(c, k + 0.04 * top, str(int(k)) if k else "empty", ha="center", va="bottom",
                 fontsize=8.5, color="black" if k else "0.45", zorder=3)
    axc.set_ylim(0, top * 1.35)
    axc.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    axc.set_xlim(0, 1)
    axc.set_xticks(edges)
    axc.set_xticklabels([f"{e:.1f}" for e in edges])
    axc.set_ylabel(_COUNT_LABELS[view.kind])
    axc.set_xlabel(_XLABELS[view.kind])


def _figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def save_figure(fig, path: str, dpi: int = 120) -> str:
    """Write ``fig`` as PNG (Agg canvas), creating the folder; returns ``path``."""
    import matplotlib

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with matplotlib.rc_context(_STYLE):
        fig.savefig(path, dpi=dpi)
    return path


def plot_reliability(probs, labels, path: str | None = None, *, title: str = "",
                     n_bins: int = metrics.DEFAULT_N_BINS, num_options: Sequence[int] | None = None):
    """One model: confidence and class-wise reliability diagrams side by side, counts underneath.

    ``probs`` (n, K) option probabilities (rows zero-padded to Kmax for mixed K, with ``num_options``),
    ``labels`` (n,) gold indices. Saves a PNG when ``path`` is given; returns the ``Figure``.
    """
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        fig = _figure((12.5, 6.6))
        gs = fig.add_gridspec(2, 2, height_ratios=[3.3, 1.0])
        for col, kind in enumerate(("conf", "class")):
            ax = fig.add_subplot(gs[0, col])
            axc = fig.add_subplot(gs[1, col], sharex=ax)
            _draw_bins(ax, axc, bin_view(probs, labels, kind, n_bins, num_options))
        fig.suptitle(f"{title}  ({n_bins} equal-width bins)" if title else f"Reliability ({n_bins} equal-width bins)")
    if path:
        save_figure(fig, path)
    return fig


def plot_comparison(models: Mapping[str, tuple], path: str | None = None, *, title: str = "",
                    n_bins: int = metrics.DEFAULT_N_BINS):
    """Several models on one pair of panels (confidence, class-wise): each model's per-bin
    (mean confidence, accuracy) curve, marker area by the share of samples in the bin, and the
    share of samples per bin underneath. ``models``: ``{name: (probs, labels)}`` or
    ``{name: (probs, labels, num_options)}``, in legend order."""
    import matplotlib

    colors = matplotlib.colormaps["tab10"].colors
    with matplotlib.rc_context(_STYLE):
        fig = _figure((12.5, 6.6))
        gs = fig.add_gridspec(2, 2, height_ratios=[3.3, 1.0])
        n_models = max(len(models), 1)
        for col, kind in enumerate(("conf", "class")):
            ax = fig.add_subplot(gs[0, col])
            axc = fig.add_subplot(gs[1, col], sharex=ax)
            ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1.2, label="perfect calibration")
            edges = None
            for j, (name, data) in enumerate(models.items()):
                probs, labels = data[0], data[1]
                view = bin_view(probs, labels, kind, n_bins, data[2] if len(data) > 2 else None)
                edges = view.edges
                filled = view.count > 0
                share = view.count / max(view.count.sum(), 1)
                color = colors[j % len(colors)]
                ece_name = "conf-ECE" if kind == "conf" else "cw-ECE"
                ax.plot(view.confidence[filled], view.accuracy[filled], color=color, lw=1.6, zorder=3,
                        label=f"{name}: {ece_name} {view.ece:.4f}, acc {view.model_accuracy:.3f}")
                ax.scatter(view.confidence[filled], view.accuracy[filled], s=25 + 500 * share[filled], color=color,
                           edgecolor="white", lw=0.8, zorder=4, alpha=0.9)
                width = (edges[1:] - edges[:-1]) / (n_models + 1)
                left = edges[:-1] + width * (j + 0.5)
                axc.bar(left + width / 2, 100 * share, width=width, color=color, zorder=2)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_ylabel("accuracy (fraction correct)")
            ax.set_title(_TITLES[kind])
            ax.grid(alpha=0.25)
            ax.legend(loc="upper left", framealpha=0.92)
            ax.tick_params(labelbottom=False)
            if edges is not None:
                ax.set_xticks(edges)
                axc.set_xticks(edges)
                axc.set_xticklabels([f"{e:.1f}" for e in edges])
            axc.set_xlim(0, 1)
            axc.set_ylabel(f"% of {_COUNT_LABELS[kind]}")
            axc.set_xlabel(_XLABELS[kind] + " (marker area = share of samples in the bin)")
            axc.grid(axis="y", alpha=0.25)
        fig.suptitle(f"{title}  ({n_bins} equal-width bins)" if title else f"Reliability ({n_bins} equal-width bins)")
    if path:
        save_figure(fig, path)
    return fig
