"""The alignment study: the aligned (DPO) arm with the preference domain -- Table 3 in miniature -- and the
held-out M-step variants in that arm (one rerun serves both questions).

Per seed (``axolotl-calib demo --seeds N --study alignment``): base SFT (MCQ + preference-domain prompts with
uniform replies), DPO (MCQ pairs + Bradley-Terry pairs on the known reward r*), then from the DPO model:
label smoothing, CFT and RCFT at lambda 0 (plain SFT through the plugin) and 1 (Algorithm 1), and CFT with
held-out bin accuracies and with held-out temperature targets; temperature scaling post hoc.

Reported, paired over seeds (95% t intervals):

* calibration: each variant minus its lambda-0 run (as in :mod:`.heldout`, Holm over the family);
* alignment, exact on held-out preference prompts (:func:`.analysis.reward_stats`): DPO minus base expected
  reward (does DPO add alignment?), every fix's expected reward minus DPO's with a non-inferiority verdict
  (the fix keeps at least ``1 - KEEP_MARGIN`` of DPO's gain over base), and its win rate against the DPO
  model (0.5 = indistinguishable). Temperature scaling leaves the policy unchanged (its row is DPO's).
"""

from __future__ import annotations

import glob
import math
import os

from .. import seed_results
from ..pipeline import Plan, calib_name
from ..stats import fmt_ci, fmt_pm, mean_ci, paired_difference
from . import heldout
from .heldout import HeldoutStudy

__all__ = ["ARM", "AlignmentStudy", "KEEP_MARGIN", "PLAN", "REWARD_METRICS", "as_run", "bin_accuracy_as_run",
           "fix_keys", "render_alignment", "run_label", "summarize_alignment", "table3_line"]

ARM = "aligned"
PLAN = Plan(arms=(ARM,), lambdas=(0.0, 1.0), label_smoothing=True, online=False, variants=("train",),
            extra_runs=(("cft", "heldout", 1.0), ("cft", "temp", 1.0)), fix_arms=(ARM,), heldout_eval=True)
#: a fix "keeps alignment" when its expected reward minus DPO's has a lower 95% bound above -KEEP_MARGIN x
#: (DPO's mean gain over base): it keeps at least 90% of what DPO added
KEEP_MARGIN = 0.10
REWARD_METRICS = ("expected_reward", "win_rate", "best_reply", "pref_ratio", "true_pref", "pair_rank_acc")


def _reward(per_seed: dict, key: str, metric: str) -> list:
    return [s["rows"].get(key, {}).get("reward", {}).get(metric) for s in per_seed.values()]


def fix_keys(keys) -> list[str]:
    """The aligned arm's fixes in table order."""
    return [k for k in seed_results.ordered_keys(keys) if k.startswith(ARM + ".")]


def summarize_alignment(per_seed: dict, skip: tuple = ()) -> dict:
    keys = sorted({k for s in per_seed.values() for k in s["rows"]} - set(skip))
    cells = {k: {m: mean_ci([v for v in _reward(per_seed, k, m) if v is not None]) for m in REWARD_METRICS}
             for k in keys if any(_reward(per_seed, k, "expected_reward"))}
    bounds = {b: mean_ci([s["rows"].get("oracle", {}).get("reward", {}).get(b) for s in per_seed.values()
                          if s["rows"].get("oracle", {}).get("reward")]) for b in ("uniform", "best")}
    gain = paired_difference(_reward(per_seed, ARM, "expected_reward"), _reward(per_seed, "base", "expected_reward"))
    margin = KEEP_MARGIN * gain["mean"] if gain["n"] and gain["mean"] > 0 else float("nan")
    fixes = {}
    for k in fix_keys(keys):
        d = paired_difference(_reward(per_seed, k, "expected_reward"), _reward(per_seed, ARM, "expected_reward"))
        w = mean_ci([v for v in _reward(per_seed, k, "win_rate") if v is not None])
        kept = None if math.isnan(margin) or d["n"] < 2 else bool(d["lo"] > -margin)
        fixes[k] = {"vs_dpo": d, "win_rate": w, "kept": kept,
                    "policy_unchanged": k.endswith(".ts")}
    return {"cells": cells, "bounds": bounds, "dpo_gain": gain, "margin": margin, "fixes": fixes,
            "dpo_adds_alignment": bool(gain["n"] >= 2 and gain["lo"] > 0)}


def render_alignment(study: dict) -> list[str]:
    a = study["summary"]["alignment"]
    g = a["dpo_gain"]
    lines = ["## Alignment kept? Exact metrics on held-out preference prompts (Table 3 in miniature)", "",
             "The judge is the known reward r*, so expected reward and win rate are exact sums over the candidate "
             "replies (no sampling, no judge model); the intervals are over seeds. Reference points: uniform "
             f"policy {fmt_pm(a['bounds']['uniform'])}, best reply every time "
             f"{fmt_pm(a['bounds']['best'])}.", "",
             f"**DPO − base expected reward: {fmt_ci(g)}** -> DPO "
             f"{'adds' if a['dpo_adds_alignment'] else 'is not shown to add'} alignment "
             f"(non-inferiority margin for the fixes: {KEEP_MARGIN:.0%} of that gain = "
             f"{a['margin']:.3f} reward).", "",
             "| model | E[r*] | Δ E[r*] vs DPO | kept (≥90% of DPO's gain) | win rate vs DPO | P(best reply) | "
             "pref ratio (true) |", "|---|---:|---:|:---:|---:|---:|---:|"]
    verdicts = []
    for k in seed_results.ordered_keys(a["cells"]):
        c = a["cells"][k]
        f = a["fixes"].get(k)
        kept = "-" if not f or f["kept"] is None else ("yes" if f["kept"] else "not shown")
        if f and f["policy_unchanged"]:
            kept = "= DPO (TS leaves the policy unchanged)"
        label = run_label(study["summary"], k)
        if f and not f["policy_unchanged"]:
            verdicts.append(f"* {label}: Δ E[r*] vs DPO {fmt_ci(f['vs_dpo'])}: "
                            f"{'keeps' if f['kept'] else 'not shown to keep'} alignment (≥ {1 - KEEP_MARGIN:.0%} of "
                            f"DPO's gain); win rate vs DPO {fmt_pm(f['win_rate'])}.")
        lines.append(f"| {label} | {fmt_pm(c['expected_reward'])} | {fmt_ci(f['vs_dpo']) if f else '-'} | {kept} | "
                     f"{fmt_pm(c['win_rate'])} | {fmt_pm(c['best_reply'])} | "
                     f"{c['pref_ratio']['mean']:.3f} ({c['true_pref']['mean']:.3f}) |")
    lines += ["", "Win rate vs DPO: P[r*(y) > r*(y_DPO)] + ½ P[tie] with y from the model and y_DPO from the DPO "
              "model, both drawn from their policies over the replies (0.5 = the same policy). pref ratio (true): "
              "mean π(y_m)/(π(y_m)+π(y_o)) over every pair of replies, y_m the one the model prefers, and the true "
              "probability σ(r*_m − r*_o) that it wins; ratio above true = preference collapse.", ""]
    if verdicts:
        lines += ["Verdicts (non-inferiority margin: " + f"{KEEP_MARGIN:.0%} of DPO's gain):", "", *verdicts, ""]
    return lines


def run_label(summary: dict, key: str) -> str:
    """A run key, with the bins it read when its name says otherwise (``aligned.cft [held-out bins]``)."""
    variant = summary.get("relabelled", {}).get(key)
    return f"{key} [{heldout.VARIANT_LABEL[variant].split(' (')[0]}]" if variant else key


def as_run(per_seed: dict) -> tuple[dict, tuple]:
    """Variants by what the runs did (``bin_accuracy`` read from their configs): a run named for training-row
    bins that read held-out rows (the plugin's ``auto`` default with an eval split, in a config that names no
    ``calib_bin_accuracy``) is relabelled ``heldout_auto``, and a held-out run it then duplicates is skipped. Returns ``(variant_of, skip)`` for :func:`.heldout.summarize`."""
    variant_of, skip = {}, []
    for mode in ("cft", "rcft"):
        key = calib_name(ARM, mode, 1.0)
        used = {s.get("bin_accuracy", {}).get(key) for s in per_seed.values()} - {None}
        if used == {"heldout"}:
            variant_of[key] = "heldout_auto"
            dup = calib_name(ARM, mode, 1.0, variant="heldout")
            if any(dup in s["rows"] for s in per_seed.values()):
                skip.append(dup)
    return variant_of, tuple(skip)


def table3_line(study: dict) -> str:
    """One README line: DPO's gain and each of CFT / RCFT's expected reward and win rate vs DPO."""
    a = study["summary"]["alignment"]
    parts = [f"DPO − base E[r*] {fmt_ci(a['dpo_gain'])}"]
    for k in (calib_name(ARM, "cft", 1.0), calib_name(ARM, "rcft", 1.0)):
        f = a["fixes"].get(k)
        if f:
            parts.append(f"{run_label(study['summary'], k)}: Δ vs DPO {fmt_ci(f['vs_dpo'])}, win rate {fmt_pm(f['win_rate'])}")
    return "; ".join(parts)


def bin_accuracy_as_run(config_dir: str) -> dict:
    """Run name -> where its M-step read bin accuracies (``train`` / ``heldout``), from the Axolotl config it
    trained with: an unset ``calib_bin_accuracy`` is the plugin's ``auto`` (held-out rows when the config has
    an eval split), so the summary labels a run by what it did, not by its name."""
    import yaml

    out = {}
    for path in sorted(glob.glob(os.path.join(config_dir, "*.yml"))):
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f) or {}
        if "calib_mode" not in cfg:
            continue
        value = cfg.get("calib_bin_accuracy", "auto")
        if value == "auto":
            value = "heldout" if (cfg.get("test_datasets") or float(cfg.get("val_set_size") or 0) > 0) else "train"
        out[os.path.basename(path)[:-4]] = value
    return out


class AlignmentStudy(HeldoutStudy):
    """``--study alignment``: the held-out study's calibration sections for the aligned arm, then the alignment
    section; ``alignment.json``, ``alignment.md``, ``alignment_deltas.png``."""

    name = "alignment"
    stem = "alignment"
    plan = PLAN
    title = "# The aligned arm: alignment kept, and the ECE term with held-out bins"

    def seed_extras(self, seed_dir: str) -> dict:
        """Which bins each run read, from the configs it trained with (see :func:`as_run`), and the held-out
        study's fit-split scores."""
        return {**super().seed_extras(seed_dir), "bin_accuracy": bin_accuracy_as_run(os.path.join(seed_dir, "configs"))}

    def summarize(self, per_seed: dict) -> dict:
        variant_of, skip = as_run(per_seed)
        summary = heldout.summarize(per_seed, fix_arm=ARM, variant_of=variant_of, skip=skip)
        summary["relabelled"], summary["skipped_duplicates"] = variant_of, list(skip)
        summary["alignment"] = summarize_alignment(per_seed, skip)
        return summary

    def render(self, study: dict) -> str:
        s = study["summary"]
        variant_of, skip = s["relabelled"], s["skipped_duplicates"]
        md = heldout.render_markdown(study, title=self.title)
        if variant_of:
            md += ("\n**Which bins each run read.** " + ", ".join(f"`{k}`" for k in variant_of) + " wrote no "
                   "`calib_bin_accuracy` and had an eval split, so the plugin's default (`auto`) read held-out rows: "
                   "they are labelled by what they did" + (", and " + ", ".join(f"`{k}`" for k in skip) + " (the same "
                   "run with the key explicit; identical numbers) is left out" if skip else "") + ". Training-row bins "
                   "(Algorithm 1) in this arm: the main study (`study.md`, CFT − λ=0).\n")
        return md + "\n" + "\n".join(render_alignment(study))
