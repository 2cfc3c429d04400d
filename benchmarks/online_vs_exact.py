"""Quality of the online E-step: online − exact CFT (aligned arm) on the study's seeds, against issue 25's margins.

Reads a study result (``study/study.json`` by default: per seed, the runs ``aligned.cft`` and ``aligned.cft_online``,
same seed, world and start model), prints per metric the paired difference with its 95 % t interval
(``demo.stats.paired_difference``), whether the whole interval lies inside the margin (|Δ conf-ECE| ≤ 0.01,
|Δ cw-ECE| ≤ 0.01, |Δ acc| ≤ 0.005), and how many seeds would make that likely: the smallest n for which the
interval lies inside the margin in >= 80 % of simulated studies (normal per-seed differences with the observed sd),
if the true difference is 0 and if it is the observed mean. Not a timing benchmark (so not named bench_*).

Usage: python benchmarks/online_vs_exact.py [--study study/study.json] [--power 0.8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from axolotl_calib_plugin.demo.stats import paired_difference

MARGINS = {"conf_ece": 0.01, "cw_ece": 0.01, "acc": 0.005}
RUNS = ("aligned.cft_online", "aligned.cft")


def seeds_needed(mu: float, sd: float, margin: float, power: float, reps: int = 20000, max_n: int = 400,
                 seed: int = 0) -> int | None:
    """Smallest n with P(95 % t interval of n normal(mu, sd) differences inside ±margin) >= power."""
    if sd == 0:
        return 2 if abs(mu) <= margin else None
    rng = np.random.default_rng(seed)
    for n in range(2, max_n + 1):
        x = rng.normal(mu, sd, size=(reps, n))
        m, s = x.mean(axis=1), x.std(axis=1, ddof=1)
        half = stats.t.ppf(0.975, n - 1) * s / math.sqrt(n)
        if np.mean((m - half >= -margin) & (m + half <= margin)) >= power:
            return n
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(Path(__file__).resolve().parent.parent / "study" / "study.json"))
    ap.add_argument("--power", type=float, default=0.8)
    args = ap.parse_args(argv)
    with open(args.study, encoding="utf-8") as fh:
        per_seed = json.load(fh)["per_seed"]
    seeds = sorted(per_seed, key=int)
    missing = [(s, r) for s in seeds for r in RUNS if r not in per_seed[s]["rows"]]
    if missing:
        print(f"{args.study}: no run {missing[0][1]!r} for seed {missing[0][0]} (needs the study's online arm: "
              "plan.online)", file=sys.stderr)
        return 1
    print(f"online − exact E-step, CFT λ=1 (aligned arm), {len(seeds)} seeds ({', '.join(seeds)}), {os.path.relpath(args.study)}")
    print(f"   {'metric':<14} {'mean [95% CI]':>28}  {'sd':>7}  {'p':>5}  margin  inside  "
          f"seeds for {args.power:.0%} (Δ=0 / Δ=mean)   per seed")
    for split in ("in", "out"):
        for metric, margin in MARGINS.items():
            a = [per_seed[s]["rows"][RUNS[0]][split][metric] for s in seeds]
            b = [per_seed[s]["rows"][RUNS[1]][split][metric] for s in seeds]
            d = paired_difference(a, b)
            inside = d["lo"] >= -margin and d["hi"] <= margin
            n0 = seeds_needed(0.0, d["sd"], margin, args.power)
            nm = seeds_needed(d["mean"], d["sd"], margin, args.power)
            print(f"   {metric + ' ' + split:<14} {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]  {d['sd']:7.4f}  "
                  f"{d['p']:5.2f}  ±{margin:<5}  {'yes' if inside else 'no':<6}  {n0!s:>6} / {nm!s:<6}"
                  f"                 {', '.join(f'{x - y:+.4f}' for x, y in zip(a, b))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
