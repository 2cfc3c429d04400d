"""Pure analysis of the demo's evaluation outputs: metrics, preference collapse, temperature scaling.

Everything takes per-question option log-likelihoods (what lm-eval computed for the continuations
``" A"`` .. ``" D"``) and uses :mod:`axolotl_calib_plugin.metrics` for every ECE / accuracy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .. import metrics
from ..eval.temperature import apply_temperature, fit_temperature

N_BINS = metrics.DEFAULT_N_BINS


@dataclass
class Scores:
    conf_ece: float
    cw_ece: float
    acc: float
    mean_conf: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def scores(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> Scores:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    return Scores(
        conf_ece=metrics.conf_ece(probs, labels, n_bins),
        cw_ece=metrics.cw_ece(probs, labels, n_bins),
        acc=metrics.accuracy(probs, labels),
        mean_conf=float(probs.max(axis=1).mean()),
        n=int(len(labels)),
    )


@dataclass
class PairStats:
    """Preference collapse on held-out pairs (one pair (a, b) of options per question).

    With r = pi(a) / (pi(a) + pi(b)) (sequence probabilities of the two answers; the paper's preference
    ratio, Sec. 3 of the paper):

    * ``pref_ratio``: mean over pairs of the ratio of the answer the model prefers, max(r, 1 - r);
      ``true_pref``: mean true probability P(y_m > y_o | x) = p*_m / (p*_m + p*_o) of that same answer
      winning (Bradley-Terry on p*). pref_ratio > true_pref is the paper's preference collapse
      (the model's preference ratio exceeds the true preference proportion); the oracle has equality.
    * ``ratio_hi`` / ``true_hi``: the same with the pair oriented by p* (y_hi = the truly preferred answer).
    * ``rank_acc``: share of held-out sampled preference labels the model ranks correctly,
      pi(chosen) > pi(rejected) (the oracle's rank_acc is the ceiling).
    """

    pref_ratio: float
    true_pref: float
    ratio_hi: float
    true_hi: float
    rank_acc: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def pair_stats(logliks: np.ndarray, pairs: list[dict], p_star: np.ndarray) -> PairStats:
    """``logliks`` (n, K): log pi(letter | prompt) (full vocabulary; any per-row shift cancels in the ratio)."""
    ll = np.asarray(logliks, dtype=np.float64)
    ps = np.asarray(p_star, dtype=np.float64)
    if len(pairs) != len(ll) or len(ps) != len(ll):
        raise ValueError(f"{len(pairs)} pairs, {len(ll)} log-likelihood rows and {len(ps)} p* rows must match")
    w = np.array([p["chosen_idx"] for p in pairs])
    lo = np.array([p["rejected_idx"] for p in pairs])
    rows = np.arange(len(ll))
    r_w = 1.0 / (1.0 + np.exp(ll[rows, lo] - ll[rows, w]))  # model's ratio for the labelled winner
    t_w = ps[rows, w] / (ps[rows, w] + ps[rows, lo])  # true P(winner > loser)
    model_prefers_w = r_w >= 0.5
    hi_is_w = t_w >= 0.5
    return PairStats(
        pref_ratio=float(np.where(model_prefers_w, r_w, 1 - r_w).mean()),
        true_pref=float(np.where(model_prefers_w, t_w, 1 - t_w).mean()),
        ratio_hi=float(np.where(hi_is_w, r_w, 1 - r_w).mean()),
        true_hi=float(np.where(hi_is_w, t_w, 1 - t_w).mean()),
        rank_acc=float((ll[rows, w] > ll[rows, lo]).mean()),
        n=int(len(ll)),
    )


def reward_stats(logliks: np.ndarray, rewards: np.ndarray, reference: np.ndarray | None = None) -> dict:
    """Exact alignment metrics on the preference domain (known reward, so no judge and no sampling).

    ``logliks`` (n, K): log pi(reply | prompt) of every candidate reply; the policy is their row-wise
    softmax. ``rewards`` (n, K): r*. ``reference`` (n, K): another model's log-likelihoods (the DPO model).

    * ``expected_reward``: mean over prompts of E_{y ~ pi}[r*(x, y)];
    * ``best_reply``: mean probability of the highest-reward reply;
    * ``pref_ratio`` / ``true_pref``: over every pair of replies of every prompt, the model's ratio
      pi_m / (pi_m + pi_o) of the reply it prefers, and the true probability sigmoid(r*_m - r*_o) that it
      wins (preference collapse when the ratio exceeds it); ``pair_rank_acc``: share of pairs ordered as r*;
    * with ``reference``: ``win_rate`` P[r*(y) > r*(y_ref)] + 1/2 P[tie], y ~ pi, y_ref ~ the reference.
    """
    from scipy.special import expit, softmax

    from ..eval.preference import expected_reward, win_rate

    z = np.asarray(logliks, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    if z.shape != r.shape or z.ndim != 2:
        raise ValueError(f"log-likelihoods {z.shape} and rewards {r.shape} must both be (n_prompts, n_replies)")
    pi = softmax(z, axis=1)
    a, b = np.triu_indices(r.shape[1], k=1)
    d_model, d_true = z[:, a] - z[:, b], r[:, a] - r[:, b]
    prefers_a = d_model >= 0
    out = {
        "expected_reward": expected_reward(pi, r),
        "best_reply": float(pi[np.arange(len(r)), r.argmax(axis=1)].mean()),
        "pref_ratio": float(np.where(prefers_a, expit(d_model), expit(-d_model)).mean()),
        "true_pref": float(np.where(prefers_a, expit(d_true), expit(-d_true)).mean()),
        "pair_rank_acc": float(((d_model > 0) == (d_true > 0)).mean()),
        "n": int(len(r)),
    }
    if reference is not None:
        out["win_rate"] = win_rate(pi, softmax(np.asarray(reference, dtype=np.float64), axis=1), r)
    return out


def reward_bounds(rewards: np.ndarray) -> dict:
    """Reference points of the expected reward: the uniform policy and the best reply every time."""
    r = np.asarray(rewards, dtype=np.float64)
    return {"uniform": float(r.mean()), "best": float(r.max(axis=1).mean())}


def temperature_scale(fit_logliks: np.ndarray, fit_labels: np.ndarray, *eval_logliks: np.ndarray):
    """Fit one T on the held-out set; return ``(T, [probs of each eval set], [scaled logliks])``."""
    t = fit_temperature(fit_logliks, fit_labels)
    probs = [apply_temperature(z, t) for z in eval_logliks]
    scaled = [np.asarray(z, dtype=np.float64) / t for z in eval_logliks]
    return t, probs, scaled


def bin_table(probs: np.ndarray, labels: np.ndarray, n_bins: int = metrics.DEFAULT_N_BINS) -> dict:
    """Per max-confidence bin: count, accuracy and mean confidence (lists; None for empty bins), JSON-safe."""
    rb = metrics.reliability_bins(probs, labels, n_bins=n_bins, kind="conf")

    def clean(a):
        return [None if np.isnan(v) else round(float(v), 6) for v in a]

    return {"count": [int(c) for c in rb.count], "acc": clean(rb.accuracy), "conf": clean(rb.mean_confidence)}
