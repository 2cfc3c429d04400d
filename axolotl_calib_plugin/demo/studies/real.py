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

import math
import os

from ..real_pipeline import REAL, ROWS, RUNS, run_real_seed
from ..stats import equivalence, fmt_ci, fmt_pm, fmt_pt, holm, mean_ci, non_inferior, paired_difference
from .base import ACC_NONINFERIORITY_MARGIN, HOLM_ALPHA, MARGINS_TEXT, TS_EQUIVALENCE_MARGIN, Study, seed_values

__all__ = ["BASELINES", "DOMAINS", "METRICS", "PRIMARY", "RealStudy", "SECONDARY", "primary_answer", "summarize"]

#: the pre-named CFT variant of the primary question
PRIMARY = "cft_heldout"
SECONDARY = ("cft_train", "cft_temp", "rcft")
BASELINES = ("sft", "ts")
DOMAINS = {"in": "in-domain (test_in, geography)", "out": "out-of-domain (test_out, chemistry)"}
METRICS = ("conf_ece", "cw_ece", "acc")


def _condition(diff: dict, upper: float) -> str:
    """"yes" when the 95 % interval of ``diff`` lies below ``upper``, "no" when it lies at or above it, else "open"
    (also under two seeds)."""
    if diff["n"] < 2 or math.isnan(diff["lo"]):
        return "open"
    return "yes" if diff["hi"] < upper else ("no" if diff["lo"] >= upper else "open")


def primary_answer(diffs: dict, row: str = PRIMARY) -> dict:
    """Per domain the three conditions of the primary question for ``row`` and the answer: "yes" when all hold in
    both domains, "no" when any fails in either, else "inconclusive"."""
    out = {}
    for dom in DOMAINS:
        vs_sft, vs_ts = diffs[row]["sft"][dom], diffs[row]["ts"][dom]
        acc = non_inferior(vs_sft["acc"], ACC_NONINFERIORITY_MARGIN)
        out[dom] = {"conf_ece_below_sft": _condition(vs_sft["conf_ece"], 0.0),
                    "conf_ece_no_worse_than_ts": _condition(vs_ts["conf_ece"], TS_EQUIVALENCE_MARGIN),
                    "acc_non_inferior_to_sft": {"reproduced": "yes", "not reproduced": "no"}.get(acc, "open")}
    answers = [v for d in out.values() for v in d.values()]
    out["answer"] = "yes" if all(a == "yes" for a in answers) else ("no" if "no" in answers else "inconclusive")
    return out


def summarize(per_seed: dict) -> dict:
    """Cells (row -> "<metric>_<dom>" -> mean_ci), paired differences (row -> baseline -> dom -> metric), the
    verdicts per compared row and domain, the Holm-adjusted secondary p-values and the primary answer."""
    rows = [r for r in ROWS if any(r in s["rows"] for s in per_seed.values())]
    cells = {r: {f"{m}_{d}": mean_ci([v for v in seed_values(per_seed, r, d, m) if v is not None])
                 for d in DOMAINS for m in METRICS} for r in rows}
    diffs = {r: {b: {d: {m: paired_difference(seed_values(per_seed, r, d, m), seed_values(per_seed, b, d, m))
                         for m in METRICS} for d in DOMAINS} for b in BASELINES if b in rows and b != r}
             for r in rows}
    verdicts = {}
    for r in (PRIMARY,) + SECONDARY:
        if r not in diffs or not all(b in diffs[r] for b in BASELINES):
            continue
        verdicts[r] = {d: {"vs_sft_conf_ece": _condition(diffs[r]["sft"][d]["conf_ece"], 0.0),
                           "vs_ts_conf_ece": equivalence(diffs[r]["ts"][d]["conf_ece"], TS_EQUIVALENCE_MARGIN),
                           "vs_ts_no_worse": _condition(diffs[r]["ts"][d]["conf_ece"], TS_EQUIVALENCE_MARGIN),
                           "acc_vs_sft": non_inferior(diffs[r]["sft"][d]["acc"], ACC_NONINFERIORITY_MARGIN)}
                       for d in DOMAINS}
    family = [(r, d) for r in SECONDARY if r in verdicts for d in DOMAINS]
    adjusted = holm([diffs[r]["sft"][d]["conf_ece"]["p"] for r, d in family])
    holm_out = {f"{r} {d}": {"p": diffs[r]["sft"][d]["conf_ece"]["p"], "p_holm": p,
                             "below_sft": bool(p < HOLM_ALPHA and diffs[r]["sft"][d]["conf_ece"]["mean"] < 0)}
                for (r, d), p in zip(family, adjusted)}
    temps = [s["rows"]["ts"]["temperature"] for s in per_seed.values() if "temperature" in s["rows"].get("ts", {})]
    return {"rows": rows, "cells": cells, "diffs": diffs, "verdicts": verdicts, "holm_secondary": holm_out,
            "temperature": mean_ci(temps),
            "primary": primary_answer(diffs) if PRIMARY in verdicts else None}


def _table(study: dict, dom: str) -> list[str]:
    s = study["summary"]
    out = [f"| row | conf-ECE | cw-ECE | accuracy |", "|---|---|---|---|"]
    for r in s["rows"]:
        c = s["cells"][r]
        out.append(f"| {ROWS[r]} | {fmt_pm(c[f'conf_ece_{dom}'])} | {fmt_pm(c[f'cw_ece_{dom}'])} | "
                   f"{fmt_pm(c[f'acc_{dom}'])} |")
    return out


def _diff_table(study: dict, dom: str) -> list[str]:
    s = study["summary"]
    out = ["| row | vs | Δ conf-ECE | Δ cw-ECE | Δ accuracy |", "|---|---|---|---|---|"]
    for r in s["rows"]:
        for b, d in s["diffs"][r].items():
            out.append(f"| {ROWS[r]} | {ROWS[b]} | {fmt_ci(d[dom]['conf_ece'])} | {fmt_ci(d[dom]['cw_ece'])} | "
                       f"{fmt_pt(d[dom]['acc'])} |")
    return out


def render(study: dict) -> str:
    meta, s = study["meta"], study["summary"]
    seeds = meta["seeds"]
    md = ["# The method study on the real model (SmolLM2-135M-Instruct, real facts)", "",
          f"Seeds (training seed, split seed): {', '.join(f'({k}, {k})' for k in seeds)}; commit {meta.get('commit')}, "
          f"{meta.get('machine')}; wall time {meta.get('wall_time_s')} s. Plan: "
          "[`real_model_plan.md`](real_model_plan.md); budget: " + ", ".join(
              f"{k} {v}" for k, v in meta.get("settings", {}).items()) + ".", "",
          "Cells: mean ± 95 % t half-width over the seeds. Δ: paired difference (row − baseline) with its 95 % "
          "interval; accuracy in points.", "", MARGINS_TEXT, ""]
    t = s.get("temperature") or {}
    if t.get("n"):
        md += [f"TS: T fitted on the shipped model's `target` logits, {fmt_pm(t)} over the seeds.", ""]
    for dom, label in DOMAINS.items():
        md += [f"## {label[0].upper() + label[1:]}", "", *_table(study, dom), "", *_diff_table(study, dom), ""]
    md += ["## Verdicts (pre-registered margins)", ""]
    if not s["verdicts"]:
        md.append("None: no CFT / RCFT row has both SFT λ=0 and TS beside it yet.")
    else:
        md += ["| row | domain | conf-ECE below SFT λ=0 | conf-ECE vs TS (±0.01) | no worse than TS | accuracy vs "
               "SFT λ=0 (−1 pt) |", "|---|---|---|---|---|---|"]
    for r, v in s["verdicts"].items():
        for dom in DOMAINS:
            x = v[dom]
            md.append(f"| {ROWS[r]} | {dom} | {x['vs_sft_conf_ece']} | {x['vs_ts_conf_ece']} | {x['vs_ts_no_worse']} | "
                      f"{x['acc_vs_sft']} |")
    if s["holm_secondary"]:
        md += ["", f"Secondary rows, conf-ECE against SFT λ=0 (Holm over {len(s['holm_secondary'])} tests, "
                   f"α {HOLM_ALPHA:g}):", ""]
        md += [f"- {k}: p {v['p']:.3g}, Holm p {v['p_holm']:.3g}{' (below SFT λ=0)' if v['below_sft'] else ''}"
               for k, v in s["holm_secondary"].items()]
    md += ["", "## Primary question (pre-registered)", "",
           f"Does {ROWS[PRIMARY]} have lower conf-ECE than SFT λ=0, no worse than TS, with accuracy non-inferior to "
           "SFT λ=0, in and out of domain?", ""]
    p = s.get("primary")
    if p is None:
        md.append("Not answerable: a seed lacks one of its rows.")
    else:
        for dom in DOMAINS:
            md.append(f"- {dom}: " + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in p[dom].items()))
        md += ["", f"**Answer: {p['answer']}** ({len(seeds)} seeds)."]
    return "\n".join(md) + "\n"


class RealStudy(Study):
    """``--study real``: ``real_model.json``, ``real_model.md``. The shipped model is built once in
    ``<output dir>/real`` (:func:`axolotl_calib_plugin.demo.real_world.prepare`)."""

    name = "real"
    stem = "real_model"
    real_settings = REAL  # its own budget (not DemoSettings overrides: the synthetic pipeline is not used)

    def run_seed(self, seed_dir, seed, settings, plan, parallel, reuse) -> dict:
        real_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(seed_dir))), "real")
        return run_real_seed(seed_dir, seed, real_dir, self.real_settings, parallel=parallel, reuse=reuse)

    def describe(self, settings, plan) -> dict:
        from dataclasses import asdict

        return {"settings": asdict(self.real_settings), "runs": [asdict(r) for r in RUNS], "primary": PRIMARY}

    def summarize(self, per_seed: dict) -> dict:
        return summarize(per_seed)

    def render(self, study: dict) -> str:
        return render(study)
