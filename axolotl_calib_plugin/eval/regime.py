"""Regime diagnosis: does a model look *calibratable* (use CFT) or *non-calibratable* (use RCFT)?

What the paper says (Xiao et al., ICML 2025, Sec. 4 and its take-away messages):

* calibratable regime: ECE can be driven to zero **without sacrificing accuracy**; non-calibratable
  regime: a fundamental trade-off, a strictly positive lower bound on ECE once the model's accuracy
  exceeds a critical accuracy (set by the target generative model);
* "preference-aligned models lie in the calibratable regime -> CFT restores calibration without
  sacrificing performance"; "overly fine-tuned models shift into the non-calibratable regime -> RCFT
  navigates the ECE/performance trade-off".

The paper gives **no operational test**. The rule below is **ours**, built on what the EM loop of
(R)CFT actually sees. Its M-step sets each bin's target confidence to that bin's accuracy ON THE
TRAINING SET (Algorithm 1). So:

1. *Memorisation gap* (decisive when training-set predictions are given). If the model is more accurate
   on the questions it would be fine-tuned on than on unseen ones -- beyond sampling noise (a
   two-proportion z-test) and by more than ``gap_tol`` -- it has fitted those questions' golds: the
   E-step's bin accuracies, hence the targets, are above what the model achieves on new questions, and
   training-set calibration cannot reach held-out calibration without giving up the fit. In the paper's
   terms its accuracy on the calibration data is above the critical accuracy: non-calibratable.
2. *Oracle accuracy* (optional ``acc_star``, e.g. a known ceiling): held-out accuracy above
   ``acc_star + acc_tol`` is above the critical accuracy (our reading of the bound: ECE >= acc - acc*).
3. *Temperature test* (reported always; decisive only without training-set predictions): one
   temperature, cross-fitted on two halves of the held-out set, brings conf-ECE below
   ``max(abs_tol, rel_tol * ECE, noise_mult * noise)`` (noise = the conf-ECE a perfectly calibrated model
   shows at this sample size). It shows that the miscalibration is a global over/under-confidence, which
   accuracy-preserving training can remove. Passing it is evidence for "calibratable", never proof: any
   model reaches conf-ECE 0 at unchanged accuracy by mapping every confidence to its overall accuracy, so
   no held-out-only statistic can show a model is *non*-calibratable.

Verdict: non-calibratable (RCFT advised) if 1 or 2 fires; otherwise calibratable (CFT advised) -- except
that without training-set predictions a failed temperature test also gives non-calibratable. Every
number and the reason is returned, so the CLI prints the reasoning.

Before any of that, the model must be answering. With accuracy within noise of chance, one letter taking most
answers (:mod:`.chance`: chance level, predicted letters) or a fitted temperature ``T >= FLAT_T`` (dividing the
scores by a large T leaves near-uniform probabilities: the model cannot separate its options), the rule's
verdict is kept in the fields but not printed as advice: ``caveat`` says that calibrating such a model only
flattens its probabilities (low ECE at the same useless accuracy) and what to fix first.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
from scipy.special import softmax
from scipy.stats import norm

from .. import metrics
from .temperature import apply_temperature, fit_temperature, probs_to_logits

N_BINS = metrics.DEFAULT_N_BINS

#: a fitted temperature from which the scaled probabilities count as near-uniform. T divides the option
#: log-likelihoods: at T = 4 a model whose raw top option is 20 times likelier than the next one (log-odds 3)
#: keeps a ratio of 2.1, and the T ~ 40 seen on models that answer one letter everywhere leaves every option at
#: about 1/K.
FLAT_T = 4.0


@dataclass
class Diagnosis:
    conf_ece: float
    cw_ece: float
    acc: float
    mean_conf: float
    n: int
    n_options: int
    ts_temperature: float
    ts_conf_ece: float
    ts_threshold: float
    noise: float
    acc_star: Optional[float]
    train_acc: Optional[float]
    train_conf_ece: Optional[float]
    train_n: Optional[int]
    gap: Optional[float]
    gap_z: Optional[float]
    verdict: str  # "calibratable" | "non-calibratable"
    advice: str  # "CFT" | "RCFT" (what the rule gives; read ``caveat`` first)
    reasons: list[str] = field(default_factory=list)
    chance: dict = field(default_factory=dict)  # ChanceCheck.as_dict(): chance level, predicted letters, warnings
    ts_mean_conf: Optional[float] = None  # mean confidence after dividing the logits by ts_temperature
    flat: bool = False  # ts_temperature >= FLAT_T: the fitted temperature makes the probabilities near-uniform
    caveat: Optional[str] = None  # set when the verdict must not be read as advice (model at chance, T >> 1)

    def as_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        lines = [
            f"held-out: n = {self.n} questions, K = {self.n_options} options",
            f"conf-ECE {self.conf_ece:.4f}   cw-ECE {self.cw_ece:.4f}   acc {self.acc:.4f}   "
            f"mean confidence {self.mean_conf:.4f} ({'over' if self.mean_conf > self.acc else 'under'}-confident by "
            f"{abs(self.mean_conf - self.acc):.4f})",
        ]
        if self.train_acc is not None:
            lines.append(f"training data: n = {self.train_n}, acc {self.train_acc:.4f}, conf-ECE {self.train_conf_ece:.4f}; "
                         f"accuracy gap train - held-out {self.gap:+.4f} (z = {self.gap_z:.2f})")
        if self.chance:
            from .chance import ChanceCheck

            lines += ChanceCheck(**self.chance).lines("held-out")
        lines.append(f"2-fold temperature test: T ~ {self.ts_temperature:.3f}, held-out conf-ECE {self.ts_conf_ece:.4f} "
                     f"(threshold {self.ts_threshold:.4f}; a calibrated model would show ~{self.noise:.4f} at this n)")
        if self.acc_star is not None:
            lines.append(f"oracle accuracy acc* = {self.acc_star:.4f}")
        lines.append("Reasoning (heuristic of axolotl-calib, not from the paper; see axolotl_calib_plugin/eval/regime.py):")
        lines += [f"  - {r}" for r in self.reasons]
        if self.caveat:
            lines.append(f"Verdict: none to act on. {self.caveat}. (The rule alone would give: {self.verdict} -> "
                         f"{self.advice}.)")
        else:
            lines.append(f"Verdict: {self.verdict} -> {self.advice} advised "
                         f"({'calib_mode: cft' if self.advice == 'CFT' else 'calib_mode: rcft'})")
        return "\n".join(lines)


def ece_noise(probs, labels, n_bins: int = N_BINS) -> float:
    """Expected conf-ECE of a *perfectly calibrated* model with this confidence histogram and n:
    sum_m (n_m/n) * sqrt(2 c_m (1 - c_m) / (pi n_m)) (mean absolute deviation of a binomial bin mean,
    normal approximation). ECE differences below a couple of these are sampling noise."""
    p, y = metrics.validate_probs_labels(probs, labels)
    rb = metrics.reliability_bins(p, y, n_bins=n_bins, kind="conf")
    c = np.nan_to_num(rb.mean_confidence, nan=0.5)
    nm = np.maximum(rb.count, 1)
    return float(np.sum(rb.weight * np.sqrt(2 * c * (1 - c) / (np.pi * nm))))


#: the logit given to an option of probability exactly 0 (a zero-padded option of a row with fewer options):
#: divided by any fitted T (at most 100) it stays below -100, so the option keeps probability ~0 under scaling.
_ZERO_LOGIT = -1e4


def cross_fitted_ts_ece(probs, labels, n_bins: int = N_BINS, seed: int = 0) -> tuple[float, float]:
    """2-fold cross-fitted temperature scaling: (geometric-mean T, conf-ECE of the held-out halves pooled).
    Zero-padded options (mixed option counts) stay at probability 0 under every T: padding does not change T."""
    p, y = metrics.validate_probs_labels(probs, labels)
    p, y = p.numpy(), y.numpy()
    n = len(y)
    z = np.where(p > 0, probs_to_logits(p), _ZERO_LOGIT)
    if n < 4:
        t = fit_temperature(z, y)
        return t, metrics.conf_ece(apply_temperature(z, t), y, n_bins)
    perm = np.random.default_rng(seed).permutation(n)
    halves = (perm[: n // 2], perm[n // 2:])
    scaled = np.empty_like(p)
    temps = []
    for fit_idx, ev_idx in (halves, halves[::-1]):
        t = fit_temperature(z[fit_idx], y[fit_idx])
        temps.append(t)
        scaled[ev_idx] = apply_temperature(z[ev_idx], t)
    return float(np.exp(np.mean(np.log(temps)))), metrics.conf_ece(scaled, y, n_bins)


def accuracy_gap_z(acc_a: float, n_a: int, acc_b: float, n_b: int) -> float:
    """Two-proportion z statistic of ``acc_a - acc_b`` (pooled standard error); 0 when both are 0 or 1."""
    pooled = (acc_a * n_a + acc_b * n_b) / (n_a + n_b)
    se = math.sqrt(max(pooled * (1 - pooled), 0.0) * (1 / n_a + 1 / n_b))
    return 0.0 if se == 0 else (acc_a - acc_b) / se


def diagnose(probs, labels, *, train_probs=None, train_labels=None, acc_star: float | None = None,
             n_bins: int = N_BINS, abs_tol: float = 0.05, rel_tol: float = 0.5, noise_mult: float = 2.0,
             gap_tol: float = 0.05, alpha: float = 0.01, acc_tol: float = 0.02,
             num_options=None) -> Diagnosis:
    """Apply the rule of the module docstring.

    ``probs`` (n, K) / ``labels``: the model's option probabilities and golds on HELD-OUT questions;
    ``train_probs`` / ``train_labels`` (optional, recommended): the same on the data (R)CFT would train on.
    ``num_options``: each row's own K where rows are zero-padded to the largest (default: the row's nonzero
    probabilities, which is what softmax of -inf-padded log-likelihoods leaves); it sets the chance level.
    """
    p, y = metrics.validate_probs_labels(probs, labels)
    m = metrics.calibration_metrics(p, y, n_bins)
    ece, acc = m["conf_ece"], m["accuracy"]
    mean_conf = float(p.max(dim=1).values.mean())
    t, ts_ece = cross_fitted_ts_ece(p, y, n_bins)
    noise = ece_noise(p, y, n_bins)
    thr = max(abs_tol, rel_tol * ece, noise_mult * noise)
    reasons: list[str] = []
    ts_passes = ece <= thr or ts_ece <= thr
    if ece <= thr:
        reasons.append(f"held-out conf-ECE {ece:.4f} is already within the threshold {thr:.4f} (T = 1 suffices)")
    elif ts_ece <= thr:
        reasons.append(f"one temperature (T ~ {t:.2f}) brings held-out conf-ECE from {ece:.4f} to {ts_ece:.4f} <= {thr:.4f}: "
                       "the miscalibration is a global over/under-confidence, removable without changing predictions")
    else:
        reasons.append(f"the best single temperature leaves held-out conf-ECE {ts_ece:.4f} > {thr:.4f}: the confidence "
                       "ranking itself is off")
    non_calibratable = False
    train_acc = train_ece = gap = z_gap = None
    train_n = None
    if train_probs is not None:
        tp, ty = metrics.validate_probs_labels(train_probs, train_labels)
        tm = metrics.calibration_metrics(tp, ty, n_bins)
        train_acc, train_ece, train_n = tm["accuracy"], tm["conf_ece"], int(len(ty))
        gap = train_acc - acc
        z_gap = accuracy_gap_z(train_acc, train_n, acc, int(len(y)))
        z_crit = float(norm.ppf(1 - alpha))
        if gap > gap_tol and z_gap > z_crit:
            non_calibratable = True
            reasons.append(f"accuracy on the training data {train_acc:.4f} exceeds held-out accuracy {acc:.4f} by {gap:.4f} "
                           f"(> {gap_tol}, z = {z_gap:.1f} > {z_crit:.2f}): the model has fitted those questions, so the "
                           "E-step's bin accuracies (the M-step's targets) overstate what it achieves on new questions")
        else:
            reasons.append(f"accuracy on the training data {train_acc:.4f} is not significantly above held-out accuracy "
                           f"{acc:.4f} (gap {gap:+.4f}, z = {z_gap:.1f}): the E-step's targets reflect held-out accuracy")
    elif not ts_passes:
        non_calibratable = True
        reasons.append("no training-set predictions given (--train-data): the failed temperature test decides; "
                       "pass the data you would fine-tune on for the decisive memorisation check")
    else:
        reasons.append("no training-set predictions given (--train-data): the verdict rests on the temperature test "
                       "alone, which cannot rule out memorisation")
    if acc_star is not None:
        if acc > acc_star + acc_tol:
            non_calibratable = True
            reasons.append(f"accuracy {acc:.4f} exceeds the oracle's {acc_star:.4f} (+{acc_tol}): above the critical "
                           "accuracy the paper's bound keeps ECE > 0 (our reading: ECE >= acc - acc*)")
        else:
            reasons.append(f"accuracy {acc:.4f} is not above the oracle's {acc_star:.4f} (+{acc_tol})")
    reasons.append("paper's take-away: preference-aligned models are typically calibratable (CFT); over-fine-tuned "
                   "models non-calibratable (RCFT)")
    from .chance import chance_check

    pn = p.numpy()
    ks = (pn > 0).sum(axis=1) if num_options is None else np.asarray(num_options, dtype=np.int64)
    chance = chance_check(pn, y.numpy(), ks)
    pad = np.arange(pn.shape[1])[None, :] >= ks[:, None]
    scaled = softmax(np.where(pad, -np.inf, probs_to_logits(pn) / t), axis=1)  # padding stays at 0 under any T
    ts_mean_conf = float(scaled.max(axis=1).mean())
    flat = t >= FLAT_T
    if flat:
        reasons.append(f"the fitted temperature T ~ {t:.1f} (>= {FLAT_T:g}) divides the option scores by {t:.1f}: the "
                       f"scaled probabilities are near-uniform (mean confidence {ts_mean_conf:.4f} against chance "
                       f"{chance.chance:.4f}). The model's scores barely separate its answers, so the lowest ECE it can "
                       "reach comes from saying 'unsure' about every question; CFT would get there the same way, by "
                       "flattening every answer, which lowers ECE without making any answer more useful")
    caveat = None
    if chance.near_chance or chance.below_chance or chance.one_letter or flat:
        why = []
        if chance.near_chance or chance.below_chance:
            why.append(f"accuracy {acc:.4f} is not distinguishable from chance {chance.chance:.4f}"
                       if chance.near_chance else f"accuracy {acc:.4f} is below chance {chance.chance:.4f}")
        if chance.one_letter:
            why.append(f"{chance.top_letter} is its answer on {chance.top_share:.0%} of the questions")
        if flat:
            why.append(f"the fitted T ~ {t:.1f} flattens every answer")
        caveat = ("The model is not answering these questions (" + "; ".join(why) + "). Calibrating it (CFT or RCFT) "
                  "would only make its probabilities near-uniform, a low ECE at the same useless accuracy. First make "
                  "it answer: the chat template for an instruct model (--apply-chat-template / calib_prompt_format: "
                  "chat_template), the option letters it was trained with, or a stronger model; then diagnose again")
    verdict = "non-calibratable" if non_calibratable else "calibratable"
    return Diagnosis(conf_ece=ece, cw_ece=m["cw_ece"], acc=acc, mean_conf=mean_conf, n=int(len(y)),
                     n_options=int(p.shape[1]), ts_temperature=t, ts_conf_ece=ts_ece, ts_threshold=thr, noise=noise,
                     acc_star=acc_star, train_acc=train_acc, train_conf_ece=train_ece, train_n=train_n, gap=gap,
                     gap_z=z_gap, verdict=verdict, advice="RCFT" if non_calibratable else "CFT", reasons=reasons,
                     chance=chance.as_dict(), ts_mean_conf=ts_mean_conf, flat=flat, caveat=caveat)
