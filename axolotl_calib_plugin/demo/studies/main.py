"""The main study: the paper's Table 2 claims on the synthetic world, every cell as mean +- 95% CI over seeds.

Per seed, the whole pipeline of :mod:`axolotl_calib_plugin.demo.pipeline` with :data:`STUDY_PLAN` -- both arms,
CFT and RCFT over a lambda sweep, label smoothing, temperature scaling and CFT with the online E-step -- then the
across-seed statistics of :mod:`axolotl_calib_plugin.demo.stats`:

* every metric of every model as mean +- the 95% Student-t half-width over seeds;
* paired differences for the comparisons that matter (both sides from the same seeds), with intervals and
  p-values, and a verdict on each of the paper's claims: reproduced / not reproduced / inconclusive;
* the lambda trade-off curve (in-domain conf-ECE vs accuracy, with interval bars) as a PNG;
* the regime diagnosis' hit rate (aligned -> calibratable, over-fine-tuned -> non-calibratable).

Outputs: ``study.json``, ``study.md``, ``lambda_curve.png`` (what the README quotes).
"""

from __future__ import annotations

import math
import os

from .. import report
from ..pipeline import ARMS, DEFAULT_LAMBDA, Plan
from ..stats import equivalence, fmt_diff, fmt_pm, mean_ci, non_inferior, paired_difference, verdict
from .base import ACC_NONINFERIORITY_MARGIN, MARGINS_TEXT, TS_EQUIVALENCE_MARGIN, Study, seed_values

__all__ = ["BASELINES", "CELLS", "COMPARISONS", "MainStudy", "ONLINE_GOAL", "STUDY_LAMBDAS", "STUDY_PLAN",
           "lambda_deltas", "plot_lambda_curve", "render_markdown", "summarize", "wall_time_text"]

#: the study's runs per seed: both arms; CFT and RCFT over the lambda sweep in the aligned arm (0 and 1
#: in the over-fine-tuned arm); label smoothing; the online E-step.
STUDY_LAMBDAS = (0.0, 0.3, 1.0, 3.0, 10.0)
STUDY_PLAN = Plan(arms=ARMS, lambdas=STUDY_LAMBDAS, label_smoothing=True, online=True, sweep_overfit=False)

CELLS = (("conf_ece", "in"), ("conf_ece", "out"), ("cw_ece", "in"), ("cw_ece", "out"), ("acc", "in"), ("acc", "out"))
#: the paired comparisons (a - b) reported for every metric of CELLS
COMPARISONS = (
    ("aligned", "base", "DPO - base SFT"),
    ("aligned.cft", "aligned", "CFT - aligned"),
    ("aligned.cft", "aligned.cft_lam0", "CFT - SFT only (lambda=0)"),
    ("aligned.rcft", "aligned.cft", "RCFT - CFT (aligned arm)"),
    ("aligned.rcft", "aligned.rcft_lam0", "RCFT - its lambda=0"),
    ("aligned.ts", "aligned.cft", "TS - CFT (aligned arm)"),
    ("aligned.ls", "aligned.cft", "LS - CFT (aligned arm)"),
    ("aligned.cft_online", "aligned.cft", "CFT online - exact E-step"),
    ("overfit", "base", "over-fine-tuning - base SFT"),
    ("overfit.cft", "overfit", "CFT - over-fine-tuned"),
    ("overfit.rcft", "overfit", "RCFT - over-fine-tuned"),
    ("overfit.rcft", "overfit.cft", "RCFT - CFT (over-fine-tuned arm)"),
    ("overfit.cft", "overfit.cft_lam0", "CFT - its lambda=0 (over-fine-tuned arm)"),
    ("overfit.rcft", "overfit.rcft_lam0", "RCFT - its lambda=0 (over-fine-tuned arm)"),
    ("overfit.ts", "overfit.cft", "TS - CFT (over-fine-tuned arm)"),
)
#: the baseline comparisons (a - b) given an equivalence verdict on in-domain conf-ECE at TS_EQUIVALENCE_MARGIN
BASELINES = (("aligned.ts", "aligned.cft"), ("aligned.ls", "aligned.cft"), ("overfit.ts", "overfit.cft"))
#: the online E-step's goal
ONLINE_GOAL = {"conf_ece": 0.01, "acc": 0.005}


def summarize(per_seed: dict) -> dict:
    """Cells (mean +- CI), paired comparisons, claims, lambda curve and regime hit rate of ``per_seed``."""
    keys = report.ordered_keys({k for s in per_seed.values() for k in s["rows"]})
    cells = {k: {f"{m}_{d}": mean_ci([v for v in seed_values(per_seed, k, d, m) if v is not None]) for m, d in CELLS}
             for k in keys}
    for k in keys:
        for extra in (("acc", "train"), ("conf_ece", "train")):
            vals = [v for v in seed_values(per_seed, k, extra[1], extra[0]) if v is not None]
            if vals:
                cells[k][f"{extra[0]}_train"] = mean_ci(vals)
    comps = []
    for a, b, label in COMPARISONS:
        if a in keys and b in keys:
            comps.append({"a": a, "b": b, "label": label,
                          "diff": {f"{m}_{d}": paired_difference(seed_values(per_seed, a, d, m), seed_values(per_seed, b, d, m))
                                   for m, d in CELLS}})
    by = {(c["a"], c["b"]): c["diff"] for c in comps}

    def claim(text, pair, cell, direction=None, margin=None):
        d = by.get(pair, {}).get(cell)
        if d is None:
            return None
        v = non_inferior(d, margin) if margin is not None else verdict(d, direction)
        return {"claim": text, "comparison": f"{pair[0]} - {pair[1]}", "cell": cell, "verdict": v,
                "mean": d["mean"], "lo": d["lo"], "hi": d["hi"], "p": d.get("p")}

    claims = [c for c in (
        claim("Preference alignment (DPO) makes the model over-confident: in-domain conf-ECE rises",
              ("aligned", "base"), "conf_ece_in", ">0"),
        claim("CFT restores the aligned model's calibration: in-domain conf-ECE falls", ("aligned.cft", "aligned"),
              "conf_ece_in", "<0"),
        claim("CFT keeps the aligned model's accuracy (in-domain, margin 1 point)", ("aligned.cft", "aligned"),
              "acc_in", margin=ACC_NONINFERIORITY_MARGIN),
        claim("The ECE term calibrates beyond plain SFT on the same data (CFT vs lambda=0)",
              ("aligned.cft", "aligned.cft_lam0"), "conf_ece_in", "<0"),
        claim("CFT beats temperature scaling on in-domain conf-ECE", ("aligned.ts", "aligned.cft"), "conf_ece_in", ">0"),
        claim("RCFT reaches higher in-domain accuracy than CFT (aligned arm)", ("aligned.rcft", "aligned.cft"),
              "acc_in", ">0"),
        claim("Over-fine-tuning makes the model over-confident: in-domain conf-ECE rises", ("overfit", "base"),
              "conf_ece_in", ">0"),
        claim("RCFT is better calibrated than the over-fine-tuned model", ("overfit.rcft", "overfit"), "conf_ece_in", "<0"),
        claim("RCFT reaches higher in-domain accuracy than CFT (over-fine-tuned arm)", ("overfit.rcft", "overfit.cft"),
              "acc_in", ">0"),
        claim("RCFT keeps the over-fine-tuned model's accuracy (in-domain, margin 1 point)", ("overfit.rcft", "overfit"),
              "acc_in", margin=ACC_NONINFERIORITY_MARGIN),
        claim("CFT keeps the over-fine-tuned model's accuracy (in-domain, margin 1 point)", ("overfit.cft", "overfit"),
              "acc_in", margin=ACC_NONINFERIORITY_MARGIN),
    ) if c is not None]

    labels = {(c["a"], c["b"]): c["label"] for c in comps}
    baselines = [{"comparison": f"{a} - {b}", "label": labels[(a, b)], "diff": by[(a, b)]["conf_ece_in"],
                  "verdict": equivalence(by[(a, b)]["conf_ece_in"], TS_EQUIVALENCE_MARGIN)}
                 for a, b in BASELINES if (a, b) in by]

    online = None
    if ("aligned.cft_online", "aligned.cft") in by:
        d = by[("aligned.cft_online", "aligned.cft")]
        online = {m: {"diff": d[f"{m}_in"], "goal": g,
                      "met": bool(d[f"{m}_in"]["n"] >= 2 and -g <= d[f"{m}_in"]["lo"] and d[f"{m}_in"]["hi"] <= g)}
                  for m, g in ONLINE_GOAL.items()}

    curve = {}
    for arm in ARMS:
        for mode in ("cft", "rcft"):
            pts = []
            for key in keys:
                if not key.startswith(f"{arm}.{mode}") or key.endswith("_online"):
                    continue
                rest = key[len(f"{arm}.{mode}"):]
                if rest and not rest.startswith("_lam"):
                    continue
                lam = float(rest[4:]) if rest else DEFAULT_LAMBDA
                pts.append({"lambda": lam, "key": key, "conf_ece_in": cells[key]["conf_ece_in"],
                            "acc_in": cells[key]["acc_in"]})
            if len(pts) >= 2:
                curve[f"{arm}.{mode}"] = sorted(pts, key=lambda p: p["lambda"])

    regime = {}
    for arm, want in (("aligned", "calibratable"), ("overfit", "non-calibratable")):
        verdicts = [s["rows"].get(arm, {}).get("regime", {}).get("verdict") for s in per_seed.values()]
        verdicts = [v for v in verdicts if v]
        if verdicts:
            regime[arm] = {"expected": want, "hits": sum(v == want for v in verdicts), "n": len(verdicts)}
    return {"keys": keys, "cells": cells, "comparisons": comps, "claims": claims, "baselines": baselines,
            "online_vs_exact": online,
            "lambda_curve": curve, "regime": regime}


# ------------------------------------------------------------------------------------------- rendering
def wall_time_text(study: dict) -> str:
    """The invocation's wall time, and the per-seed times of the seeds that ran without reused runs (a resumed
    study's invocation time says little about what a fresh one takes)."""
    m = study["meta"]
    per_seed = study.get("per_seed", {})
    full = [v["wall_time_s"] for v in per_seed.values() if not v.get("reused_runs")]
    text = f"Wall time {m['wall_time_s'] / 60:.0f} min on {m['machine']}"
    if len(full) < len(per_seed):
        text += " (resumed: some runs were reused from an earlier invocation)"
    if full:
        text += (f"; a seed run from scratch took {min(full) / 60:.0f}-{max(full) / 60:.0f} min "
                 f"({len(full)} of {len(per_seed)} seeds)")
    return text + "."


def render_markdown(study: dict) -> str:
    m = study["meta"]
    s = study["summary"]
    lines = [
        "# axolotl-calib multi-seed study",
        "",
        f"{m['n_seeds']} seeds ({', '.join(map(str, m['seeds']))}), {m['settings']['world']} world; "
        f"{m['settings']['n_train']} training questions, {m['settings']['n_eval_in']} in-domain / "
        f"{m['settings']['n_eval_out']} out-of-domain eval questions per seed; 10 equal-width bins. "
        f"Every cell: mean ± 95% t-interval half-width over seeds. {wall_time_text(study)}",
        "",
    ]
    if m.get("resume_note"):  # how an interrupted study was completed, written into study.json by hand
        lines += [m["resume_note"], ""]
    cols = [f"{'conf-ECE' if a == 'conf_ece' else 'cw-ECE' if a == 'cw_ece' else 'acc'} {d}" for a, d in CELLS]
    main = [k for k in s["keys"] if "_lam" not in k or k.endswith("_lam0")]
    lines += ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for k in main:
        label = report.row_label(k)
        if "." in k:
            label = "&nbsp;&nbsp;" + label
        lines.append(f"| {label} | " + " | ".join(fmt_pm(s["cells"][k].get(f"{a}_{d}")) for a, d in CELLS) + " |")
    lines += ["", "## Paired differences (a − b, same seeds): mean [95% CI], * = interval excludes 0", "",
              "| comparison | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for c in s["comparisons"]:
        lines.append(f"| {c['label']} | " + " | ".join(fmt_diff(c["diff"][f"{a}_{d}"]) for a, d in CELLS) + " |")
    lines += ["", "## The paper's claims on this world", ""]
    for c in s["claims"]:
        p = "" if c.get("p") is None or math.isnan(c["p"]) else f", p = {c['p']:.3g}"
        lines.append(f"* **{c['verdict']}**: {c['claim']} ({c['comparison']}, {c['cell']}: {c['mean']:+.4f} "
                     f"[{c['lo']:+.4f}, {c['hi']:+.4f}]{p})")
    if s.get("baselines"):
        words = {"equivalent": f"level (inside ±{TS_EQUIVALENCE_MARGIN:g})",
                 "different": f"different by more than {TS_EQUIVALENCE_MARGIN:g}",
                 "inconclusive": f"not shown level (±{TS_EQUIVALENCE_MARGIN:g})"}
        lines += ["", "## Level with the baselines? (in-domain conf-ECE, equivalence margin)", "", MARGINS_TEXT, ""]
        for b in s["baselines"]:
            d = b["diff"]
            lines.append(f"* **{words[b['verdict']]}**: {b['label']} ({b['comparison']}, conf_ece_in: {d['mean']:+.4f} "
                         f"[{d['lo']:+.4f}, {d['hi']:+.4f}])")
    if s.get("online_vs_exact"):
        o = s["online_vs_exact"]
        lines += ["", "## Online vs exact E-step (CFT, aligned arm)", ""]
        for met, r in o.items():
            d = r["diff"]
            lines.append(f"* in-domain {met}: online − exact {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]; goal "
                         f"|Δ| ≤ {r['goal']}: {'met' if r['met'] else 'not met'} (the whole interval inside ±goal)")
    if s.get("regime"):
        lines += ["", "## Regime diagnosis (`axolotl-calib diagnose` with the training set; our heuristic)", ""]
        for arm, r in s["regime"].items():
            lines.append(f"* {report.row_label(arm)}: called {r['expected']} in {r['hits']} of {r['n']} seeds")
    if s.get("lambda_curve"):
        lines += ["", "## λ trade-off (in-domain; `lambda_curve.png`)", "", "| run | λ | conf-ECE in | acc in |",
                  "|---|---:|---:|---:|"]
        for name, pts in s["lambda_curve"].items():
            for pt in pts:
                lines.append(f"| {name} | {pt['lambda']:g} | {fmt_pm(pt['conf_ece_in'])} | {fmt_pm(pt['acc_in'])} |")
    lines.append("")
    return "\n".join(lines)


def lambda_deltas(study: dict) -> dict:
    """Per curve (``aligned.cft`` ...): for each lambda > 0, the paired difference (same seeds) of in-domain conf-ECE
    and accuracy against that curve's lambda = 0 run, ``{curve: [{"lambda", "conf_ece_in", "acc_in"}, ...]}``."""
    per_seed = study["per_seed"]
    out = {}
    for name, pts in study["summary"]["lambda_curve"].items():
        base = next((p["key"] for p in pts if p["lambda"] == 0), None)
        if base is None:
            continue
        out[name] = [{"lambda": p["lambda"],
                      **{c: paired_difference(seed_values(per_seed, p["key"], "in", c.split("_in")[0]),
                                              seed_values(per_seed, base, "in", c.split("_in")[0]))
                         for c in ("conf_ece_in", "acc_in")}}
                     for p in pts if p["lambda"] != 0]
    return out


def plot_lambda_curve(study: dict, path: str) -> str:
    """Each lambda's paired difference from its own lambda = 0 run (in-domain conf-ECE, left; accuracy, right), mean
    and 95% interval over seeds, one marker style per curve, curves side by side at each lambda (no overlap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deltas = lambda_deltas(study)
    lams = sorted({p["lambda"] for pts in deltas.values() for p in pts})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    styles = {"aligned.cft": ("#1f77b4", "o"), "aligned.rcft": ("#d62728", "s"), "overfit.cft": ("#2ca02c", "^"),
              "overfit.rcft": ("#9467bd", "D")}
    names = list(deltas)
    for ax, cell, ylabel in ((axes[0], "conf_ece_in", "in-domain conf-ECE minus its λ=0 run (< 0: better)"),
                             (axes[1], "acc_in", "in-domain accuracy minus its λ=0 run")):
        for j, name in enumerate(names):
            color, marker = styles.get(name, ("black", "o"))
            x = [lams.index(p["lambda"]) + (j - (len(names) - 1) / 2) * 0.14 for p in deltas[name]]
            y = [p[cell]["mean"] for p in deltas[name]]
            err = [0 if math.isnan(p[cell]["half"]) else p[cell]["half"] for p in deltas[name]]
            ax.errorbar(x, y, yerr=err, fmt=marker, color=color, capsize=3, ms=6,
                        label=f"{report.row_label(name.split('.')[0])}: {name.split('.')[1].upper()}")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(lams)), [f"λ={lam:g}" for lam in lams])
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(names), frameon=False)
    fig.suptitle(f"The ECE term's effect: each λ paired with its own λ=0 run (mean, 95% CI over "
                 f"{study['meta']['n_seeds']} seeds)")
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path



class MainStudy(Study):
    """``--study main``: ``study.json``, ``study.md``, ``lambda_curve.png``."""

    name = "main"
    stem = "study"
    plan = STUDY_PLAN

    def summarize(self, per_seed: dict) -> dict:
        return summarize(per_seed)

    def render(self, study: dict) -> str:
        return render_markdown(study)

    def figures(self, study: dict, summary_dir: str) -> list[str]:
        if not study["summary"]["lambda_curve"]:
            return []
        return [plot_lambda_curve(study, os.path.join(summary_dir, "lambda_curve.png"))]
