"""The state of the calibration targets between two EM refreshes: :class:`EMState`.

The tensor math of a refresh lives in :mod:`axolotl_calib_plugin.train.em`; this module keeps its result and what
the trainer and checkpoints need around it: the loss's target lookup by sample id, the live targets of prompts a
subsampled first E-step left unmeasured (running per-bin statistics, synchronised across data-parallel ranks), the
logged summary and warnings, and a versioned ``calib_state.pt`` whose contents are checked on load (a file that
cannot be used names itself and the remedy instead of resuming with wrong targets).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .em import (
    COVERAGE_EXTRA,
    FALLBACK_EXTRA,
    HELDOUT_KS_EXTRA,
    TRAIN_KS_EXTRA,
    BinStatistics,
    assign_bins,
    build_targets,
    em_step,
)

__all__ = ["LIVE_COUNT", "LIVE_HITS", "LIVE_WINDOW", "RULE_EXTRA", "STATE_FILE", "CalibStateError", "EMState"]

STATE_FILE = "calib_state.pt"
#: ``EMState.extra`` key: the M-step rule of the refresh (split, target kind), which :meth:`EMState.fill_live` reuses
RULE_EXTRA = "target_rule"
#: ``EMState.extra`` keys of the live targets' running per-bin statistics and how many positions they span
LIVE_COUNT, LIVE_HITS, LIVE_WINDOW = "live_bin_count", "live_bin_hits", "live_window"
_STATE_VERSION = 2
#: versions :meth:`EMState.load` reads (1 = before the ``extra`` section existed)
_READABLE_VERSIONS = (1, 2)


class CalibStateError(ValueError):
    """A ``calib_state.pt`` that cannot be used; the message names the file and what to do."""


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
