"""The held-out M-step study: does the ECE term earn its place once q_m comes from rows the model never fitted?

Per seed (``axolotl-calib demo --seeds N --study heldout``): base SFT, the two start models (DPO, 20-epoch
SFT), and in the over-fine-tuned arm CFT and RCFT with three target variants -- bin accuracies from the
training rows (Algorithm 1), from the held-out TS-fit split (``calib_bin_accuracy: heldout``), and per-row
temperature-scaled targets with T fitted on that split (``calib_targets: temperature``, KL) -- each at
lambda 1 and 10, their shared lambda-0 run (plain SFT through the plugin), held-out bins with KL at lambda 10
(KL vs squared error), and temperature scaling fitted on the same held-out split.

Reported: the pre-check (per-bin accuracy of each start model on its training rows vs held-out rows), every
variant minus its lambda-0 run (paired over seeds, 95% t intervals, Holm-adjusted p-values over the family of
in-domain conf-ECE comparisons), and per variant three verdicts from the pre-registered margins of :mod:`.base`
(an ECE gain, after Holm or not; accuracy non-inferior within 1 point; no worse than / level with temperature
scaling at +-0.01 conf-ECE), the variants that meet all three, and a figure of the paired differences.
"""

from __future__ import annotations

import glob
import json
import math
import os

import numpy as np
import yaml
from scipy.special import softmax

from .. import seed_results
from ...eval.temperature import apply_temperature
from ...rows import read_jsonl
from ...train.eval_calibration import DEFAULT_TARGET_FRACTION
from ..analysis import scores
from ..pipeline import ARMS, Plan, calib_name
from ..stats import equivalence, fmt_ci, fmt_pm, fmt_pt, holm, mean_ci, non_inferior, paired_difference
from .base import ACC_NONINFERIORITY_MARGIN, HOLM_ALPHA, MARGINS_TEXT, TS_EQUIVALENCE_MARGIN, Study, seed_values

__all__ = ["ARM_TEXT", "FIX_ARM", "HeldoutStudy", "LAMBDAS", "PLAN", "TITLE", "VARIANT_LABEL", "VARIANT_ORDER",
           "absolute_lines", "fit_split_scores", "header_lines", "optimism_lines", "plot_deltas", "render_markdown", "summarize", "summarize_optimism",
           "variant_verdict"]

LAMBDAS = (1.0, 10.0)
VARIANT_ORDER = ("train", "heldout", "heldout_auto", "heldout_kl", "temp")
VARIANT_LABEL = {"train": "training-row bins (Alg. 1)", "heldout": "held-out bins",
                 "heldout_auto": "held-out bins (default auto: the config has an eval split)",
                 "heldout_kl": "held-out bins, KL", "temp": "held-out temperature targets, KL"}
PLAN = Plan(arms=ARMS, lambdas=(0.0,) + LAMBDAS, label_smoothing=False, online=False, sweep_overfit=True,
            variants=("train", "heldout", "temp"), extra_runs=(("cft", "heldout_kl", 10.0),), fix_arms=("overfit",),
            heldout_eval=True)
FIX_ARM = "overfit"
ARM_TEXT = {"overfit": "over-fine-tuned arm", "aligned": "aligned (DPO) arm"}
TITLE = "# Does the ECE term earn its place? Held-out bin accuracies and temperature targets"


def _bins_mean(per_seed: dict, arm: str, split: str) -> dict:
    """Per bin over seeds: total count and pooled accuracy / confidence (count-weighted)."""
    tables = [s["rows"].get(arm, {}).get("bins", {}).get(split) for s in per_seed.values()]
    tables = [t for t in tables if t]
    if not tables:
        return {}
    count = np.sum([t["count"] for t in tables], axis=0)
    acc = np.sum([[c * (a or 0.0) for c, a in zip(t["count"], t["acc"])] for t in tables], axis=0)
    conf = np.sum([[c * (a or 0.0) for c, a in zip(t["count"], t["conf"])] for t in tables], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"count": count.tolist(), "acc": [None if c == 0 else float(a / c) for a, c in zip(acc, count)],
                "conf": [None if c == 0 else float(a / c) for a, c in zip(conf, count)], "seeds": len(tables)}


#: the split whose rows set the held-out variants' targets (and temperature scaling's T), as the demo names it
FIT_SPLIT = "ts_fit"


def _target_fraction(cfg_path: str, fit_path: str) -> float:
    """The share of the fit split's rows that set this run's targets: ``calib_target_fraction`` when the run's
    M-step reads held-out rows from that split (``calib_bin_accuracy: heldout`` or ``auto`` with an eval split, or
    ``calib_targets: temperature``), else 0 (its targets come from training rows, or it has none)."""
    if not os.path.exists(cfg_path):
        return 0.0
    with open(cfg_path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    evals = [os.path.abspath(d.get("path", "")) for d in cfg.get("test_datasets") or [] if isinstance(d, dict)]
    if os.path.abspath(fit_path) not in evals or not float(cfg.get("calib_lambda") or 0):
        return 0.0
    bins = cfg.get("calib_bin_accuracy", "auto")
    if bins in ("heldout", "auto") or cfg.get("calib_targets") == "temperature":
        return float(cfg.get("calib_target_fraction", DEFAULT_TARGET_FRACTION))
    return 0.0


def fit_split_scores(seed_dir: str) -> dict:
    """Per model of a seed that was scored on the fit split (``eval/<model>__ts_fit.json``; every model when its
    plan has ``heldout_eval``): conf-ECE, cw-ECE, accuracy and row count there, the row count of its report split
    (``eval_in``) and ``target_fraction`` (the share of those rows that set its targets, from its config); the
    arms' temperature-scaled rows (T from ``results.json``, fitted on every fit row: ``target_fraction`` 1). Empty
    when the seed has no such evaluation. A dump whose gold labels differ from the fit split's file is an error."""
    eval_dir, data = os.path.join(seed_dir, "eval"), os.path.join(seed_dir, "data", f"{FIT_SPLIT}.jsonl")
    dumps = sorted(glob.glob(os.path.join(glob.escape(eval_dir), f"*__{FIT_SPLIT}.json")))
    if not dumps or not os.path.exists(data):
        return {}
    gold = np.array([r["answer"] for r in read_jsonl(data)], dtype=np.int64)
    out, logliks = {}, {}
    for path in dumps:
        name = os.path.basename(path)[: -len(f"__{FIT_SPLIT}.json")]
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        z, y = np.asarray(d["logliks"], dtype=np.float64), np.asarray(d["labels"], dtype=np.int64)
        if not np.array_equal(y, gold):
            raise ValueError(f"{path}: its gold labels differ from {data}; delete the dump and rerun the study to "
                             "re-evaluate it")
        report_path = os.path.join(eval_dir, f"{name}__in.json")
        if not os.path.exists(report_path):
            continue
        with open(report_path, encoding="utf-8") as f:
            n_report = len(json.load(f)["labels"])
        logliks[name] = z
        sc = scores(softmax(z, axis=1), y).as_dict()
        out[name] = {**{m: sc[m] for m in ("conf_ece", "cw_ece", "acc", "n")}, "report_n": n_report,
                     "target_fraction": _target_fraction(os.path.join(seed_dir, "configs", f"{name}.yml"), data)}
    results = os.path.join(seed_dir, "results.json")
    if os.path.exists(results):
        with open(results, encoding="utf-8") as f:
            rows = json.load(f).get("rows", {})
        for arm in ARMS:
            t = rows.get(f"{arm}.ts", {}).get("temperature")
            if t is not None and arm in logliks:
                sc = scores(apply_temperature(logliks[arm], t), gold).as_dict()
                out[f"{arm}.ts"] = {**{m: sc[m] for m in ("conf_ece", "cw_ece", "acc", "n")},
                                    "report_n": out[arm]["report_n"], "target_fraction": 1.0}
    return out


def _fit_values(per_seed: dict, key: str, field: str) -> list:
    return [s.get("fit", {}).get(key, {}).get(field) for s in per_seed.values()]


def summarize_optimism(per_seed: dict, comps: list[dict], fix_arm: str = FIX_ARM) -> list[dict]:
    """How much better a model looks on the rows that set its targets than on rows that set none: per run, the
    conf-ECE on the fit split (target rows) and on ``eval_in`` (report rows), and the optimism, conf-ECE on report
    rows minus conf-ECE on target rows, paired over seeds (> 0: the target rows flatter the model). The start
    model and the lambda-0 run are controls (their fit rows set no target: their difference is what two held-out
    splits of these sizes differ by, finite-sample ECE bias included); each variant's ``net`` is its optimism minus
    its lambda-0 run's, temperature scaling's minus its start model's, paired over seeds. Empty when no seed has
    fit-split scores."""
    if not any(s.get("fit") for s in per_seed.values()):
        return []
    keys = [fix_arm] + list(dict.fromkeys(c["base"] for c in comps)) + [c["key"] for c in comps] + [f"{fix_arm}.ts"]
    by_key = {c["key"]: c for c in comps}
    out = []

    def optimism(key):
        return [None if r is None or t is None else r - t
                for r, t in zip(seed_values(per_seed, key, "in", "conf_ece"), _fit_values(per_seed, key, "conf_ece"))]

    for key in dict.fromkeys(keys):
        target = _fit_values(per_seed, key, "conf_ece")
        if all(v is None for v in target):
            continue
        fractions = sorted({v for v in _fit_values(per_seed, key, "target_fraction") if v is not None})
        e = {"key": key, "target_fraction": fractions,
             "n_target_rows": sorted({v for v in _fit_values(per_seed, key, "n") if v is not None}),
             "n_report_rows": sorted({v for v in _fit_values(per_seed, key, "report_n") if v is not None}),
             "conf_ece_target": mean_ci([v for v in target if v is not None]),
             "conf_ece_report": mean_ci([v for v, t in zip(seed_values(per_seed, key, "in", "conf_ece"), target)
                                         if v is not None and t is not None]),
             "optimism": paired_difference(seed_values(per_seed, key, "in", "conf_ece"), target)}
        control = by_key[key]["base"] if key in by_key else fix_arm if key == f"{fix_arm}.ts" else None
        if control is not None:
            e["net"] = paired_difference(optimism(key), optimism(control))
            e["base"] = control
        out.append(e)
    return out


def summarize(per_seed: dict, fix_arm: str = FIX_ARM, variant_of: dict | None = None, skip: tuple = ()) -> dict:
    """Pre-check per arm, every variant of ``fix_arm`` minus its lambda-0 run (Holm over the family), verdicts.
    ``variant_of``: run key -> the variant it actually ran (from its config), overriding its name; ``skip``: run keys
    left out (e.g. a duplicate of another run)."""
    precheck = {}
    for arm in ARMS:
        train, held = _bins_mean(per_seed, arm, "train"), _bins_mean(per_seed, arm, "heldout")
        if train:
            precheck[arm] = {"train_bins": train, "heldout_bins": held,
                             "conf_ece_train": mean_ci([v for v in seed_values(per_seed, arm, "train", "conf_ece") if v is not None]),
                             "conf_ece_heldout": mean_ci([v for v in seed_values(per_seed, arm, "heldout", "conf_ece") if v is not None]),
                             "acc_train": mean_ci([v for v in seed_values(per_seed, arm, "train", "acc") if v is not None]),
                             "acc_heldout": mean_ci([v for v in seed_values(per_seed, arm, "heldout", "acc") if v is not None])}
    cells, comps = {}, []
    keys = sorted({k for s in per_seed.values() for k in s["rows"]})
    for k in keys:
        cells[k] = {f"{m}_{d}": mean_ci([v for v in seed_values(per_seed, k, d, m) if v is not None])
                    for m in ("conf_ece", "cw_ece", "acc") for d in ("in", "out")}
    ts_key = f"{fix_arm}.ts"
    for mode in ("cft", "rcft"):
        base = calib_name(fix_arm, mode, 0.0)
        for variant in VARIANT_ORDER:
            for lam in LAMBDAS:
                key = calib_name(fix_arm, mode, lam, variant=variant)
                if key not in keys or base not in keys or key in skip:
                    continue
                c = {"key": key, "mode": mode, "variant": (variant_of or {}).get(key, variant), "lambda": lam, "base": base,
                     "vs_lam0": {f"{m}_{d}": paired_difference(seed_values(per_seed, key, d, m), seed_values(per_seed, base, d, m))
                                 for m in ("conf_ece", "cw_ece", "acc") for d in ("in", "out")}}
                if ts_key in keys:
                    c["vs_ts"] = {f"{m}_{d}": paired_difference(seed_values(per_seed, key, d, m), seed_values(per_seed, ts_key, d, m))
                                  for m in ("conf_ece",) for d in ("in", "out")}
                comps.append(c)
    adj = holm([c["vs_lam0"]["conf_ece_in"].get("p", float("nan")) for c in comps])
    for c, p in zip(comps, adj):
        c["vs_lam0"]["conf_ece_in"]["p_holm"] = p
    for c in comps:
        c["verdict"] = variant_verdict(c)
    extra = {}
    optimism = summarize_optimism(per_seed, comps, fix_arm)
    if optimism:  # only seeds scored on the fit split have it; older summaries stay as they were
        extra["optimism"] = optimism
    return {"fix_arm": fix_arm, "keys": keys, "cells": cells, "precheck": precheck, "comparisons": comps,
            "margins": {"acc_noninferiority": ACC_NONINFERIORITY_MARGIN, "ts_equivalence": TS_EQUIVALENCE_MARGIN,
                        "holm_alpha": HOLM_ALPHA},
            "all_three": [c["key"] for c in comps if c["verdict"]["all_three"]],
            "all_three_unadjusted": [c["key"] for c in comps if c["verdict"]["all_three_unadjusted"]],
            "family_size": sum(1 for c in comps if not math.isnan(c["vs_lam0"]["conf_ece_in"].get("p", float("nan")))),
            **extra}


def variant_verdict(c: dict) -> dict:
    """The three criteria for one variant, from the pre-registered margins: an ECE gain over its lambda-0 run (the
    in-domain conf-ECE interval below 0; after Holm: its adjusted p below ``HOLM_ALPHA`` too), accuracy
    non-inferior within ``ACC_NONINFERIORITY_MARGIN``, and no worse than temperature scaling (the upper end of
    its conf-ECE difference from TS below ``TS_EQUIVALENCE_MARGIN``; "level" when the interval lies inside the
    +- margin). ``all_three`` needs the gain after Holm; ``all_three_unadjusted`` the unadjusted gain."""
    d, a = c["vs_lam0"]["conf_ece_in"], c["vs_lam0"]["acc_in"]
    t = c.get("vs_ts", {}).get("conf_ece_in")
    enough = d["n"] >= 2 and not math.isnan(d["hi"])
    gain = bool(enough and d["hi"] < 0)
    gain_holm = bool(gain and d.get("p_holm", float("nan")) < HOLM_ALPHA)
    acc = non_inferior(a, ACC_NONINFERIORITY_MARGIN)
    if t is None:
        ts, no_worse = "no TS run", None
    elif t["n"] < 2 or math.isnan(t["hi"]):
        ts, no_worse = "not shown level with TS", None
    else:
        no_worse = bool(t["hi"] < TS_EQUIVALENCE_MARGIN)
        if equivalence(t, TS_EQUIVALENCE_MARGIN) == "equivalent":
            ts = "level with TS"
        elif t["lo"] > 0:
            ts = "worse than TS"
        elif t["hi"] < 0:
            ts = "better than TS"
        else:
            ts = "no worse than TS, not shown level" if no_worse else "not shown level with TS"
    return {"ece_gain": gain, "ece_gain_holm": gain_holm, "acc": acc, "vs_ts": ts, "no_worse_than_ts": no_worse,
            "all_three": bool(gain_holm and acc == "reproduced" and no_worse),
            "all_three_unadjusted": bool(gain and acc == "reproduced" and no_worse)}


_ACC_WORD = {"reproduced": "accuracy non-inferior", "not reproduced": "accuracy inferior",
             "inconclusive": "accuracy not shown non-inferior"}


def _variant_text(c: dict) -> str:
    return f"{c['mode'].upper()}, {VARIANT_LABEL[c['variant']]}, λ={c['lambda']:g}"


def verdict_lines(s: dict) -> list[str]:
    """One line per variant (its three criteria), then which variants meet all three, with and without Holm."""
    lines = []
    for c in s["comparisons"]:
        v, d = c["verdict"], c["vs_lam0"]
        ph = d["conf_ece_in"].get("p_holm", float("nan"))
        gain = ("ECE gain after Holm" if v["ece_gain_holm"] else "ECE gain, not after Holm" if v["ece_gain"]
                else "ECE gain not shown")
        lines.append(f"* {_variant_text(c)}: {gain} (Δ conf-ECE in {fmt_ci(d['conf_ece_in'])}, Holm p "
                     f"{'-' if math.isnan(ph) else f'{ph:.3g}'}); {_ACC_WORD[v['acc']]} (Δ acc in {fmt_pt(d['acc_in'])}); "
                     f"{v['vs_ts']} (Δ conf-ECE in vs TS {fmt_ci(c.get('vs_ts', {}).get('conf_ece_in'))}).")
    by_key = {c["key"]: c for c in s["comparisons"]}
    names = lambda keys: "; ".join(_variant_text(by_key[k]) for k in keys) or "none"  # noqa: E731
    n = len(s["comparisons"])
    lines += ["", f"**Variants that meet all three criteria** (ECE gain after Holm, accuracy non-inferior, no worse "
                  f"than TS): {names(s['all_three'])} (of {n}).", "",
              f"**Without the Holm adjustment** (a gain interval below 0 is enough): {names(s['all_three_unadjusted'])} "
              f"(of {n}; picked after looking at {n} variants, so this is not a finding on its own)."]
    return lines


def _optimism_label(key: str, by_key: dict, fix_arm: str) -> str:
    if key in by_key:
        return _variant_text(by_key[key])
    if key == f"{fix_arm}.ts":
        return "temperature scaling (T fitted on the fit split)"
    if key == fix_arm:
        return f"{seed_results.row_label(key)}: the start model"
    arm, _, method = key.partition(".")
    return f"{method.split('_')[0].upper()}, λ=0 (plain SFT through the plugin)"


def _rows_text(values: list) -> str:
    return "/".join(str(v) for v in values) or "?"


def optimism_lines(s: dict) -> list[str]:
    """The optimism section (empty without fit-split scores): per run, conf-ECE on the rows that set its targets
    and on the report rows, their paired difference, and for each variant that difference net of its lambda-0
    run's."""
    entries = s.get("optimism") or []
    if not entries:
        return []
    by_key = {c["key"]: c for c in s["comparisons"]}
    fix_arm = s.get("fix_arm", FIX_ARM)
    n_seeds = max(e["optimism"]["n"] for e in entries)
    lines = ["## Optimism: conf-ECE on the rows that set the targets vs on rows that set none", "",
             "**optimism = conf-ECE on report rows − conf-ECE on target rows** (paired over seeds, mean [95% CI]; "
             "> 0: scored on its own target rows, a model looks better calibrated than it is). Target rows: the "
             f"fit split (`{FIT_SPLIT}`), whose rows set the held-out variants' bin accuracies / temperature targets "
             "(`calib_target_fraction` 1: every row) and temperature scaling's T; report rows: `eval_in`, which set no "
             "target. The start model and the λ=0 run read no fit row (target share 0): their difference is what two "
             "held-out splits of these sizes differ by (a 10-bin ECE on fewer rows is biased upward), so each variant's "
             "**net** optimism is its optimism minus its λ=0 run's (temperature scaling's: minus its start model's), "
             "paired over seeds.", "",
             "| run | share of fit rows that set its targets | n target rows | conf-ECE on target rows | n report rows | "
             "conf-ECE on report rows | optimism | net of its control | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in entries:
        share = "/".join(f"{v:g}" for v in e["target_fraction"]) or "?"
        lines.append(f"| {_optimism_label(e['key'], by_key, fix_arm)} | {share} | {_rows_text(e['n_target_rows'])} | "
                     f"{fmt_pm(e['conf_ece_target'])} | {_rows_text(e['n_report_rows'])} | {fmt_pm(e['conf_ece_report'])} | "
                     f"{fmt_ci(e['optimism'])} | {fmt_ci(e['net']) if 'net' in e else ''} | {e['optimism']['n']} |")
    lines.append("")
    for e in entries:
        if "net" in e:
            control = "its λ=0 run" if e["key"] in by_key else "its start model"
            lines.append(f"* {_optimism_label(e['key'], by_key, fix_arm)}: optimism {fmt_ci(e['optimism'])}, net of "
                         f"{control} {fmt_ci(e['net'])} (n = {e['net']['n']} seed(s); {_rows_text(e['n_target_rows'])} "
                         f"target rows, {_rows_text(e['n_report_rows'])} report rows).")
    if n_seeds < 2:
        lines += ["", "One seed: no interval."]
    lines.append("")
    return lines


def _cost_text(study: dict) -> str:
    """Training time per seed as the runs recorded it (a resumed invocation reuses runs, so its wall time says
    little): the sum of every run's own seconds, one torch thread each."""
    totals = [sum(v for k, v in s.get("timings_s", {}).items() if k != "lm_eval") for s in study["per_seed"].values()]
    text = f"Machine: {study['meta']['machine']}."
    if totals:
        text += (f" Training time per seed, summed over its runs (each on one core; the machine was shared with other "
                 f"jobs): {min(totals) / 60:.0f}-{max(totals) / 60:.0f} min.")
    return text


def header_lines(study: dict, title: str = TITLE) -> list[str]:
    """The title, the settings line and the meta's note."""
    m = study["meta"]
    lines = [title, "",
             f"{m['n_seeds']} seed(s) ({', '.join(map(str, m['seeds']))}), {m['settings']['world']} world, "
             f"{m['settings']['n_train']} training questions; held-out rows: the {m['settings']['n_ts']}-question "
             f"TS-fit split (also what temperature scaling is fitted on); {m['settings']['n_eval_in']} in-domain / "
             f"{m['settings']['n_eval_out']} out-of-domain eval questions. Code: {m.get('commit', '?')}. "
             f"{_cost_text(study)}", ""]
    if m.get("note"):
        lines += [m["note"], ""]
    return lines


def absolute_lines(s: dict) -> list[str]:
    """The table of every run's absolute values (mean ± 95% half-width)."""
    lines = ["## Absolute values (mean ± 95% half-width)", "", "| model | conf-ECE in | conf-ECE out | acc in | acc out |",
             "|---|---:|---:|---:|---:|"]
    for k in seed_results.ordered_keys(s["keys"]):
        if k == "oracle" or k in s["cells"]:
            c = s["cells"].get(k)
            if c:
                lines.append(f"| {k} | {fmt_pm(c['conf_ece_in'])} | {fmt_pm(c['conf_ece_out'])} | {fmt_pm(c['acc_in'])} | {fmt_pm(c['acc_out'])} |")
    return lines


def render_markdown(study: dict, title: str = TITLE) -> str:
    s = study["summary"]
    arm_text = ARM_TEXT[s.get("fix_arm", FIX_ARM)]
    lines = header_lines(study, title)
    lines += ["## Pre-check (no training): per-bin accuracy of the start model, training rows vs held-out rows", "",
              "Counts summed and accuracies pooled over seeds; `–` = empty bin.", ""]
    for arm, pc in s["precheck"].items():
        label = seed_results.row_label(arm)
        lines += [f"**{label}**: conf-ECE on its training rows {fmt_pm(pc['conf_ece_train'])} vs held-out "
                  f"{fmt_pm(pc['conf_ece_heldout'])}; accuracy {fmt_pm(pc['acc_train'])} vs {fmt_pm(pc['acc_heldout'])}.", "",
                  "| bin | train n | train acc | train conf | held-out n | held-out acc | held-out conf |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        tb, hb = pc["train_bins"], pc["heldout_bins"] or {"count": [0] * 10, "acc": [None] * 10, "conf": [None] * 10}
        f = (lambda v: "–" if v is None else f"{v:.3f}")
        for b in range(len(tb["count"])):
            if tb["count"][b] == 0 and hb["count"][b] == 0:
                continue
            lines.append(f"| {(b) / 10:.1f}–{(b + 1) / 10:.1f} | {tb['count'][b]} | {f(tb['acc'][b])} | {f(tb['conf'][b])} | "
                         f"{hb['count'][b]} | {f(hb['acc'][b])} | {f(hb['conf'][b])} |")
        lines.append("")
    lines += [f"## Each variant minus its λ=0 run ({arm_text}; paired over seeds, 95% CI)", "",
              f"Holm-adjusted p over the {s['family_size']} in-domain conf-ECE comparisons of this table.", "",
              "| run | variant | λ | Δ conf-ECE in | Holm p | Δ conf-ECE out | Δ cw-ECE in | Δ acc in | vs TS: Δ conf-ECE in |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in s["comparisons"]:
        d = c["vs_lam0"]
        ph = d["conf_ece_in"].get("p_holm", float("nan"))
        lines.append(f"| {c['mode'].upper()} | {VARIANT_LABEL[c['variant']]} | {c['lambda']:g} | {fmt_ci(d['conf_ece_in'])} | "
                     f"{'-' if math.isnan(ph) else f'{ph:.3g}'} | {fmt_ci(d['conf_ece_out'])} | {fmt_ci(d['cw_ece_in'])} | "
                     f"{fmt_ci(d['acc_in'])} | {fmt_ci(c.get('vs_ts', {}).get('conf_ece_in'))} |")
    lines += ["", *absolute_lines(s)]
    lines += ["", "## Verdicts per variant", "", MARGINS_TEXT, "", *verdict_lines(s)]
    lines.append("")
    if s.get("optimism"):
        lines += ["", *optimism_lines(s)]
    return "\n".join(lines)


def plot_deltas(study: dict, path: str) -> str:
    """Paired differences vs lambda 0 (in-domain conf-ECE), one panel per mode, variants side by side per lambda."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = study["summary"]["comparisons"]
    lams = [lam for lam in LAMBDAS if any(c["lambda"] == lam for c in comps)]  # only the lambdas that ran
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = dict(zip(VARIANT_ORDER, ("#7f7f7f", "#1f77b4", "#17becf", "#2ca02c", "#d62728")))
    for ax, mode in zip(axes, ("cft", "rcft")):
        for j, variant in enumerate(VARIANT_ORDER):
            pts = [c for c in comps if c["mode"] == mode and c["variant"] == variant]
            if not pts:
                continue
            x = [lams.index(c["lambda"]) + (j - 2) * 0.12 for c in pts]
            d = [c["vs_lam0"]["conf_ece_in"] for c in pts]
            y = [v["mean"] for v in d]
            err = [0 if math.isnan(v["half"]) else v["half"] for v in d]
            ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, color=colors[variant], label=VARIANT_LABEL[variant])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(lams)), [f"λ={lam:g}" for lam in lams])
        ax.set_xlim(-0.5, len(lams) - 0.5)
        ax.set_title(f"{mode.upper()} ({ARM_TEXT[study['summary'].get('fix_arm', FIX_ARM)]})")
        if mode == "cft":  # the panels share the y axis: one label
            ax.set_ylabel("in-domain conf-ECE minus its λ=0 run\n(mean, 95% CI over seeds; < 0 = better)")
        ax.grid(alpha=0.3, axis="y")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


class HeldoutStudy(Study):
    """``--study heldout``: ``heldout.json``, ``heldout.md``, ``heldout_deltas.png``."""

    name = "heldout"
    stem = "heldout"
    plan = PLAN
    title = TITLE

    def seed_extras(self, seed_dir: str) -> dict:
        """The seed's scores on the fit split (:func:`fit_split_scores`), where it was evaluated there."""
        fit = fit_split_scores(seed_dir)
        return {"fit": fit} if fit else {}

    def summarize(self, per_seed: dict) -> dict:
        return summarize(per_seed)

    def render(self, study: dict) -> str:
        return render_markdown(study, title=self.title)

    def figures(self, study: dict, summary_dir: str) -> list[str]:
        if not study["summary"]["comparisons"]:
            return []
        return [plot_deltas(study, os.path.join(summary_dir, f"{self.stem}_deltas.png"))]
