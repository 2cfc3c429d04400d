"""Quality of the online E-step: online − exact CFT (aligned arm) on a study's seeds, against the online study's margins.

Reads a study result with, per seed, the runs ``aligned.cft`` and ``aligned.cft_online`` (same seed, world and start
model): ``study/online.json`` (``make study-online``: the online run at today's defaults, its first E-step over 10 % of
the prompts) by default, or ``study/study.json`` (the main study's online arm). Prints per metric the paired
difference with its 95 % t interval, whether the whole interval lies inside the margin (|Δ conf-ECE| ≤ 0.01,
|Δ cw-ECE| ≤ 0.01, |Δ acc| ≤ 0.005), and how many seeds would make that likely (80 % of simulated studies, normal
per-seed differences with the observed sd), if the true difference is 0 and if it is the observed mean. The
computation is ``axolotl_calib_plugin.demo.studies.online`` (what the study's own summary uses). Not a timing
benchmark (so not named bench_*).

Usage: python benchmarks/online_vs_exact.py [--study study/online.json] [--power 0.8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from axolotl_calib_plugin.demo.stats import seeds_needed
from axolotl_calib_plugin.demo.studies.online import compare, render_lines

__all__ = ["main", "seeds_needed"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(Path(__file__).resolve().parent.parent / "study" / "online.json"))
    ap.add_argument("--power", type=float, default=0.8)
    args = ap.parse_args(argv)
    with open(args.study, encoding="utf-8") as fh:
        per_seed = json.load(fh)["per_seed"]
    try:
        summary = compare(per_seed, power=args.power)
    except KeyError as e:
        print(f"{args.study}: {e.args[0]}", file=sys.stderr)
        return 1
    study = {"meta": {"seeds": sorted(per_seed, key=int)}, "summary": {"online_vs_exact": summary}}
    lines = render_lines(study)
    lines[0] += f", {os.path.relpath(args.study)}"
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
