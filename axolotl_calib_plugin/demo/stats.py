"""Across-seed statistics of the study: means with t confidence intervals and paired differences.

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

__all__ = ["mean_ci", "paired_difference", "verdict"]


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
