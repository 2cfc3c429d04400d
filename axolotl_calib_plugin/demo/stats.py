"""Across-seed statistics of the studies: means with t confidence intervals, paired differences, verdicts,
Holm's adjustment, the seeds a margin needs, and the text formats every study renders them in.

Each seed is one independent replicate of the whole experiment (its own world, data draws, initial
weights and training order), so the seeds' values of a cell are i.i.d. draws of a random variable whose
mean is the quantity of interest. With few seeds (5-10) the Student t interval is the standard, exact
interval under normality and robust enough for means of bounded metrics. Comparisons between two methods
are PAIRED: both were run on the same seeds (same world, same start model), so the per-seed difference
removes the between-seed variance that both share; the paired t interval and the paired t-test
(``scipy.stats.ttest_rel``) are computed on those differences.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats

__all__ = ["equivalence", "fmt_ci", "fmt_diff", "fmt_pm", "fmt_pt", "holm", "mean_ci", "non_inferior",
           "paired_difference", "seeds_needed", "seeds_to_clear", "verdict"]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean and two-sided Student-t confidence interval of ``values`` (NaNs dropped).

    Returns ``{"mean", "lo", "hi", "half", "sd", "n"}``; with one value the interval is undefined (NaN).
    """
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        nan = float("nan")
        return {"mean": nan, "lo": nan, "hi": nan, "half": nan, "sd": nan, "n": 0}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "lo": float("nan"), "hi": float("nan"), "half": float("nan"), "sd": float("nan"), "n": 1}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1) * sd / math.sqrt(n))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "half": half, "sd": sd, "n": n}


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """``a - b`` over the seeds where both exist: mean, t interval, paired t-test p-value, significance.

    ``significant`` is True when the interval excludes 0 (equivalently p < 1 - confidence).
    """
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and not (math.isnan(x) or math.isnan(y))]
    d = [x - y for x, y in pairs]
    out = mean_ci(d, confidence)
    if len(d) >= 2 and out["sd"] > 0:
        out["p"] = float(stats.ttest_rel([x for x, _ in pairs], [y for _, y in pairs]).pvalue)
    else:
        out["p"] = float("nan") if len(d) < 2 else (0.0 if out["mean"] != 0 else 1.0)
    out["significant"] = bool(out["n"] >= 2 and (out["lo"] > 0 or out["hi"] < 0))
    return out


def verdict(diff: dict, direction: str) -> str:
    """"reproduced" / "not reproduced" / "inconclusive" for a claimed ``direction`` ("<0" or ">0") of a
    paired difference: reproduced if the interval lies on the claimed side, not reproduced if it lies on
    the other side, inconclusive if it contains 0."""
    if direction not in ("<0", ">0"):
        raise ValueError(f"direction must be '<0' or '>0', got {direction!r}")
    if not diff.get("significant"):
        return "inconclusive"
    below = diff["hi"] < 0
    return "reproduced" if below == (direction == "<0") else "not reproduced"


def non_inferior(diff: dict, margin: float) -> str:
    """Non-inferiority of a paired difference (a - b, higher is better) at ``margin``: "reproduced" when the
    interval's lower end lies above ``-margin``, "not reproduced" when its upper end lies below it, else
    "inconclusive" (also with fewer than two seeds)."""
    if diff["n"] < 2 or math.isnan(diff["lo"]):
        return "inconclusive"
    if diff["lo"] > -margin:
        return "reproduced"
    return "not reproduced" if diff["hi"] < -margin else "inconclusive"


def equivalence(diff: dict, margin: float) -> str:
    """Equivalence of a paired difference at ``±margin``: "equivalent" when the whole 95% interval lies inside
    (-margin, +margin), "different" when it lies wholly outside on one side, else "inconclusive" (also with fewer
    than two seeds). The 95% interval is stricter than the 90% one of two one-sided tests at 5%."""
    if diff["n"] < 2 or math.isnan(diff["lo"]):
        return "inconclusive"
    if -margin < diff["lo"] and diff["hi"] < margin:
        return "equivalent"
    return "different" if diff["lo"] >= margin or diff["hi"] <= -margin else "inconclusive"


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN / None entries stay NaN and do not count toward the family size)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m, out, running = len(order), [float("nan")] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def seeds_needed(mu: float, sd: float, margin: float, power: float = 0.8, reps: int = 20000, max_n: int = 400,
                 seed: int = 0) -> int | None:
    """Smallest n with P(95 % t interval of n normal(mu, sd) differences inside +-margin) >= power (None: > max_n)."""
    return seeds_to_clear(mu, sd, -margin, margin, power, reps, max_n, seed)


def seeds_to_clear(mu: float, sd: float, lo: float = -math.inf, hi: float = math.inf, power: float = 0.8,
                   reps: int = 20000, max_n: int = 400, seed: int = 0) -> int | None:
    """Smallest n with P(95 % t interval of n normal(mu, sd) differences inside [lo, hi]) >= power: the seeds a
    criterion still open at a study's observed mean and sd would need (an infinite bound makes it one-sided).
    None when no n up to ``max_n`` does; always None when ``mu`` is not strictly inside, since an interval around
    a mean on the wrong side of a bound clears it with probability under 1/2."""
    if sd == 0:
        return 2 if lo <= mu <= hi else None
    if not lo < mu < hi and power > 0.5:
        return None
    rng = np.random.default_rng(seed)
    for n in range(2, max_n + 1):
        # a study's mean and sd of n normal differences, drawn from their exact distributions (independent:
        # mean ~ N(mu, sd^2/n), s^2 ~ sd^2 chi2(n-1)/(n-1)) instead of n draws each
        m = rng.normal(mu, sd / math.sqrt(n), size=reps)
        s = sd * np.sqrt(rng.chisquare(n - 1, size=reps) / (n - 1))
        half = stats.t.ppf(0.975, n - 1) * s / math.sqrt(n)
        if np.mean((m - half >= lo) & (m + half <= hi)) >= power:
            return n
    return None


# ------------------------------------------------------------------------------------------- text formats
def fmt_pm(c: dict | None, digits: int = 3) -> str:
    """A cell of :func:`mean_ci` as ``mean ± half`` (``-`` when empty; the mean alone with one seed)."""
    if c is None or c["n"] == 0 or math.isnan(c["mean"]):
        return "-"
    if math.isnan(c["half"]):
        return f"{c['mean']:.{digits}f}"
    return f"{c['mean']:.{digits}f} ± {c['half']:.{digits}f}"


def fmt_ci(d: dict | None, digits: int = 3) -> str:
    """A paired difference as ``+mean [+lo, +hi]`` (``-`` when empty; ``+mean (n=1)`` with one seed)."""
    if d is None or d["n"] < 2 or math.isnan(d["lo"]):
        return "-" if d is None or d["n"] == 0 else f"{d['mean']:+.{digits}f} (n=1)"
    return f"{d['mean']:+.{digits}f} [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}]"


def fmt_pt(d: dict | None) -> str:
    """A paired difference of accuracies in points: ``+mean pt [+lo, +hi]`` (2 decimals)."""
    if d is None or d["n"] < 2 or math.isnan(d["lo"]):
        return "-" if d is None or d["n"] == 0 else f"{100 * d['mean']:+.2f} pt (n=1)"
    return f"{100 * d['mean']:+.2f} pt [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}]"


def fmt_diff(d: dict, digits: int = 3) -> str:
    """A paired difference as ``+mean [+lo, +hi]``, `` *`` when the interval excludes 0 (``-`` under two seeds)."""
    if d["n"] < 2:
        return "-"
    star = " *" if d["significant"] else ""
    return f"{d['mean']:+.{digits}f} [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}]{star}"
