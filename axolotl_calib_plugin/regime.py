"""Regime diagnosis: does a model look *calibratable* (use CFT) or *non-calibratable* (use RCFT)?

What the paper says (Xiao et al., ICML 2025, Sec. 4 and its take-away messages):

* calibratable regime: ECE can be driven to zero **without sacrificing accuracy**; non-calibratable
  regime: a fundamental trade-off between ECE and accuracy (a strictly positive lower bound on ECE
  above a critical accuracy);
* take-aways: "preference-aligned models lie in the calibratable regime -> CFT restores calibration
  without sacrificing performance"; "overly fine-tuned models shift into the non-calibratable
  regime -> RCFT navigates the ECE/performance trade-off";
* temperature scaling keeps accuracy, so it cannot move a model across the boundary.

The paper gives **no operational test**. The rule below is **ours** (a heuristic, not the paper's):

1. *Accuracy-preserving floor* (exact on the evaluated set). Keeping every prediction (the argmax), the
   best any recalibration can do is to set each confidence bin's confidence to its accuracy, except that
   a K-option argmax can never have confidence below 1/K. So
   ``floor = sum_m (n_m / n) * max(0, 1/K - acc_m)`` over the model's own confidence bins is a lower
   bound on the conf-ECE reachable at unchanged accuracy by re-binning; a floor above ``floor_tol``
   means the errors are not a monotone over-confidence problem.
2. *Temperature test* (2-fold cross-fitted, so it measures generalisation, not memorisation): fit one
   temperature on one half, measure conf-ECE on the other, and vice versa. If the conf-ECE is already
   below the threshold (T = 1), or a single temperature
   brings the conf-ECE below ``max(abs_tol, rel_tol * ECE, noise_mult * noise)``, the miscalibration is a global
   over/under-confidence that accuracy-preserving training (CFT) can remove. The threshold is raised
   to ``noise_mult`` times the conf-ECE a perfectly calibrated model would show at this sample size
   (:func:`ece_noise`), so sampling noise alone never makes a model "non-calibratable".
3. *Optional oracle* (``acc_star``, e.g. the demo world's E[max p*] or a known ceiling): the paper's
   bound has the shape "ECE > 0 once accuracy exceeds the critical accuracy"; our reading
   (unverified) is ECE >= acc - acc*. A model more accurate than ``acc_star + acc_tol``
   is reported non-calibratable.

Verdict: calibratable (CFT advised) iff the floor is small, the temperature test passes and (when
given) accuracy is not above the oracle's; otherwise non-calibratable (RCFT advised). Every number
and the reason is returned, so the CLI prints the reasoning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from . import metrics
from .temperature import apply_temperature, fit_temperature, probs_to_logits

N_BINS = metrics.DEFAULT_N_BINS


@dataclass
class Diagnosis:
    conf_ece: float
    cw_ece: float
    acc: float
    mean_conf: float
    n: int
    n_options: int
    floor: float
    ts_temperature: float
    ts_conf_ece: float
    ts_threshold: float
    noise: float
    acc_star: float | None
    verdict: str  # "calibratable" | "non-calibratable"
    advice: str  # "CFT" | "RCFT"
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        lines = [
            f"n = {self.n} questions, K = {self.n_options} options",
            f"conf-ECE {self.conf_ece:.4f}   cw-ECE {self.cw_ece:.4f}   acc {self.acc:.4f}   "
            f"mean confidence {self.mean_conf:.4f} ({'over' if self.mean_conf > self.acc else 'under'}-confident by "
            f"{abs(self.mean_conf - self.acc):.4f})",
            f"accuracy-preserving floor (bins with accuracy below 1/K) {self.floor:.4f}",
            f"2-fold temperature test: T ~ {self.ts_temperature:.3f}, held-out conf-ECE {self.ts_conf_ece:.4f} "
            f"(threshold {self.ts_threshold:.4f}; a calibrated model would show ~{self.noise:.4f} at this n)",
        ]
        if self.acc_star is not None:
            lines.append(f"oracle accuracy acc* = {self.acc_star:.4f}")
        lines.append("Reasoning (heuristic of axolotl-calib, not from the paper; see axolotl_calib_plugin/regime.py):")
        lines += [f"  - {r}" for r in self.reasons]
        lines.append(f"Verdict: {self.verdict} -> {self.advice} advised "
                     f"({'calib_mode: cft' if self.advice == 'CFT' else 'calib_mode: rcft'})")
        return "\n".join(lines)


def accuracy_preserving_floor(probs, labels, n_bins: int = N_BINS) -> float:
    """sum_m (n_m/n) * max(0, 1/K - acc_m) over max-confidence bins (see the module docstring)."""
    p, y = metrics.validate_probs_labels(probs, labels)
    k = p.shape[1]
    rb = metrics.reliability_bins(p, y, n_bins=n_bins, kind="conf")
    acc = np.nan_to_num(rb.accuracy, nan=1.0)
    return float(np.sum(rb.weight * np.maximum(0.0, 1.0 / k - acc)))


def ece_noise(probs, labels, n_bins: int = N_BINS) -> float:
    """Expected conf-ECE of a *perfectly calibrated* model with this confidence histogram and n:
    sum_m (n_m/n) * sqrt(2 c_m (1 - c_m) / (pi n_m)) (mean absolute deviation of a binomial bin mean,
    normal approximation). ECE differences below a couple of these are sampling noise."""
    p, y = metrics.validate_probs_labels(probs, labels)
    rb = metrics.reliability_bins(p, y, n_bins=n_bins, kind="conf")
    c = np.nan_to_num(rb.mean_confidence, nan=0.5)
    nm = np.maximum(rb.count, 1)
    return float(np.sum(rb.weight * np.sqrt(2 * c * (1 - c) / (np.pi * nm))))


def cross_fitted_ts_ece(probs, labels, n_bins: int = N_BINS, seed: int = 0) -> tuple[float, float]:
    """2-fold cross-fitted temperature scaling: (geometric-mean T, conf-ECE of the held-out halves pooled)."""
    p, y = metrics.validate_probs_labels(probs, labels)
    p, y = p.numpy(), y.numpy()
    n = len(y)
    if n < 4:
        t = fit_temperature(probs_to_logits(p), y)
        return t, metrics.conf_ece(apply_temperature(probs_to_logits(p), t), y, n_bins)
    perm = np.random.default_rng(seed).permutation(n)
    halves = (perm[: n // 2], perm[n // 2:])
    z = probs_to_logits(p)
    scaled = np.empty_like(p)
    temps = []
    for fit_idx, ev_idx in (halves, halves[::-1]):
        t = fit_temperature(z[fit_idx], y[fit_idx])
        temps.append(t)
        scaled[ev_idx] = apply_temperature(z[ev_idx], t)
    return float(np.exp(np.mean(np.log(temps)))), metrics.conf_ece(scaled, y, n_bins)


def diagnose(probs, labels, *, acc_star: float | None = None, n_bins: int = N_BINS, abs_tol: float = 0.05,
             rel_tol: float = 0.5, floor_tol: float = 0.02, acc_tol: float = 0.02, noise_mult: float = 2.0) -> Diagnosis:
    """Apply the rule of the module docstring to option probabilities ``probs`` (n, K) and gold ``labels``."""
    p, y = metrics.validate_probs_labels(probs, labels)
    ece = metrics.conf_ece(p, y, n_bins)
    cw = metrics.cw_ece(p, y, n_bins)
    acc = metrics.accuracy(p, y)
    mean_conf = float(p.max(dim=1).values.mean())
    floor = accuracy_preserving_floor(p, y, n_bins)
    t, ts_ece = cross_fitted_ts_ece(p, y, n_bins)
    noise = ece_noise(p, y, n_bins)
    thr = max(abs_tol, rel_tol * ece, noise_mult * noise)
    reasons = []
    calibratable = True
    if floor > floor_tol:
        calibratable = False
        reasons.append(f"{floor:.4f} of conf-ECE cannot be removed at unchanged accuracy (confidence bins whose accuracy "
                       f"is below 1/K = {1 / p.shape[1]:.3f}); floor > {floor_tol}")
    else:
        reasons.append(f"the accuracy-preserving floor is small ({floor:.4f} <= {floor_tol})")
    if ece <= thr:
        reasons.append(f"conf-ECE {ece:.4f} is already within the threshold {thr:.4f} (T = 1 suffices)")
    elif ts_ece <= thr:
        reasons.append(f"one temperature (T ~ {t:.2f}) brings held-out conf-ECE from {ece:.4f} to {ts_ece:.4f} <= {thr:.4f}: "
                       "the miscalibration is a global over/under-confidence, removable without changing predictions")
    else:
        calibratable = False
        reasons.append(f"the best single temperature leaves held-out conf-ECE {ts_ece:.4f} > {thr:.4f}: the confidence "
                       "ranking itself is off, so calibration will cost accuracy (a trade-off)")
    if acc_star is not None:
        if acc > acc_star + acc_tol:
            calibratable = False
            reasons.append(f"accuracy {acc:.4f} exceeds the oracle's {acc_star:.4f} (+{acc_tol}): above the critical "
                           "accuracy the paper's bound keeps ECE > 0 (our reading: ECE >= acc - acc*)")
        else:
            reasons.append(f"accuracy {acc:.4f} is not above the oracle's {acc_star:.4f} (+{acc_tol})")
    reasons.append("paper's take-away: preference-aligned models are typically calibratable (CFT); over-fine-tuned "
                   "models non-calibratable (RCFT)")
    verdict = "calibratable" if calibratable else "non-calibratable"
    return Diagnosis(conf_ece=ece, cw_ece=cw, acc=acc, mean_conf=mean_conf, n=int(len(y)), n_options=int(p.shape[1]),
                     floor=floor, ts_temperature=t, ts_conf_ece=ts_ece, ts_threshold=thr, noise=noise, acc_star=acc_star,
                     verdict=verdict, advice="CFT" if calibratable else "RCFT", reasons=reasons)
