"""Calibration metrics: the one shared core behind the plugin, the lm-eval tasks and the demo.

Definitions (Xiao et al., ICML 2025, Defs. 3.1/3.2; Guo et al. 2017), with ``M`` equal-width bins
``B_m = ((m-1)/M, m/M]`` (right-closed, as in the paper's Algorithm 1; a confidence of exactly 0
falls in the first bin):

* **conf-ECE** = sum_m |B_m|/n * |acc(B_m) - conf(B_m)| over the max-probability of each row.
* **cw-ECE**   = (1/K) sum_k ECE of ``probs[:, k]`` against ``1[label == k]``.
* **accuracy** = mean of ``argmax(probs) == label`` (ties go to the lowest index).

All functions are pure and vectorized (``torch.bucketize`` + ``torch.bincount``; no Python loop
over samples), accept numpy arrays, torch tensors or nested lists, and compute in float64.
Since ``|B_m|/n * |acc - conf| = |sum_{B_m} correct - sum_{B_m} conf| / n``, every ECE here is a
single scatter-add, so the cost is linear in ``n * K``.

Mixed option counts (e.g. ARC's 3- and 5-option items pooled): pad each row with zeros up to the
largest K. Padded zeros fall in the first bin with label indicator 0 and so add nothing to any
bin's gap; cw-ECE then averages over the padded K classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence, Union

import numpy as np
import torch

__all__ = [
    "ArrayLike",
    "ReliabilityBins",
    "accuracy",
    "bin_edges",
    "bin_index",
    "conf_ece",
    "cw_ece",
    "reliability_bins",
    "validate_probs_labels",
]

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence]

#: rows of ``probs`` must sum to 1 within this tolerance (float32 softmax is good to ~1e-6).
ROW_SUM_ATOL = 1e-3


def _as_tensor(x: ArrayLike, dtype: torch.dtype | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        t = torch.as_tensor(np.asarray(x))
    return t.to(dtype) if dtype is not None else t


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def validate_probs_labels(
    probs: ArrayLike, labels: ArrayLike, *, check_row_sums: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check and convert ``probs`` (n, K) and ``labels`` (n,) to float64 / int64 CPU tensors.

    Raises ``ValueError`` naming what is wrong (shape, NaN/inf, values outside [0, 1], rows not
    summing to 1, labels that are not integers or out of ``[0, K)``), and the first offending row.
    """
    p = _as_tensor(probs)
    if p.dtype == torch.bool or p.is_complex():
        raise ValueError(f"probs must be real numbers, got dtype {p.dtype}")
    p = p.to(torch.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (n, K), got {tuple(p.shape)}")
    n, k = p.shape
    if n == 0:
        raise ValueError("probs is empty: need at least one sample")
    if k < 2:
        raise ValueError(f"probs must have K >= 2 option columns, got K={k}")
    finite = torch.isfinite(p)
    if not bool(finite.all()):
        row = int((~finite).any(dim=1).nonzero()[0])
        raise ValueError(f"probs contains NaN or inf (first at row {row}: {p[row].tolist()})")
    if bool((p < 0).any()) or bool((p > 1).any()):
        row = int(((p < 0) | (p > 1)).any(dim=1).nonzero()[0])
        raise ValueError(f"probs must lie in [0, 1] (row {row}: {p[row].tolist()})")
    if check_row_sums:
        off = (p.sum(dim=1) - 1.0).abs() > ROW_SUM_ATOL
        if bool(off.any()):
            row = int(off.nonzero()[0])
            raise ValueError(
                f"each row of probs must sum to 1 (row {row} sums to {float(p[row].sum()):.6f}); "
                "pass softmax probabilities, not logits"
            )

    y = _as_tensor(labels)
    if y.is_floating_point():
        if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
            raise ValueError("labels must be integer class indices, got non-integer values")
    elif y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    y = y.to(torch.int64)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match probs {tuple(p.shape)}, got {tuple(y.shape)}")
    bad = (y < 0) | (y >= k)
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise ValueError(f"labels must lie in [0, {k}) for K={k} options (row {row} has label {int(y[row])})")
    return p, y


def bin_edges(n_bins: int = 10) -> torch.Tensor:
    """The ``n_bins + 1`` bin edges ``0, 1/M, ..., 1`` (float64, each correctly rounded m/M)."""
    m = _check_n_bins(n_bins)
    return torch.arange(m + 1, dtype=torch.float64) / m


def bin_index(confidence: ArrayLike, n_bins: int = 10) -> torch.Tensor:
    """Bin of each confidence in right-closed equal-width bins ``((m-1)/M, m/M]`` -> ``m - 1``.

    A value exactly on an edge m/M goes to the bin it closes (0.3 -> bin 2 of 10, i.e. (0.2, 0.3]);
    0 goes to bin 0. Vectorized; works for any shape.
    """
    m = _check_n_bins(n_bins)
    c = _as_tensor(confidence, torch.float64)
    inner = bin_edges(m)[1:-1]
    # right=False: index i with inner[i-1] < c <= inner[i]  -> right-closed bins.
    return torch.bucketize(c, inner, right=False)


def _binned_gap(values: torch.Tensor, hits: torch.Tensor, bins: torch.Tensor, n_groups: int, n_bins: int):
    """Per (group, bin) counts, sums of values and sums of hits, via one bincount each."""
    size = n_groups * n_bins
    counts = torch.bincount(bins, minlength=size).to(torch.float64)
    sum_vals = torch.bincount(bins, weights=values, minlength=size)
    sum_hits = torch.bincount(bins, weights=hits, minlength=size)
    return counts.view(n_groups, n_bins), sum_vals.view(n_groups, n_bins), sum_hits.view(n_groups, n_bins)


def conf_ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> float:
    """Confidence ECE: sum_m |B_m|/n * |acc(B_m) - conf(B_m)| over each row's max probability."""
    p, y = validate_probs_labels(probs, labels)
    conf, pred = p.max(dim=1)
    correct = (pred == y).to(torch.float64)
    _, s_conf, s_acc = _binned_gap(conf, correct, bin_index(conf, n_bins), 1, n_bins)
    return float((s_acc - s_conf).abs().sum() / p.shape[0])


def cw_ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> float:
    """Class-wise ECE: for each class k the ECE of ``probs[:, k]`` vs ``1[label == k]``, averaged over K."""
    p, y = validate_probs_labels(probs, labels)
    n, k = p.shape
    onehot = torch.nn.functional.one_hot(y, k).to(torch.float64)
    flat_bins = bin_index(p, n_bins) + torch.arange(k).view(1, k) * _check_n_bins(n_bins)
    _, s_p, s_y = _binned_gap(p.reshape(-1), onehot.reshape(-1), flat_bins.reshape(-1), k, n_bins)
    per_class = (s_y - s_p).abs().sum(dim=1) / n
    return float(per_class.mean())


def accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of rows whose argmax (lowest index on ties) equals the label."""
    p, y = validate_probs_labels(probs, labels)
    return float((p.argmax(dim=1) == y).to(torch.float64).mean())


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram (and of the EM M-step).

    For ``kind="conf"`` the arrays have shape (M,); for ``kind="class"`` (K, M), row k for class k.
    ``mean_confidence`` / ``accuracy`` are NaN for empty bins (no samples: nothing to report);
    ``ece`` is the matching scalar (conf-ECE, or cw-ECE = mean over classes), where empty bins add 0.
    """

    kind: str
    edges: np.ndarray
    count: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray
    n: int
    ece: float

    @property
    def weight(self) -> np.ndarray:
        """|B_m| / n: the share of samples in each bin (the sample density of a diagram)."""
        return self.count / self.n


def reliability_bins(
    probs: ArrayLike,
    labels: ArrayLike,
    n_bins: int = 10,
    kind: Literal["conf", "class"] = "conf",
) -> ReliabilityBins:
    """Per-bin counts, mean confidence and accuracy, for ``kind="conf"`` (max-probability) or
    ``kind="class"`` (each class's probability vs ``1[label == k]``)."""
    p, y = validate_probs_labels(probs, labels)
    n, k = p.shape
    m = _check_n_bins(n_bins)
    if kind == "conf":
        conf, pred = p.max(dim=1)
        counts, s_v, s_h = _binned_gap(conf, (pred == y).to(torch.float64), bin_index(conf, m), 1, m)
        counts, s_v, s_h = counts[0], s_v[0], s_h[0]
    elif kind == "class":
        onehot = torch.nn.functional.one_hot(y, k).to(torch.float64)
        flat_bins = bin_index(p, m) + torch.arange(k).view(1, k) * m
        counts, s_v, s_h = _binned_gap(p.reshape(-1), onehot.reshape(-1), flat_bins.reshape(-1), k, m)
    else:
        raise ValueError(f"kind must be 'conf' or 'class', got {kind!r}")
    safe = counts.clamp(min=1)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    mean_conf = torch.where(counts > 0, s_v / safe, nan)
    acc = torch.where(counts > 0, s_h / safe, nan)
    gaps = (s_h - s_v).abs().sum(dim=-1) / n
    return ReliabilityBins(
        kind=kind,
        edges=bin_edges(m).numpy(),
        count=counts.to(torch.int64).numpy(),
        mean_confidence=mean_conf.numpy(),
        accuracy=acc.numpy(),
        n=n,
        ece=float(gaps.mean()),
    )
