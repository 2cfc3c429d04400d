"""The online E-step study: is CFT with ``calib_estep: online`` as good as with the exact E-step?

Per seed (``axolotl-calib demo --seeds N --study online``): base SFT, DPO, then from the DPO model CFT (lambda 1)
twice, with the exact E-step (Algorithm 1: every refresh a forward over all training prompts) and with the online
one at its defaults (the first E-step over 10 % of the prompts, live targets for the others in epoch 0; later
refreshes from the training forwards' own option probabilities). Same seed, world, data and start model.

Reported: online minus exact per metric, paired over seeds with the 95 % t interval, whether the whole interval lies
inside the margins (|d conf-ECE| <= 0.01, |d cw-ECE| <= 0.01, |d acc| <= 0.5 pt), and how many seeds would make
that likely (the smallest n whose interval lies inside in >= 80 % of simulated studies with normal per-seed
differences of the observed sd), if the true difference is 0 and if it is the observed mean.
"""

from __future__ import annotations

from ...eval.report import fmt_signed
from ..pipeline import DEFAULT_LAMBDA, Plan, calib_name
from ..stats import paired_difference, seeds_needed
from .base import Study

__all__ = ["ARM", "MARGINS", "OnlineStudy", "PLAN", "RUNS", "SPLITS", "compare", "render_lines", "training_seconds"]

ARM = "aligned"
PLAN = Plan(arms=(ARM,), lambdas=(DEFAULT_LAMBDA,), label_smoothing=False, online=True, modes=("cft",),
            fix_arms=(ARM,))
#: (online, exact): the two runs compared
RUNS = (calib_name(ARM, "cft", DEFAULT_LAMBDA, "online"), calib_name(ARM, "cft", DEFAULT_LAMBDA))
MARGINS = {"conf_ece": 0.01, "cw_ece": 0.01, "acc": 0.005}
SPLITS = ("in", "out")


def compare(per_seed: dict, runs: tuple[str, str] = RUNS, power: float = 0.8) -> dict:
    """``{"<metric> <split>": paired difference of runs[0] - runs[1] + margin, inside, seeds needed, per seed}``
    over the seeds that have both runs; raises ``KeyError`` naming the first missing run."""
    seeds = sorted(per_seed, key=int)
    for s in seeds:
        for r in runs:
            if r not in per_seed[s]["rows"]:
                raise KeyError(f"seed {s} has no run {r!r} (the study's online arm: plan.online)")
    out = {}
    for split in SPLITS:
        for metric, margin in MARGINS.items():
            a = [per_seed[s]["rows"][runs[0]][split][metric] for s in seeds]
            b = [per_seed[s]["rows"][runs[1]][split][metric] for s in seeds]
            d = paired_difference(a, b)
            d.update(margin=margin, inside=bool(d["lo"] >= -margin and d["hi"] <= margin),
                     seeds_needed_if_0=seeds_needed(0.0, d["sd"], margin, power) if d["n"] >= 2 else None,
                     seeds_needed_if_mean=seeds_needed(d["mean"], d["sd"], margin, power) if d["n"] >= 2 else None,
                     per_seed=[x - y for x, y in zip(a, b)])
            out[f"{metric} {split}"] = d
    return out


def training_seconds(per_seed: dict, runs: tuple[str, str] = RUNS) -> dict:
    """Wall seconds of each compared run per seed (two runs at a time on the box, so only a rough guide)."""
    return {r: [per_seed[s].get("timings_s", {}).get(r) for s in sorted(per_seed, key=int)] for r in runs}


def render_lines(study: dict) -> list[str]:
    cmp_ = study["summary"]["online_vs_exact"]
    seeds = study["meta"]["seeds"]
    lines = [f"online − exact E-step, CFT λ=1 (aligned arm), {len(seeds)} seeds ({', '.join(map(str, seeds))})",
             f"   {'metric':<14} {'mean [95% CI]':>28}  {'sd':>7}  {'p':>5}  margin  inside  "
             f"seeds for 80% (Δ=0 / Δ=mean)   per seed"]
    for name, d in cmp_.items():
        lines.append(f"   {name:<14} {fmt_signed(d['mean'])} [{fmt_signed(d['lo'])}, {fmt_signed(d['hi'])}]  {d['sd']:7.4f}  "
                     f"{d['p']:5.2f}  ±{d['margin']:<5}  {'yes' if d['inside'] else 'no':<6}  {d['seeds_needed_if_0']!s:>6} / "
                     f"{d['seeds_needed_if_mean']!s:<6}                 {', '.join(fmt_signed(x) for x in d['per_seed'])}")
    return lines


class OnlineStudy(Study):
    """``--study online``: ``online.json``, ``online.md``."""

    name = "online"
    stem = "online"
    plan = PLAN

    def summarize(self, per_seed: dict) -> dict:
        return {"online_vs_exact": compare(per_seed), "training_seconds": training_seconds(per_seed)}

    def render(self, study: dict) -> str:
        md = ["# The online E-step (first E-step over 10 % of the prompts) against the exact one", "",
              f"Commit {study['meta'].get('commit')}, {study['meta'].get('machine')}; "
              f"wall time {study['meta'].get('wall_time_s')} s.", "", "```", *render_lines(study), "```", ""]
        return "\n".join(md)
