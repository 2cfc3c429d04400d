"""E-step / M-step of calibration-aware fine-tuning (Algorithm 1 of Xiao et al., ICML 2025).

Pure, vectorized tensor functions (no Python loop over samples, no state); the fixed-between-refreshes
result that the trainer reads, :class:`~axolotl_calib_plugin.train.em_state.EMState`, packages their output:

* **E-step** :func:`assign_bins` -- the latent bin z_i of every training sample is the
  equal-width, right-closed bin of its max option probability (``metrics.bin_index``; the same
  binning as every ECE we report, so the loss and the metric can never disagree on a bin).
* **M-step** :func:`bin_statistics` -- per bin m the count n_m, the accuracy q_m and the mean
  confidence (through ``metrics.reliability_bins``, the one metrics core).
  :func:`build_targets` -- the target distribution p(x_i): its argmax class gets q_{z_i}, the
  other classes share 1 - q_{z_i}.
* **Held-out variants** (ours, not in Algorithm 1): :func:`heldout_bin_accuracy` takes q_m from rows the
  model never trains on (binned by the same model), shrunk toward the training-row accuracy where they
  are few; :func:`temperature_targets` gives each row softmax(log pi_i / T) with T fitted on those rows.
  A model that memorised its training rows is calibrated on them, so training-row bins ask it to stay
  as it is; only held-out rows show its over-confidence.

Rows may have different option counts K: ``probs`` is zero-padded to ``Kmax`` and padded
classes always get target 0. Empty bins have no samples, so no sample ever reads their (NaN)
accuracy; they contribute nothing to any statistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from .. import metrics

__all__ = [
    "BIN_ACCURACY_SOURCES",
    "COVERAGE_EXTRA",
    "FALLBACK_EXTRA",
    "HELDOUT_KS_EXTRA",
    "NONMAX_SPLITS",
    "TARGET_KINDS",
    "TRAIN_KS_EXTRA",
    "BinStatistics",
    "assign_bins",
    "bin_statistics",
    "build_targets",
    "em_step",
    "fit_heldout_temperature",
    "fit_heldout_temperature_result",
    "heldout_bin_accuracy",
    "option_log_probs",
    "temperature_targets",
]

NONMAX_SPLITS = ("proportional", "uniform", "reference")
BIN_ACCURACY_SOURCES = ("train", "heldout")
TARGET_KINDS = ("bin", "temperature")
#: how far below a row's smallest log-probability the padded options of a short row go before a temperature fit
_PAD_GAP = 1e4
#: keys of the ``info`` dict of :func:`em_step` (kept in ``EMState.extra``): the bound a temperature fit ended on when
#: the targets fell back to held-out bins; the share of training rows whose q came from held-out rows (their bin held
#: one); the option counts K of both sets
FALLBACK_EXTRA, COVERAGE_EXTRA = "temperature_fallback", "heldout_coverage"
TRAIN_KS_EXTRA, HELDOUT_KS_EXTRA = "train_option_counts", "heldout_option_counts"


def assign_bins(max_conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """E-step: bin index (int64, 0-based) of each max confidence, bins ``((m-1)/M, m/M]``.

    Thin wrapper over :func:`metrics.bin_index` so that E-step bins and reported ECE bins are
    the same bins by construction (an exact edge such as 0.3 lands in the bin it closes).
    """
    return metrics.bin_index(max_conf, n_bins)


@dataclass(frozen=True)
class BinStatistics:
    """Per-bin M-step statistics, each of shape (M,): ``count`` (int64), ``accuracy`` q_m and
    ``confidence`` (mean max-probability), float64 and NaN where ``count == 0``."""

    count: torch.Tensor
    accuracy: torch.Tensor
    confidence: torch.Tensor

    @property
    def conf_ece(self) -> float:
        """conf-ECE of the binned samples: sum_m n_m/n |q_m - conf_m| (empty bins add 0)."""
        n = int(self.count.sum())
        if n == 0:
            return float("nan")
        gap = torch.nan_to_num((self.accuracy - self.confidence).abs(), nan=0.0)
        return float((self.count.to(torch.float64) * gap).sum() / n)

    @property
    def mean_accuracy(self) -> float:
        """Accuracy over all binned samples (count-weighted mean of q_m)."""
        n = int(self.count.sum())
        if n == 0:
            return float("nan")
        return float((self.count.to(torch.float64) * torch.nan_to_num(self.accuracy, nan=0.0)).sum() / n)


def bin_statistics(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> BinStatistics:
    """M-step statistics from E-step probabilities ``probs`` (n, Kmax; rows zero-padded) and gold
    ``labels`` (n,): per max-confidence bin the count, the accuracy q_m and the mean confidence.

    Delegates to :func:`metrics.reliability_bins` (validation of shapes, NaN, row sums included)
    so the M-step and the reported reliability diagrams are one computation.
    """
    rb = metrics.reliability_bins(probs, labels, n_bins=n_bins, kind="conf")
    return BinStatistics(
        count=torch.from_numpy(rb.count.copy()).to(torch.int64),
        accuracy=torch.from_numpy(rb.accuracy.copy()).to(torch.float64),
        confidence=torch.from_numpy(rb.mean_confidence.copy()).to(torch.float64),
    )


def _valid_mask(probs: torch.Tensor, num_options: Optional[torch.Tensor]) -> torch.Tensor:
    n, kmax = probs.shape
    if num_options is None:
        return torch.ones(n, kmax, dtype=torch.bool, device=probs.device)
    k = torch.as_tensor(num_options, device=probs.device).to(torch.int64).view(n, 1)
    if bool((k < 2).any()) or bool((k > kmax).any()):
        raise ValueError(f"num_options must lie in [2, {kmax}], got {k.view(-1).tolist()[:10]}...")
    return torch.arange(kmax, device=probs.device).view(1, kmax) < k


def build_targets(
    probs: torch.Tensor,
    q_per_sample: torch.Tensor,
    split: Literal["proportional", "uniform", "reference"] = "proportional",
    num_options: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """M-step target distributions p(x_i), shape (n, Kmax), in ``probs``' float dtype.

    The model's argmax class a_i (lowest index on ties, as in ``metrics``) gets ``q_i``; the other
    valid classes share ``1 - q_i``; padded classes (index >= ``num_options[i]``) get 0.

    ``split`` decides how ``1 - q`` is shared among the non-max classes:

    * ``"proportional"`` (default): t_j = (1 - q) * pi_j / sum_{l != a} pi_l. This is the
      information projection of the model's pi onto the set {p : p_a = q}: minimizing
      KL(p || pi) = sum_j p_j log(p_j / pi_j) subject to p_a = q and sum_{j != a} p_j = 1 - q gives,
      by a Lagrange multiplier on the second constraint, log(p_j / pi_j) = const for j != a, i.e.
      p_j proportional to pi_j (the reverse projection KL(pi || p) gives the same answer). It is the
      smallest change of the model's belief that meets the bin's accuracy, keeping the model's
      ranking and ratios among the wrong options. If the non-max mass underflows to 0 the split
      falls back to uniform.
    * ``"uniform"``: t_j = (1 - q) / (K - 1), the maximum-entropy share.
    * ``"reference"``: the paper's code's tanh rule, with its hard-coded 3 generalised to K - 1:
      gamma = ln(K-1) / (c_(2) (1-q)), T = sum_j tanh(gamma c_j), a = (1-q) / (T + K - 1),
      t_j = a * (tanh(gamma c_j) + 1), where c_j are the non-max probabilities and c_(2) the largest;
      the t_j sum to 1 - q and keep the model's order. q = 1 gives all-zero non-max targets.
    """
    if split not in NONMAX_SPLITS:
        raise ValueError(f"calib_nonmax_split must be one of {NONMAX_SPLITS}, got {split!r}")
    if probs.ndim != 2:
        raise ValueError(f"probs must have shape (n, Kmax), got {tuple(probs.shape)}")
    p = probs.detach()
    if not p.is_floating_point():
        p = p.to(torch.float32)
    n, kmax = p.shape
    q = torch.as_tensor(q_per_sample, device=p.device).to(p.dtype).view(n)
    if not bool(torch.isfinite(q).all()) or bool((q < 0).any()) or bool((q > 1).any()):
        raise ValueError("q_per_sample must be finite accuracies in [0, 1] (did a sample read an empty bin?)")
    valid = _valid_mask(p, num_options)
    p = torch.where(valid, p, torch.zeros_like(p))
    top = p.argmax(dim=1)
    is_top = torch.nn.functional.one_hot(top, kmax).to(torch.bool)
    nonmax = valid & ~is_top
    rest = (1.0 - q).view(n, 1)
    n_nonmax = nonmax.sum(dim=1, keepdim=True).clamp(min=1).to(p.dtype)
    uniform = torch.where(nonmax, rest / n_nonmax, torch.zeros_like(p))

    if split == "uniform":
        share = uniform
    elif split == "proportional":
        c = torch.where(nonmax, p, torch.zeros_like(p))
        mass = c.sum(dim=1, keepdim=True)
        share = torch.where(mass > 0, rest * c / mass.clamp(min=torch.finfo(p.dtype).tiny), uniform)
    else:  # reference
        c = torch.where(nonmax, p, torch.zeros_like(p))
        c2 = c.max(dim=1, keepdim=True).values
        km1 = nonmax.sum(dim=1, keepdim=True).to(p.dtype)
        denom = c2 * rest
        # q = 1 or c_(2) = 0 make gamma infinite; the targets are then 0 (q = 1) or uniform.
        gamma = torch.where(denom > 0, torch.log(km1.clamp(min=1)) / denom.clamp(min=torch.finfo(p.dtype).tiny),
                            torch.zeros_like(denom))
        th = torch.where(nonmax, torch.tanh(gamma * c), torch.zeros_like(p))
        a = rest / (th.sum(dim=1, keepdim=True) + km1).clamp(min=1)
        share = torch.where(nonmax, a * (th + 1.0), torch.zeros_like(p))
    return torch.where(is_top, q.view(n, 1).expand(n, kmax), share)


def heldout_bin_accuracy(train: BinStatistics, heldout: BinStatistics, prior: float) -> torch.Tensor:
    """q_m of every bin from held-out rows (float64, (M,)), shrunk toward the training-row accuracy.

    q_m = (n_m acc_m + kappa q_train_m) / (n_m + kappa), n_m / acc_m the held-out count / accuracy of bin m and
    kappa = ``prior`` (a pseudo-count). A bin with no held-out row takes q_train_m; a bin with no training row
    (which no training sample reads) takes the held-out accuracy, or NaN when it has no held-out row either.
    """
    if not (prior >= 0 and math.isfinite(prior)):
        raise ValueError(f"calib_heldout_prior must be a finite number >= 0, got {prior!r}")
    if heldout.count.numel() != train.count.numel():
        raise ValueError(f"held-out statistics have {heldout.count.numel()} bins, training ones {train.count.numel()}")
    n_h = heldout.count.to(torch.float64)
    acc_h = torch.nan_to_num(heldout.accuracy.to(torch.float64), nan=0.0)
    q_tr = train.accuracy.to(torch.float64)
    denom = n_h + prior
    shrunk = (n_h * acc_h + prior * torch.nan_to_num(q_tr, nan=0.0)) / denom.clamp(min=1e-300)
    q = torch.where(n_h > 0, shrunk, q_tr)
    return torch.where(torch.isnan(q_tr), torch.where(n_h > 0, acc_h, q_tr), q)


def option_log_probs(probs: torch.Tensor, num_options: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Finite float64 logits of option distributions: log pi on a row's K options, and ``_PAD_GAP`` below the row's
    smallest log-probability on its padded columns (mixed K), so a softmax at any T in the fit's bounds gives them
    ~0. Probabilities that underflowed to 0 are clipped at 1e-300."""
    p = torch.as_tensor(probs).detach().to(torch.float64)
    valid = _valid_mask(p, num_options)
    logp = torch.log(p.clamp(min=1e-300))
    low = torch.where(valid, logp, torch.full_like(logp, math.inf)).min(dim=1, keepdim=True).values
    return torch.where(valid, logp, low - _PAD_GAP)


def temperature_targets(probs: torch.Tensor, temperature: float, num_options: Optional[torch.Tensor] = None
                        ) -> torch.Tensor:
    """Per-row targets softmax(log pi_i / T) (float64, (n, Kmax)); padded options get exactly 0.

    With T fitted on held-out rows this is the model's own prediction, temperature-scaled: it keeps the
    ranking of rows within a bin (which bin targets flatten) and of options within a row.
    """
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    p = torch.as_tensor(probs).detach().to(torch.float64)
    valid = _valid_mask(p, num_options)
    logp = torch.log(p.clamp(min=1e-300)).masked_fill(~valid, -math.inf)
    return torch.softmax(logp / float(temperature), dim=1)


def fit_heldout_temperature(probs: torch.Tensor, labels: torch.Tensor, num_options: Optional[torch.Tensor] = None
                            ) -> float:
    """T minimising the NLL of the held-out ``labels`` under softmax(log pi / T) (the temperature-scaling fit)."""
    return fit_heldout_temperature_result(probs, labels, num_options).temperature


def fit_heldout_temperature_result(probs: torch.Tensor, labels: torch.Tensor, num_options: Optional[torch.Tensor] = None):
    """:func:`fit_heldout_temperature` as a :class:`~axolotl_calib_plugin.eval.temperature.TemperatureFit` (says
    whether T ended on a bound)."""
    from ..eval.temperature import fit_temperature_result

    return fit_temperature_result(option_log_probs(probs, num_options), torch.as_tensor(labels).to(torch.int64))


def em_step(
    sample_ids: torch.Tensor,
    probs: torch.Tensor,
    labels: torch.Tensor,
    num_options: torch.Tensor,
    n_bins: int,
    split: str = "proportional",
    *,
    heldout: Optional[tuple] = None,
    bin_accuracy: str = "train",
    targets_kind: str = "bin",
    prior: float = 10.0,
    return_info: bool = False,
):
    """One full E + M step over the training set.

    Returns the bin statistics (over every measured row), and the sorted unique ``sample_ids`` with their
    (float32) targets. Rows sharing an id are the same prompt, hence have the same probabilities
    and bin, hence the same target: the first row of each id is kept.

    A row of ``probs`` that is all NaN was not measured (a first E-step over a subset of the prompts,
    ``calib_first_estep_fraction``): it adds nothing to the statistics and its target row is NaN, which
    :meth:`~axolotl_calib_plugin.train.em_state.EMState.fill_live` replaces in the training step by the same rule applied to the live probabilities.

    ``heldout`` = (probs, labels, num_options) of rows the model does not train on, needed by
    ``bin_accuracy="heldout"`` (q_m from :func:`heldout_bin_accuracy`) and ``targets_kind="temperature"``
    (:func:`temperature_targets`); with ``return_info`` a 4th value holds the held-out bin statistics, the q_m
    used (``bin_target``) and the fitted ``temperature``.
    """
    probs = torch.as_tensor(probs).detach().cpu()
    sample_ids = torch.as_tensor(sample_ids).detach().cpu().to(torch.int64)
    labels = torch.as_tensor(labels).detach().cpu().to(torch.int64)
    num_options = torch.as_tensor(num_options).detach().cpu().to(torch.int64)
    if sample_ids.numel() == 0:
        raise ValueError("the E-step saw no MCQ samples (no calib_sample_id >= 0 in the training set)")
    if bool((sample_ids < 0).any()):
        raise ValueError("sample ids must be non-negative")
    measured = ~torch.isnan(probs).all(dim=1)
    if not bool(measured.any()):
        raise ValueError("the E-step measured no training sample (every probability row is NaN)")
    all_measured = bool(measured.all())
    if not all_measured:
        probs, labels, num_options = probs[measured], labels[measured], num_options[measured]
    stats = bin_statistics(probs, labels, n_bins)
    info: dict = {}
    if targets_kind not in TARGET_KINDS:
        raise ValueError(f"calib_targets must be one of {TARGET_KINDS}, got {targets_kind!r}")
    if bin_accuracy not in BIN_ACCURACY_SOURCES:
        raise ValueError(f"calib_bin_accuracy must be one of {BIN_ACCURACY_SOURCES}, got {bin_accuracy!r}")
    if heldout is not None:
        h_probs, h_labels, h_k = (torch.as_tensor(t).detach().cpu() for t in heldout)
        h_stats = bin_statistics(h_probs, h_labels.to(torch.int64), n_bins)
        info.update(heldout_bin_count=h_stats.count, heldout_bin_accuracy=h_stats.accuracy,
                    heldout_bin_confidence=h_stats.confidence)
    elif bin_accuracy == "heldout" or targets_kind == "temperature":
        raise ValueError(f"calib_bin_accuracy: {bin_accuracy} / calib_targets: {targets_kind} need held-out rows "
                         "(an eval split), and none were given to the M-step")
    q_heldout = heldout_bin_accuracy(stats, h_stats, prior) if heldout is not None else None
    q_bins = q_heldout if bin_accuracy == "heldout" else stats.accuracy
    kind = targets_kind
    if targets_kind == "temperature":
        fit = fit_heldout_temperature_result(h_probs, h_labels, h_k.to(torch.int64))
        info["temperature"] = torch.tensor(fit.temperature, dtype=torch.float64)
        if fit.at_bound is None:
            targets = temperature_targets(probs, fit.temperature, num_options).to(torch.float32)
        else:  # T is a bound, not an estimate: the held-out bin rule instead (documented fallback)
            info[FALLBACK_EXTRA] = fit.at_bound
            q_bins, kind = q_heldout, "bin"
    info["bin_target"] = q_bins
    if kind == "bin":
        bins = assign_bins(probs.max(dim=1).values, n_bins)
        q = q_bins[bins]  # every sample's bin holds the sample, so its q is finite
        targets = build_targets(probs.to(torch.float64), q, split=split, num_options=num_options).to(torch.float32)
        if heldout is not None and q_bins is q_heldout:  # which training rows' q actually came from held-out rows
            info[COVERAGE_EXTRA] = (h_stats.count[bins] > 0).to(torch.float64).mean()
            info[TRAIN_KS_EXTRA] = torch.unique(num_options.to(torch.int64))
            info[HELDOUT_KS_EXTRA] = torch.unique(h_k.to(torch.int64))
    if not all_measured:
        # unmeasured rows after the measured ones, so a prompt measured in any of its rows keeps that row's target
        # below (the first row of each id wins; rows sharing an id are the same prompt)
        unmeasured = torch.full((int((~measured).sum()), targets.shape[1]), float("nan"), dtype=torch.float32)
        sample_ids = torch.cat([sample_ids[measured], sample_ids[~measured]])
        targets = torch.cat([targets, unmeasured])
    uniq, inverse = torch.unique(sample_ids, sorted=True, return_inverse=True)
    first = torch.full((uniq.numel(),), sample_ids.numel(), dtype=torch.int64)
    first = first.scatter_reduce(0, inverse, torch.arange(sample_ids.numel()), reduce="amin")
    if return_info:
        return stats, uniq, targets[first], info
    return stats, uniq, targets[first]
