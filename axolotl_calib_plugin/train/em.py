"""E-step / M-step of calibration-aware fine-tuning (Algorithm 1 of Xiao et al., ICML 2025).

Pure, vectorized tensor functions (no Python loop over samples) plus :class:`EMState`, the
fixed-between-refreshes result that the trainer reads:

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
import os
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

import torch

from .. import metrics

__all__ = [
    "BIN_ACCURACY_SOURCES",
    "BinStatistics",
    "TARGET_KINDS",
    "EMState",
    "NONMAX_SPLITS",
    "assign_bins",
    "bin_statistics",
    "build_targets",
    "em_step",
]

NONMAX_SPLITS = ("proportional", "uniform", "reference")
BIN_ACCURACY_SOURCES = ("train", "heldout")
TARGET_KINDS = ("bin", "temperature")
#: how far below a row's smallest log-probability the padded options of a short row go before a temperature fit
_PAD_GAP = 1e4
STATE_FILE = "calib_state.pt"
#: ``EMState.extra`` key: the M-step rule of the refresh (split, target kind), which :meth:`EMState.fill_live` reuses
RULE_EXTRA = "target_rule"
#: ``EMState.extra`` keys of the live targets' running per-bin statistics and how many positions they span
LIVE_COUNT, LIVE_HITS, LIVE_WINDOW = "live_bin_count", "live_bin_hits", "live_window"
#: ``EMState.extra`` keys: the bound a temperature fit ended on when the targets fell back to held-out bins; the share of
#: training rows whose q came from held-out rows (their bin held one); the option counts K of both sets
FALLBACK_EXTRA, COVERAGE_EXTRA = "temperature_fallback", "heldout_coverage"
TRAIN_KS_EXTRA, HELDOUT_KS_EXTRA = "train_option_counts", "heldout_option_counts"
_STATE_VERSION = 2
#: versions :meth:`EMState.load` reads (1 = before the ``extra`` section existed)
_READABLE_VERSIONS = (1, 2)


class CalibStateError(ValueError):
    """A ``calib_state.pt`` that cannot be used; the message names the file and what to do."""


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
    :meth:`EMState.fill_live` replaces in the training step by the same rule applied to the live probabilities.

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


@dataclass
class EMState:
    """What one EM refresh produced; fixed (detached) until the next refresh.

    ``sample_ids`` (N,) sorted int64 and ``targets`` (N, Kmax) float32 (zero-padded rows) are the
    lookup table of the loss; ``bin_count`` / ``bin_accuracy`` / ``bin_confidence`` (M,) are the
    M-step statistics (NaN accuracy/confidence for empty bins). ``refresh_count`` counts refreshes,
    ``epoch_refreshed`` is the epoch index it was computed for (or -1 for step-based refreshes) and
    ``global_step`` the optimizer step at which it was computed.
    """

    sample_ids: torch.Tensor
    targets: torch.Tensor
    bin_count: torch.Tensor
    bin_accuracy: torch.Tensor
    bin_confidence: torch.Tensor
    refresh_count: int = 0
    epoch_refreshed: int = -1
    global_step: int = 0
    #: tensors other components keep with the state (the online E-step's record), saved alongside
    extra: dict = field(default_factory=dict, compare=False)
    _device_cache: dict = field(default_factory=dict, repr=False, compare=False)
    #: data-parallel runs: the live statistics at the last :meth:`sync_live` and this rank's (bin counts, bin hits,
    #: positions) added since, a (2M + 1,) float64 vector
    _live_synced: Optional[tuple] = field(default=None, repr=False, compare=False)
    _live_pending: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)

    @classmethod
    def from_estep(cls, sample_ids, probs, labels, num_options, n_bins: int, split: str = "proportional",
                   refresh_count: int = 1, epoch_refreshed: int = -1, global_step: int = 0, *,
                   heldout: Optional[tuple] = None, bin_accuracy: str = "train", targets_kind: str = "bin",
                   prior: float = 10.0) -> "EMState":
        """Run the M-step on E-step outputs and package the result (held-out statistics in ``extra``)."""
        stats, ids, targets, info = em_step(sample_ids, probs, labels, num_options, n_bins, split, heldout=heldout,
                                            bin_accuracy=bin_accuracy, targets_kind=targets_kind, prior=prior,
                                            return_info=True)
        info[RULE_EXTRA] = {"split": split, "targets": targets_kind}
        if bool(torch.isnan(targets).any()):  # some prompts unmeasured: their live targets start from these statistics
            if targets_kind != "bin" or bin_accuracy != "train":
                raise ValueError("live targets (calib_first_estep_fraction < 1) need calib_bin_accuracy: train and "
                                 f"calib_targets: bin, got {bin_accuracy} / {targets_kind}")
            info[LIVE_COUNT] = stats.count.to(torch.float64)
            info[LIVE_HITS] = stats.count.to(torch.float64) * torch.nan_to_num(stats.accuracy, nan=0.0)
            info[LIVE_WINDOW] = torch.tensor(float(stats.count.sum()), dtype=torch.float64)
        return cls(sample_ids=ids, targets=targets, bin_count=stats.count, bin_accuracy=stats.accuracy,
                   bin_confidence=stats.confidence, refresh_count=int(refresh_count),
                   epoch_refreshed=int(epoch_refreshed), global_step=int(global_step), extra=info)

    @property
    def n_bins(self) -> int:
        return int(self.bin_count.numel())

    @property
    def stats(self) -> BinStatistics:
        return BinStatistics(self.bin_count, self.bin_accuracy, self.bin_confidence)

    @property
    def has_live(self) -> bool:
        """True when some prompts have no measured target yet (NaN rows): the loss must call :meth:`fill_live`."""
        cached = self._device_cache.get("has_live")
        if cached is None:
            cached = self._device_cache["has_live"] = bool(torch.isnan(self.targets).any())
        return cached

    def fill_live(self, targets: torch.Tensor, probs: torch.Tensor, num_options: torch.Tensor,
                  labels: torch.Tensor) -> torch.Tensor:
        """``targets`` (P, Kmax) with every NaN row (a prompt the first E-step did not measure) replaced by the bin
        rule applied to ``probs``, the live (detached) option probabilities of the batch: its argmax gets q of the
        bin of its live confidence, the rest split as the refresh's ``split`` (``build_targets``); a bin with no
        statistics yet gives the prompt its own probabilities (no ECE gradient). Rows without NaN stay as they are.

        q comes from running statistics of the model as it trains, not from the first E-step's model: q measured
        under the starting model and applied to the confidence of a model already partly calibrated over-corrects
        (we measured under-confidence, mean confidence ~0.03 below accuracy). They start as the measured prompts'
        per-bin counts and hits; then every call adds this batch's (bin, hit) pairs, ``labels`` the gold option of
        each row, and forgets in proportion, so the statistics span about as many answer positions as the first
        E-step measured. Kept in ``extra`` (saved with checkpoints); one host transfer of P values per step."""
        live = torch.isnan(targets).any(dim=1, keepdim=True)
        p = probs.detach().to(torch.float32)
        if p.shape[1] < targets.shape[1]:
            p = torch.nn.functional.pad(p, (0, targets.shape[1] - p.shape[1]))
        p = p[:, : targets.shape[1]]
        conf, top = p.max(dim=1)
        bins = assign_bins(conf.cpu(), self.n_bins)  # the metrics core bins on the host
        count, hits = self.extra[LIVE_COUNT], self.extra[LIVE_HITS]
        q_bins = torch.where(count > 0, hits / count.clamp(min=1e-300), torch.full_like(count, float("nan")))
        q = q_bins[bins].to(device=p.device, dtype=torch.float32)
        q = torch.where(torch.isnan(q), conf, q)
        rule = self.extra.get(RULE_EXTRA) or {}
        rule_targets = build_targets(p, q, split=rule.get("split", "proportional"), num_options=num_options)
        hit = (top.cpu() == labels.detach().cpu().to(torch.int64)).to(torch.float64)
        add = torch.cat([torch.bincount(bins, minlength=self.n_bins).to(torch.float64),
                         torch.bincount(bins, weights=hit, minlength=self.n_bins),
                         torch.tensor([float(bins.numel())], dtype=torch.float64)])
        if self._live_synced is None:
            self._live_synced = (count, hits)
        self._live_pending = add if self._live_pending is None else self._live_pending + add
        self._update_live(count, hits, add)
        return torch.where(live, rule_targets.to(targets.dtype), targets)

    def _update_live(self, count: torch.Tensor, hits: torch.Tensor, add: torch.Tensor) -> None:
        """Forget in proportion to the positions added (``add[-1]``), then add their per-bin counts and hits."""
        m = self.n_bins
        keep = max(0.0, 1.0 - float(add[-1]) / max(float(self.extra[LIVE_WINDOW]), 1.0))
        self.extra[LIVE_COUNT] = count * keep + add[:m]
        self.extra[LIVE_HITS] = hits * keep + add[m:2 * m]

    def sync_live(self, sum_over_ranks: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Data parallel: make the live statistics every rank's, the same on all ranks. Called on every rank after
        every optimizer step while :attr:`has_live` (a collective): the statistics at the previous sync are updated
        once with the (bin counts, hits, positions) that ALL ranks added since, summed by ``sum_over_ranks``, so
        the window turns over per position of the whole batch as in one process, and the next step's live targets
        agree across ranks. A rank that saw no answer position adds zeros."""
        synced = self._live_synced or (self.extra[LIVE_COUNT], self.extra[LIVE_HITS])
        pending = self._live_pending
        if pending is None:
            pending = torch.zeros(2 * self.n_bins + 1, dtype=torch.float64)
        total = sum_over_ranks(pending).to("cpu", torch.float64)
        self._live_synced = self._live_pending = None
        self._update_live(synced[0], synced[1], total)

    def lookup(self, sample_ids: torch.Tensor, *, strict: bool = True):
        """Targets (P, Kmax) of ``sample_ids`` (P,), on their device, via ``searchsorted``.

        ``strict=True`` raises ``KeyError`` naming the ids that have no target (a sample the E-step
        never saw: a stale state or a changed dataset). ``strict=False`` returns ``(targets, found)``
        with zero rows where ``found`` is False (eval rows outside the training set).
        """
        device = sample_ids.device
        cached = self._device_cache.get(device)
        if cached is None:
            self._device_cache.clear()
            cached = self._device_cache[device] = (self.sample_ids.to(device), self.targets.to(device))
        ids, targets = cached
        s = sample_ids.to(torch.int64)
        pos = torch.searchsorted(ids, s).clamp(max=max(ids.numel() - 1, 0))
        found = ids[pos] == s if ids.numel() else torch.zeros_like(s, dtype=torch.bool)
        if strict:
            if not bool(found.all()):
                missing = s[~found][:5].tolist()
                raise KeyError(
                    f"no calibration target for calib_sample_id(s) {missing}: the EM state "
                    f"(refresh {self.refresh_count}) was computed on a different training set"
                )
            return targets[pos]
        out = torch.where(found.view(-1, 1), targets[pos], torch.zeros_like(targets[pos]))
        return out, found

    # ---- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "version": _STATE_VERSION,
            "sample_ids": self.sample_ids.cpu(),
            "targets": self.targets.cpu(),
            "bin_count": self.bin_count.cpu(),
            "bin_accuracy": self.bin_accuracy.cpu(),
            "bin_confidence": self.bin_confidence.cpu(),
            "refresh_count": int(self.refresh_count),
            "epoch_refreshed": int(self.epoch_refreshed),
            "global_step": int(self.global_step),
            # copies: the live statistics keep changing after a checkpoint's dict is taken
            "extra": {k: (v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v)
                      for k, v in self.extra.items()},
        }

    def save(self, path: str | os.PathLike) -> None:
        """``torch.save`` plain tensors and ints (loadable with ``weights_only=True``), written to a temporary
        file first and renamed, so a run killed while saving never leaves a truncated state behind."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, STATE_FILE)
        tmp = path + ".tmp"
        torch.save(self.to_dict(), tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EMState":
        """Read and check a state file; :class:`CalibStateError` names the file and the remedy when it is
        unreadable (truncated, not a torch file) or its contents are inconsistent."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, STATE_FILE)
        remedy = (f"Delete {path} to let the plugin recompute the targets with the resumed model (what happens "
                  "when the file is missing), or resume from an earlier checkpoint whose calib_state.pt is intact.")
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as e:  # truncated zip, pickle garbage, unsupported objects...
            raise CalibStateError(f"{path} cannot be read as a calibration state ({type(e).__name__}: "
                                  f"{(str(e).splitlines() or ['empty file'])[0][:200]}): it is corrupted or truncated. {remedy}") from None
        problem = _state_problem(d)
        if problem:
            raise CalibStateError(f"{path} is not a usable calibration state: {problem}. {remedy}")
        return cls(sample_ids=d["sample_ids"], targets=d["targets"], bin_count=d["bin_count"],
                   bin_accuracy=d["bin_accuracy"], bin_confidence=d["bin_confidence"],
                   refresh_count=int(d["refresh_count"]), epoch_refreshed=int(d["epoch_refreshed"]),
                   global_step=int(d["global_step"]), extra=dict(d.get("extra") or {}))

    def bin_table(self) -> list[dict]:
        """Per bin: training-row count / accuracy / confidence, held-out count / accuracy (when read) and the q the
        targets used; JSON-safe (None for an empty bin's accuracy)."""
        def num(t, m):
            v = float(t[m])
            return None if math.isnan(v) else round(v, 6)

        rows = []
        q = self.extra.get("bin_target", self.bin_accuracy)
        for m in range(self.n_bins):
            row = {"bin": m, "count": int(self.bin_count[m]), "acc": num(self.bin_accuracy, m),
                   "conf": num(self.bin_confidence, m), "q": num(q, m)}
            if "heldout_bin_count" in self.extra:
                row["heldout_count"] = int(self.extra["heldout_bin_count"][m])
                row["heldout_acc"] = num(self.extra["heldout_bin_accuracy"], m)
            rows.append(row)
        return rows

    def summary(self, prefix: str = "calib/") -> dict:
        """JSON-safe scalars for ``trainer.log``: conf-ECE, accuracy and count of the training rows (from the bin
        statistics), the refresh counter and, with held-out rows, the same three of them. Per-bin numbers are
        not scalars (a dozen per bin clutter a dashboard): they are :meth:`bin_table` / one figure per refresh."""
        st = self.stats
        out = {
            f"{prefix}conf_ece": round(st.conf_ece, 6),
            f"{prefix}acc": round(st.mean_accuracy, 6),
            f"{prefix}refresh": int(self.refresh_count),
            f"{prefix}n": int(self.bin_count.sum()),
        }
        held = self.heldout_stats
        if held is not None:
            out[f"{prefix}heldout_conf_ece"] = round(held.conf_ece, 6)
            out[f"{prefix}heldout_acc"] = round(held.mean_accuracy, 6)
            out[f"{prefix}heldout_n"] = int(held.count.sum())
        if "temperature" in self.extra:
            out[f"{prefix}heldout_temperature"] = round(float(self.extra["temperature"]), 6)
        if FALLBACK_EXTRA in self.extra:
            out[f"{prefix}temperature_fallback"] = 1
        if COVERAGE_EXTRA in self.extra:
            out[f"{prefix}heldout_coverage"] = round(float(self.extra[COVERAGE_EXTRA]), 6)
        return out

    def warnings(self) -> list[str]:
        """What about this refresh's targets a user must hear (the callback logs each as a warning):

        * the temperature fit ended on a bound, so the targets fell back to the held-out bin rule;
        * ``calib_bin_accuracy: heldout`` but no training row's bin held a held-out row, so every q came from the
          training rows while the log reports held-out rows (e.g. training rows with 2 options and held-out rows
          with 5: a K-option row's top probability is at least 1/K, so their confidences fall in different bins).
        """
        out = []
        held = self.heldout_stats
        n_held = int(held.count.sum()) if held is not None else 0
        if FALLBACK_EXTRA in self.extra:
            from ..eval.temperature import TemperatureFit, temperature_bound_warning

            t = float(self.extra.get("temperature", float("nan")))
            msg = temperature_bound_warning(TemperatureFit(t, str(self.extra[FALLBACK_EXTRA]), n_held),
                                            "held-out target rows")
            out.append(f"calib_targets: temperature: {msg} So this refresh's targets fall back to the held-out bin rule "
                       "(the argmax option gets the held-out accuracy of its confidence bin, shrunk toward the training "
                       "rows' by calib_heldout_prior), as with calib_bin_accuracy: heldout and calib_targets: bin.")
        coverage = self.extra.get(COVERAGE_EXTRA)
        if coverage is not None and float(coverage) == 0.0 and held is not None:
            train_bins = [m for m in range(self.n_bins) if int(self.bin_count[m]) > 0]
            held_bins = [m for m in range(self.n_bins) if int(held.count[m]) > 0]
            ks_tr = sorted(int(k) for k in self.extra.get(TRAIN_KS_EXTRA, torch.zeros(0)).tolist())
            ks_h = sorted(int(k) for k in self.extra.get(HELDOUT_KS_EXTRA, torch.zeros(0)).tolist())
            cause = (f"the training rows have {ks_tr} options and the held-out rows {ks_h}: a K-option row's top "
                     "probability is at least 1/K, so the two sets' confidences fall in different bins"
                     if ks_tr and ks_h and not set(ks_tr) & set(ks_h) else
                     "the model's confidence on the two sets does not overlap")
            out.append(f"calib_bin_accuracy: heldout, but none of the {int(self.bin_count.sum())} training rows' "
                       f"confidence bins (bins {train_bins}) holds one of the {n_held} held-out target rows (bins "
                       f"{held_bins}), so every q came from the training rows, not from held-out rows: {cause}. Use "
                       "held-out rows like the training rows (the same option counts), or calib_bin_accuracy: train.")
        return out

    @property
    def heldout_stats(self) -> Optional[BinStatistics]:
        """The held-out rows' bin statistics of this refresh (None without held-out rows)."""
        if "heldout_bin_count" not in self.extra:
            return None
        return BinStatistics(self.extra["heldout_bin_count"], self.extra["heldout_bin_accuracy"],
                             self.extra["heldout_bin_confidence"])


def _state_problem(d) -> Optional[str]:
    """What is wrong with a loaded state dict (None if it is consistent)."""
    if not isinstance(d, dict):
        return f"expected a dict, found {type(d).__name__}"
    if d.get("version") not in _READABLE_VERSIONS:
        return f"version {d.get('version')!r}, readable versions are {list(_READABLE_VERSIONS)}"
    tensors = ("sample_ids", "targets", "bin_count", "bin_accuracy", "bin_confidence")
    ints = ("refresh_count", "epoch_refreshed", "global_step")
    missing = [k for k in tensors + ints if k not in d]
    if missing:
        return f"missing entries {missing}"
    bad = [k for k in tensors if not isinstance(d[k], torch.Tensor)]
    if bad:
        return f"entries {bad} are not tensors"
    for k in ints:
        if isinstance(d[k], bool) or not isinstance(d[k], int):
            return f"entry {k!r} must be an int, found {type(d[k]).__name__} {d[k]!r}"[:300]
    extra = d.get("extra")
    if extra is not None and not isinstance(extra, dict):
        return f"entry 'extra' must be a dict, found {type(extra).__name__}"
    problem = _extra_problem(extra or {})
    if problem:
        return problem
    if not d["targets"].is_floating_point():
        return f"targets must be floating point, found {d['targets'].dtype}"
    ids, targets = d["sample_ids"], d["targets"]
    if ids.ndim != 1 or ids.dtype != torch.int64:
        return f"sample_ids must be a 1-D int64 tensor, found {tuple(ids.shape)} {ids.dtype}"
    if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
        return "sample_ids are not sorted and unique"
    if targets.ndim != 2 or targets.shape[0] != ids.shape[0]:
        return f"targets have shape {tuple(targets.shape)} for {ids.shape[0]} sample ids"
    unmeasured = torch.isnan(targets).all(dim=1)  # prompts a subsampled first E-step left to live targets
    rest = targets[~unmeasured]
    if not bool(torch.isfinite(rest).all()) or bool((rest < 0).any()) or bool((rest > 1).any()):
        return "targets contain values outside [0, 1] or NaN"
    if bool(unmeasured.any()) and not all(k in (d.get("extra") or {}) for k in (LIVE_COUNT, LIVE_HITS, LIVE_WINDOW)):
        return "targets of unmeasured prompts are NaN but the state holds no running bin statistics to target them with"
    sums = rest.to(torch.float64).sum(dim=1)
    if rest.numel() and bool(((sums - 1.0).abs() > _SUM_TOL).any()):
        row = int(((sums - 1.0).abs() > _SUM_TOL).nonzero()[0])
        return (f"targets: {int(((sums - 1.0).abs() > _SUM_TOL).sum())} row(s) do not sum to 1 (e.g. a row summing to "
                f"{float(sums[row]):.6g}): every target is a distribution over its row's options")
    for a, b in (("golds", "sample_ids"), ("num_options", "sample_ids"), ("heldout_golds", "heldout_golds_ids"),
                 ("heldout_num_options", "heldout_golds_ids")):
        ref = ids if b == "sample_ids" else (extra or {}).get(b)
        if a in (extra or {}) and (ref is None or extra[a].shape != ref.shape):
            return f"extra entry {a!r} has shape {tuple(extra[a].shape)}, {b} {None if ref is None else tuple(ref.shape)}"
    ks = (extra or {}).get("num_options")
    if isinstance(ks, torch.Tensor) and ks.shape == ids.shape and ids.numel():
        k = ks.to(torch.int64)
        if bool((k < 2).any()) or bool((k > targets.shape[1]).any()):
            return f"extra 'num_options' holds option counts outside [2, {targets.shape[1]}]"
        beyond = (torch.arange(targets.shape[1]).view(1, -1) >= k.view(-1, 1)) & (targets.nan_to_num(0.0) != 0)
        if bool(beyond.any()):
            return (f"targets: {int(beyond.any(dim=1).sum())} row(s) put probability on options beyond the row's option "
                    "count (extra 'num_options')")
    m = d["bin_count"].numel()
    if d["bin_accuracy"].numel() != m or d["bin_confidence"].numel() != m or m < 2:
        return "the bin statistics have inconsistent lengths"
    return None


#: how far a stored target row's sum may be from 1 (float32 targets built in float64)
_SUM_TOL = 1e-4
#: ``extra`` entries that must be tensors when present, and those that must be dicts
_EXTRA_TENSORS = ("golds", "num_options", "bin_target", "heldout_bin_count", "heldout_bin_accuracy",
                  "heldout_bin_confidence", "temperature", "heldout_golds_ids", "heldout_golds", "heldout_num_options",
                  LIVE_COUNT, LIVE_HITS, LIVE_WINDOW, COVERAGE_EXTRA, TRAIN_KS_EXTRA, HELDOUT_KS_EXTRA,
                  "online_table_ids", "online_table_probs", "online_record_ids", "online_record_probs")
_EXTRA_DICTS = ("target_settings", RULE_EXTRA)


def _extra_problem(extra: dict) -> Optional[str]:
    """A wrong-typed entry of a state's ``extra`` section, named (None if every known entry has its type)."""
    for k in _EXTRA_TENSORS:
        if k in extra and not isinstance(extra[k], torch.Tensor):
            return f"extra entry {k!r} must be a tensor, found {type(extra[k]).__name__}"
    for k in _EXTRA_DICTS:
        if k in extra and not isinstance(extra[k], dict):
            return f"extra entry {k!r} must be a dict, found {type(extra[k]).__name__}"
    if FALLBACK_EXTRA in extra and extra[FALLBACK_EXTRA] not in ("lower", "upper"):
        return f"extra entry {FALLBACK_EXTRA!r} must be 'lower' or 'upper', found {extra[FALLBACK_EXTRA]!r}"
    return None
