"""The method study on the real model (study/real_model_plan.md): SmolLM2-135M-Instruct and real facts.

Per seed k (training seed k, split seed k; ``axolotl-calib demo --seeds N --study real``): the model as shipped
(DPO), temperature scaling of it (T fitted on the ``target`` rows), and from it LS, SFT λ=0, CFT with training-row
bins, CFT with held-out bins, CFT with temperature targets and RCFT (held-out bins), each a real ``axolotl train``
(:mod:`axolotl_calib_plugin.demo.real_pipeline`). Reported: in-domain (test_in, geography) and out-of-domain
(test_out, chemistry) conf-ECE, cw-ECE and accuracy per row (mean ± 95 % t half-width), paired differences of every
row against SFT λ=0 and against TS with 95 % intervals, and the verdicts of the pre-registered margins
(:mod:`.base`). Primary question (pre-named variant :data:`PRIMARY`): is its conf-ECE below SFT λ=0's (interval
below 0), no worse than TS's (upper end below +0.01), with accuracy non-inferior to SFT λ=0 (lower end above −1
point), in and out of domain? The other CFT / RCFT rows are secondary: their p-values against SFT λ=0 on conf-ECE
are Holm-adjusted as one family (3 rows × 2 domains).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from ..real_pipeline import REAL, ROWS, RUNS, run_real_seed
from ..stats import (equivalence, fmt_ci, fmt_pm, fmt_pt, holm, mean_ci, non_inferior, paired_difference,
                     seeds_to_clear)
from .base import ACC_NONINFERIORITY_MARGIN, HOLM_ALPHA, MARGINS_TEXT, TS_EQUIVALENCE_MARGIN, Study, seed_values

__all__ = ["BASELINES", "DOMAINS", "Design", "FIGURE_ROWS", "MAIN", "METRICS", "PLANNED_SEEDS", "PRIMARY", "RealStudy",
           "SECONDARY", "check_runs", "check_seed_runs", "real_dir_of", "run_problem", "seed_data", "plot_deltas", "plot_reliability", "pooled_reliability", "primary_answer",
           "render", "seed_reliability", "summarize"]

#: the pre-named CFT variant of the primary question
PRIMARY = "cft_heldout"
SECONDARY = ("cft_train", "cft_temp", "rcft")
BASELINES = ("sft", "ts")
DOMAINS = {"in": "in-domain (test_in, geography)", "out": "out-of-domain (test_out, chemistry)"}
METRICS = ("conf_ece", "cw_ece", "acc")
#: the seeds of the plan (study/real_model_plan.md); a summary of fewer is printed as interim
PLANNED_SEEDS = 5
#: the power at which a still-open condition's seed count is given (a reading aid: the plan fixes the seeds)
SEEDS_POWER = 0.8
#: the rows drawn as reliability diagrams (pooled over the seeds): the start, its TS, λ=0 and the primary variant
FIGURE_ROWS = ("dpo", "ts", "sft", PRIMARY)
#: the rows of the forest plot, each against SFT λ=0 and against TS
DELTA_ROWS = ("ls", PRIMARY) + SECONDARY


@dataclass(frozen=True)
class Design:
    """What a real-model study compares: its rows (key -> label, in table order; the λ=0 baseline is always
    ``sft``, temperature scaling ``ts``, the primary variant :data:`PRIMARY`), the row whose logits TS rescales,
    the secondary (Holm) rows, the rows drawn, the seeds its plan names, and the words of its report."""

    rows: dict
    #: row -> the name of the lm-eval dumps it is scored from, where not its own (``ts``: the logits it rescales)
    dumps: dict
    secondary: tuple
    figure_rows: tuple
    delta_rows: tuple
    title: str
    lead: str
    ts_text: str
    question_heading: str
    planned_seeds: int = PLANNED_SEEDS


#: the pre-registered study of study/real_model_plan.md: every row trained from the model as shipped
MAIN = Design(rows=ROWS, dumps={"ts": "dpo"}, secondary=SECONDARY, figure_rows=FIGURE_ROWS, delta_rows=DELTA_ROWS,
              title="The method study on the real model (SmolLM2-135M-Instruct, real facts)",
              lead="Plan: [`real_model_plan.md`](real_model_plan.md)",
              ts_text="TS: T fitted on the shipped model's `target` logits",
              question_heading="Primary question (pre-registered)")


def _condition(diff: dict, upper: float) -> str:
    """"yes" when the 95 % interval of ``diff`` lies below ``upper``, "no" when it lies at or above it, else "open"
    (also under two seeds)."""
    if diff["n"] < 2 or math.isnan(diff["lo"]):
        return "open"
    return "yes" if diff["hi"] < upper else ("no" if diff["lo"] >= upper else "open")


def _seeds_to_decide(diff: dict, lo: float = -math.inf, hi: float = math.inf) -> int | str | None:
    """The seeds a new study would need for ``diff``'s interval to clear [lo, hi] with :data:`SEEDS_POWER`, at
    this study's mean and sd: a count, "wrong side" (the mean does not clear the bound: no count does), "> 400",
    or None under two seeds."""
    if diff["n"] < 2 or math.isnan(diff["sd"]):
        return None
    if not lo < diff["mean"] < hi:
        return "wrong side"
    return seeds_to_clear(diff["mean"], diff["sd"], lo, hi, SEEDS_POWER) or "> 400"


def primary_answer(diffs: dict, row: str = PRIMARY) -> dict:
    """Per domain the three conditions of the primary question for ``row`` and the answer: "yes" when all hold in
    both domains, "no" when any fails in either, else "inconclusive"; for each open condition, the seeds that would
    decide it (``seeds_needed``: domain -> condition -> :func:`_seeds_to_decide`)."""
    out, needed = {}, {}
    for dom in DOMAINS:
        vs_sft, vs_ts = diffs[row]["sft"][dom], diffs[row]["ts"][dom]
        acc = non_inferior(vs_sft["acc"], ACC_NONINFERIORITY_MARGIN)
        out[dom] = {"conf_ece_below_sft": _condition(vs_sft["conf_ece"], 0.0),
                    "conf_ece_no_worse_than_ts": _condition(vs_ts["conf_ece"], TS_EQUIVALENCE_MARGIN),
                    "acc_non_inferior_to_sft": {"reproduced": "yes", "not reproduced": "no"}.get(acc, "open")}
        bounds = {"conf_ece_below_sft": (vs_sft["conf_ece"], -math.inf, 0.0),
                  "conf_ece_no_worse_than_ts": (vs_ts["conf_ece"], -math.inf, TS_EQUIVALENCE_MARGIN),
                  "acc_non_inferior_to_sft": (vs_sft["acc"], -ACC_NONINFERIORITY_MARGIN, math.inf)}
        needed[dom] = {k: _seeds_to_decide(*bounds[k]) for k, v in out[dom].items() if v == "open"}
    answers = [v for d in out.values() for v in d.values()]
    out["answer"] = "yes" if all(a == "yes" for a in answers) else ("no" if "no" in answers else "inconclusive")
    out["seeds_needed"] = needed
    return out


def summarize(per_seed: dict, design: Design = MAIN) -> dict:
    """Cells (row -> "<metric>_<dom>" -> mean_ci), paired differences (row -> baseline -> dom -> metric), the
    verdicts per compared row and domain, the Holm-adjusted secondary p-values and the primary answer."""
    rows = [r for r in design.rows if any(r in s["rows"] for s in per_seed.values())]
    cells = {r: {f"{m}_{d}": mean_ci([v for v in seed_values(per_seed, r, d, m) if v is not None])
                 for d in DOMAINS for m in METRICS} for r in rows}
    diffs = {r: {b: {d: {m: paired_difference(seed_values(per_seed, r, d, m), seed_values(per_seed, b, d, m))
                         for m in METRICS} for d in DOMAINS} for b in BASELINES if b in rows and b != r}
             for r in rows}
    verdicts = {}
    for r in (PRIMARY,) + design.secondary:
        if r not in diffs or not all(b in diffs[r] for b in BASELINES):
            continue
        verdicts[r] = {d: {"vs_sft_conf_ece": _condition(diffs[r]["sft"][d]["conf_ece"], 0.0),
                           "vs_ts_conf_ece": equivalence(diffs[r]["ts"][d]["conf_ece"], TS_EQUIVALENCE_MARGIN),
                           "vs_ts_no_worse": _condition(diffs[r]["ts"][d]["conf_ece"], TS_EQUIVALENCE_MARGIN),
                           "acc_vs_sft": non_inferior(diffs[r]["sft"][d]["acc"], ACC_NONINFERIORITY_MARGIN)}
                       for d in DOMAINS}
    family = [(r, d) for r in design.secondary if r in verdicts for d in DOMAINS]
    adjusted = holm([diffs[r]["sft"][d]["conf_ece"]["p"] for r, d in family])
    holm_out = {f"{r} {d}": {"p": diffs[r]["sft"][d]["conf_ece"]["p"], "p_holm": p,
                             "below_sft": bool(p < HOLM_ALPHA and diffs[r]["sft"][d]["conf_ece"]["mean"] < 0)}
                for (r, d), p in zip(family, adjusted)}
    temps = [s["rows"]["ts"]["temperature"] for s in per_seed.values() if "temperature" in s["rows"].get("ts", {})]
    return {"rows": rows, "cells": cells, "diffs": diffs, "verdicts": verdicts, "holm_secondary": holm_out,
            "temperature": mean_ci(temps), "reliability": pooled_reliability(per_seed, design),
            "primary": primary_answer(diffs) if PRIMARY in verdicts else None}


def seed_reliability(seed_dir: str, design: Design = MAIN) -> dict:
    """Row -> domain -> the conf reliability bins (:func:`..analysis.bin_table`) and the share of the predictions
    per option letter, from the seed's lm-eval dumps (the TS row: its source row's logits over the seed's T); a
    row without dumps is left out. What the figures and the prediction table pool over the seeds."""
    from scipy.special import softmax

    from .. import analysis
    from ..pipeline import load_eval

    results = os.path.join(seed_dir, "results.json")
    temperature = None
    if os.path.isfile(results):
        with open(results, encoding="utf-8") as f:
            temperature = json.load(f)["rows"].get("ts", {}).get("temperature")
    out = {}
    for name in design.rows:
        src = design.dumps.get(name, name)
        for dom in DOMAINS:
            path = os.path.join(seed_dir, "eval", f"{src}__{dom}.json")
            if not os.path.isfile(path) or (name == "ts" and temperature is None):
                continue
            ev = load_eval(path)
            probs = (analysis.apply_temperature(ev["logliks"], temperature) if name == "ts"
                     else softmax(ev["logliks"], axis=1))
            share = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]) / len(probs)
            out.setdefault(name, {})[dom] = {**analysis.bin_table(probs, ev["labels"]),
                                             "letter_share": [round(float(v), 6) for v in share]}
    return out


def pooled_reliability(per_seed: dict, design: Design = MAIN) -> dict:
    """Row -> domain -> per-bin ``count``, ``hits`` and ``conf_sum`` summed over the seeds that have the row's
    bins, the pooled ``letter_share`` and ``n_seeds``; empty when no seed carries bins."""
    pooled = {}
    for seed in per_seed.values():
        for name, doms in (seed.get("reliability") or {}).items():
            for dom, t in doms.items():
                count = np.asarray(t["count"], dtype=np.float64)
                acc = np.nan_to_num(np.asarray([np.nan if v is None else v for v in t["acc"]], dtype=np.float64))
                conf = np.nan_to_num(np.asarray([np.nan if v is None else v for v in t["conf"]], dtype=np.float64))
                share = np.asarray(t["letter_share"], dtype=np.float64) * count.sum()
                p = pooled.setdefault(name, {}).setdefault(dom, {"count": 0.0, "hits": 0.0, "conf_sum": 0.0,
                                                                  "letters": 0.0, "n_seeds": 0})
                p["count"] = p["count"] + count
                p["hits"] = p["hits"] + acc * count
                p["conf_sum"] = p["conf_sum"] + conf * count
                p["letters"] = p["letters"] + share
                p["n_seeds"] += 1
    out = {}
    for name in design.rows:
        for dom, p in pooled.get(name, {}).items():
            n = float(p["count"].sum())
            out.setdefault(name, {})[dom] = {
                "count": [int(round(c)) for c in p["count"]], "hits": [round(float(h), 4) for h in p["hits"]],
                "conf_sum": [round(float(c), 4) for c in p["conf_sum"]],
                "letter_share": [round(float(v) / n, 4) for v in p["letters"]], "n_seeds": p["n_seeds"]}
    return out


def _table(study: dict, dom: str, design: Design) -> list[str]:
    s = study["summary"]
    out = [f"| row | conf-ECE | cw-ECE | accuracy |", "|---|---|---|---|"]
    for r in s["rows"]:
        c = s["cells"][r]
        out.append(f"| {design.rows[r]} | {fmt_pm(c[f'conf_ece_{dom}'])} | {fmt_pm(c[f'cw_ece_{dom}'])} | "
                   f"{fmt_pm(c[f'acc_{dom}'])} |")
    return out


def _diff_table(study: dict, dom: str, design: Design) -> list[str]:
    s = study["summary"]
    out = ["| row | vs | Δ conf-ECE | Δ cw-ECE | Δ accuracy |", "|---|---|---|---|---|"]
    for r in s["rows"]:
        for b, d in s["diffs"][r].items():
            out.append(f"| {design.rows[r]} | {design.rows[b]} | {fmt_ci(d[dom]['conf_ece'])} | {fmt_ci(d[dom]['cw_ece'])} | "
                       f"{fmt_pt(d[dom]['acc'])} |")
    return out


def _prediction_table(study: dict, design: Design) -> list[str]:
    """Mean confidence and the share of the most-predicted letter per row (pooled over the seeds): a row can reach a
    low conf-ECE by answering every question with one letter at the accuracy's confidence."""
    rel = study["summary"].get("reliability") or {}
    if not rel:
        return []
    out = ["## Predictions", "",
           "Mean confidence (mean over the seeds) and the letters predicted, pooled over the seeds (share of each "
           "option letter among the predictions).",
           "", "| row | " + " | ".join(f"mean conf. {d} | letters predicted {d}" for d in DOMAINS) + " |",
           "|---|" + "---|---|" * len(DOMAINS)]
    for r in study["summary"]["rows"]:
        cells = []
        for d in DOMAINS:
            conf = mean_ci([v for v in seed_values(study["per_seed"], r, d, "mean_conf") if v is not None])
            share = rel.get(r, {}).get(d, {}).get("letter_share")
            cells += [fmt_pm(conf) if conf.get("n") else "–",
                      " ".join(f"{'ABCDEFGHIJ'[i]} {v:.2f}" for i, v in enumerate(share)) if share else "–"]
        out.append(f"| {design.rows[r]} | " + " | ".join(cells) + " |")
    return out + [""]


def render(study: dict, design: Design = MAIN) -> str:
    meta, s = study["meta"], study["summary"]
    seeds = meta["seeds"]
    md = [f"# {design.title}", "",
          f"Seeds (training seed, split seed): {', '.join(f'({k}, {k})' for k in seeds)}; commit {meta.get('commit')}, "
          f"{meta.get('machine')}; wall time {meta.get('wall_time_s')} s. {design.lead}; budget: " + ", ".join(
              f"{k} {v}" for k, v in meta.get("settings", {}).items()) + ".", "",
          "Cells: mean ± 95 % t half-width over the seeds. Δ: paired difference (row − baseline) with its 95 % "
          "interval; accuracy in points.", "", MARGINS_TEXT, ""]
    if len(seeds) < design.planned_seeds:
        md += [f"**Interim: {len(seeds)} of the plan's {design.planned_seeds} seeds.** The verdicts and the answer "
               f"below are those of these seeds; the plan reads them at {design.planned_seeds}.", ""]
    t = s.get("temperature") or {}
    if t.get("n"):
        md += [f"{design.ts_text}, {fmt_pm(t)} over the seeds.", ""]
    for dom, label in DOMAINS.items():
        md += [f"## {label[0].upper() + label[1:]}", "", *_table(study, dom, design), "",
               *_diff_table(study, dom, design), ""]
    md += _prediction_table(study, design)
    md += ["## Verdicts (pre-registered margins)", ""]
    if not s["verdicts"]:
        md.append("None: no CFT / RCFT row has both SFT λ=0 and TS beside it yet.")
    else:
        md += ["| row | domain | conf-ECE below SFT λ=0 | conf-ECE vs TS (±0.01) | no worse than TS | accuracy vs "
               "SFT λ=0 (−1 pt) |", "|---|---|---|---|---|---|"]
    for r, v in s["verdicts"].items():
        for dom in DOMAINS:
            x = v[dom]
            md.append(f"| {design.rows[r]} | {dom} | {x['vs_sft_conf_ece']} | {x['vs_ts_conf_ece']} | {x['vs_ts_no_worse']} | "
                      f"{x['acc_vs_sft']} |")
    if s["holm_secondary"]:
        md += ["", f"Secondary rows, conf-ECE against SFT λ=0 (Holm over {len(s['holm_secondary'])} tests, "
                   f"α {HOLM_ALPHA:g}):", ""]
        md += [f"- {k}: p {v['p']:.3g}, Holm p {v['p_holm']:.3g}{' (below SFT λ=0)' if v['below_sft'] else ''}"
               for k, v in s["holm_secondary"].items()]
    md += ["", f"## {design.question_heading}", "",
           f"Does {design.rows[PRIMARY]} have lower conf-ECE than {design.rows['sft']}, no worse than TS, with "
           f"accuracy non-inferior to {design.rows['sft']}, in and out of domain?", ""]
    p = s.get("primary")
    if p is None:
        md.append("Not answerable: a seed lacks one of its rows.")
    else:
        for dom in DOMAINS:
            md.append(f"- {dom}: " + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in p[dom].items()))
        needed = {dom: v for dom, v in (p.get("seeds_needed") or {}).items() if any(x is not None for x in v.values())}
        if needed:
            md += ["", f"Seeds a new study would need to decide each open condition ({SEEDS_POWER:.0%} power, at "
                       "this study's mean and sd of the paired difference; \"wrong side\": the mean itself fails the "
                       "condition, so more seeds would not make it hold):", ""]
            md += [f"- {dom}: " + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in x.items()) for dom, x in needed.items()]
        md += ["", f"**Answer: {p['answer']}** ({len(seeds)} seeds)."]
    return "\n".join(md) + "\n"


def plot_reliability(study: dict, dom: str, path: str, design: Design = MAIN) -> str:
    """Confidence reliability panels of :data:`FIGURE_ROWS` on ``dom``, every seed's questions pooled (the panel's
    conf-ECE is the pooled one, not the mean over seeds of the table)."""
    from ...eval.plots import plot_bins, stats_view

    rel = study["summary"]["reliability"]
    views = {}
    for r in design.figure_rows:
        p = rel.get(r, {}).get(dom)
        if not p:
            continue
        count = np.asarray(p["count"], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(count > 0, np.asarray(p["hits"]) / count, np.nan)
            conf = np.where(count > 0, np.asarray(p["conf_sum"]) / count, np.nan)
        views[design.rows[r]] = stats_view(count, acc, conf)
    n_seeds = max(p.get(dom, {}).get("n_seeds", 0) for p in rel.values())
    plot_bins(views, path, title=f"SmolLM2-135M-Instruct, {DOMAINS[dom]}: every question of {n_seeds} seed(s) "
                                 "pooled")
    return path


def plot_deltas(study: dict, path: str, design: Design = MAIN) -> str:
    """Paired differences (mean, 95 % interval over the seeds) of :data:`DELTA_ROWS`: conf-ECE against SFT λ=0 and
    against TS, accuracy against SFT λ=0, in and out of domain, with the pre-registered margins drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    diffs = study["summary"]["diffs"]
    rows = [r for r in design.delta_rows if r in diffs and all(b in diffs[r] for b in BASELINES)]
    panels = (("sft", "conf_ece", "Δ conf-ECE vs SFT λ=0\n(< 0: better calibrated)", 0.0, None),
              ("ts", "conf_ece", "Δ conf-ECE vs TS\n(no worse: interval below +0.01)", TS_EQUIVALENCE_MARGIN, None),
              ("sft", "acc", "Δ accuracy vs SFT λ=0, points\n(kept: interval above −1)", None,
               -100 * ACC_NONINFERIORITY_MARGIN))
    fig, axes = plt.subplots(len(DOMAINS), len(panels), figsize=(14, 2.2 + 0.9 * len(rows) * len(DOMAINS)),
                             sharey=True, squeeze=False)
    for i, dom in enumerate(DOMAINS):
        for j, (base, metric, title, upper, lower) in enumerate(panels):
            ax = axes[i][j]
            scale = 100.0 if metric == "acc" else 1.0
            for k, r in enumerate(rows):
                d = diffs[r][base][dom][metric]
                half = 0.0 if math.isnan(d["half"]) else d["half"]
                ax.errorbar(scale * d["mean"], k, xerr=scale * half, fmt="o", capsize=3,
                            color="#d62728" if r == PRIMARY else "#1f77b4")
            ax.axvline(0, color="black", lw=0.8)
            for x in (upper, lower):
                if x:
                    ax.axvline(x, color="#2ca02c", ls="--", lw=1)
            ax.set_yticks(range(len(rows)), [design.rows[r] for r in rows])
            ax.invert_yaxis()
            ax.grid(alpha=0.3, axis="x")
            ax.set_title(f"{title}\n{DOMAINS[dom]}", fontsize=9.5)
    n = len(study["meta"]["seeds"])
    fig.suptitle(f"SmolLM2-135M-Instruct: paired differences over {n} seed(s) (95 % t-interval; dashed: margin; "
                 "red: the pre-named primary variant)", fontsize=10.5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def check_runs(seed: int, seed_dir: str, configs: dict, dumps) -> None:
    """Raise :class:`~axolotl_calib_plugin.orchestrate.StepFailed` unless every run of ``configs`` (name -> Axolotl
    config) finished under the config, data and code that would train it now (the reuse key of
    :func:`axolotl_calib_plugin.orchestrate.config_hash`), every lm-eval dump named in ``dumps`` is in
    ``seed_dir/eval`` and ``seed_dir/results.json`` is there: a summary of finished seeds is then the one a rerun
    would write."""
    from ... import orchestrate

    problems = [p for p in (run_problem(name, cfg) for name, cfg in configs.items()) if p]
    problems += [f"missing lm-eval dump {os.path.join(seed_dir, 'eval', d)}" for d in dumps
                 if not os.path.isfile(os.path.join(seed_dir, "eval", d))]
    if not os.path.isfile(os.path.join(seed_dir, "results.json")):
        problems.append(f"no {os.path.join(seed_dir, 'results.json')}")
    if problems:
        raise orchestrate.StepFailed(f"seed {seed} ({seed_dir}) is not finished under this code: "
                                     + "; ".join(problems) + ". Run the study without --summary-only to (re)run it.")


def run_problem(name: str, cfg: dict):
    """None when the run of ``cfg`` finished under this config, data and code (its done marker holds the reuse key
    :func:`axolotl_calib_plugin.orchestrate.config_hash` computes now), else what is wrong, naming the marker."""
    from ... import orchestrate

    done = os.path.join(cfg["output_dir"], orchestrate.DONE_FILE)
    try:
        with open(done, encoding="utf-8") as f:
            mark = json.load(f)
    except (OSError, ValueError):
        return f"{name}: no finished run ({done})"
    if not isinstance(mark, dict) or mark.get("config_hash") != orchestrate.config_hash(cfg):
        return f"{name}: trained with another config, data or code than this checkout's ({done})"
    return None


def real_dir_of(seed_dir: str) -> str:
    """``<output dir>/real`` (the shipped model and its manifest) of ``<output dir>/runs/seed<k>``."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(seed_dir))), "real")


def seed_data(seed_dir: str) -> dict:
    """The seed's fact-set files (written by its first run)."""
    return {split: os.path.join(seed_dir, "data", f"{split}.jsonl")
            for split in ("train", "target", "report", "test_in", "test_out")}


def check_seed_runs(seed_dir: str, seed: int, real_dir: str, settings=REAL) -> None:
    """:func:`check_runs` for a seed of the main study (every row trained from the shipped model)."""
    from ..real_pipeline import run_config
    from ..real_world import MODEL_DIR

    model = os.path.join(os.path.abspath(real_dir), MODEL_DIR)
    data = seed_data(seed_dir)
    check_runs(seed, seed_dir, {r.name: run_config(r, model, data, seed_dir, settings, seed) for r in RUNS},
               [f"{n}__{d}.json" for n in ("dpo",) + tuple(r.name for r in RUNS) for d in DOMAINS]
               + ["dpo__target.json"])


class RealStudy(Study):
    """``--study real``: ``real_model.json``, ``real_model.md``, ``real_model_reliability_{in,out}.png``,
    ``real_model_deltas.png``. The shipped model is built once in
    ``<output dir>/real`` (:func:`axolotl_calib_plugin.demo.real_world.prepare`)."""

    name = "real"
    stem = "real_model"
    design = MAIN
    real_settings = REAL  # its own budget (not DemoSettings overrides: the synthetic pipeline is not used)

    def run_seed(self, seed_dir, seed, settings, plan, parallel, reuse) -> dict:
        return run_real_seed(seed_dir, seed, real_dir_of(seed_dir), self.real_settings, parallel=parallel,
                             reuse=reuse)

    def finished_seed(self, seed_dir: str, seed: int) -> dict:
        check_seed_runs(seed_dir, seed, real_dir_of(seed_dir), self.real_settings)
        return super().finished_seed(seed_dir, seed)

    def seed_extras(self, seed_dir: str) -> dict:
        return {"reliability": seed_reliability(seed_dir, self.design)}

    def figures(self, study: dict, summary_dir: str) -> list[str]:
        if not study["summary"].get("reliability"):
            return []
        out = [plot_reliability(study, dom, os.path.join(summary_dir, f"{self.stem}_reliability_{dom}.png"),
                                self.design) for dom in DOMAINS]
        if any(r in study["summary"]["diffs"] for r in self.design.delta_rows):
            out.append(plot_deltas(study, os.path.join(summary_dir, f"{self.stem}_deltas.png"), self.design))
        return out

    def describe(self, settings, plan) -> dict:
        from dataclasses import asdict

        return {"settings": asdict(self.real_settings), "runs": [asdict(r) for r in RUNS], "primary": PRIMARY}

    def summarize(self, per_seed: dict) -> dict:
        return summarize(per_seed, self.design)

    def render(self, study: dict) -> str:
        return render(study, self.design)
