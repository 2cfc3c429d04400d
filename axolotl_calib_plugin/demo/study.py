"""The runner of every study: each seed's pipeline, the seed loop, the meta, then the study's own write().

``axolotl-calib demo --seeds N --out DIR [--study NAME]`` runs :func:`run_study`: for each seed the whole pipeline
of :mod:`axolotl_calib_plugin.demo.pipeline` (its own world, data, initial weights and training order) with the
study's plan, keeps each seed's compact numbers, and hands ``{"meta", "per_seed"}`` to the study registered as NAME
in :mod:`axolotl_calib_plugin.demo.studies` (the main study, ``heldout``, ``alignment``, ``online``,
``heldout_optimism``), which summarises it and writes its JSON, Markdown and figures.

Each seed's runs live in ``DIR/runs/seed<k>/`` and are reused when their config is unchanged, so a killed
study resumes where it stopped. The summaries are small and are what the README quotes.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, replace
from typing import Sequence

from ..orchestrate import StepFailed, code_fingerprint
from .pipeline import FULL, DemoSettings, Plan
from .studies import get_study

__all__ = ["commit", "compact_rows", "rerender", "run_study"]


def compact_rows(rows: dict) -> dict:
    """The per-seed numbers the study keeps (scores in/out/train, pairs, regime, temperature)."""
    out = {}
    for key, r in rows.items():
        c = {d: {m: r[d][m] for m in ("conf_ece", "cw_ece", "acc", "mean_conf")}
             for d in ("in", "out", "train", "heldout") if d in r}
        if "bins" in r:
            c["bins"] = r["bins"]
        if "pairs" in r:
            c["pairs"] = {m: r["pairs"][m] for m in ("pref_ratio", "true_pref", "rank_acc")}
        if "regime" in r:
            c["regime"] = {m: r["regime"][m] for m in ("verdict", "acc", "train_acc", "gap", "gap_z", "ts_conf_ece")}
        if "temperature" in r:
            c["temperature"] = r["temperature"]
        if "reward" in r:
            c["reward"] = r["reward"]
        out[key] = c
    return out


def commit() -> str:
    """The git commit of the code that ran (``+changes`` when the tree differs from it), or "unknown"."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+changes" if dirty else "")) if head else "unknown"


def run_study(out: str, seeds: Sequence[int], settings: DemoSettings = FULL, plan: Plan | None = None,
              parallel: int = 2, reuse: bool = True, summary_dir: str | None = None, kind: str = "main",
              summary_only: bool = False) -> dict:
    """Run (or resume) every seed of the study registered as ``kind`` (its ``plan`` unless one is given, and
    ``settings`` with the study's own ``settings`` fields set), then let it write its summary files into
    ``summary_dir`` (default ``out``). ``summary_only``: run nothing, summarise seeds that already ran
    (:meth:`~.studies.base.Study.finished_seed`; the wall time is then the sum of theirs); a seed whose folder is
    gone is taken from the summary already in ``summary_dir`` when that summary was written by code with this
    checkout's fingerprint (a study carried over machines in its committed JSON), else refused."""
    study_def = get_study(kind)
    plan = study_def.plan if plan is None else plan
    settings = replace(settings, **study_def.settings)
    t0 = time.time()
    out = os.path.abspath(out)
    summary_dir = os.path.abspath(summary_dir or out)
    os.makedirs(summary_dir, exist_ok=True)
    per_seed, carried, fingerprint = {}, [], code_fingerprint()
    summary_json = study_def.paths(summary_dir)["json"]
    prior = _prior_summary(summary_json) if summary_only else {}
    for seed in seeds:
        seed_dir = os.path.join(out, "runs", f"seed{seed}")
        if summary_only and not os.path.isdir(seed_dir):
            per_seed[str(seed)] = _carried_seed(prior, seed, seed_dir, summary_json, fingerprint)
            carried.append(seed)
            continue
        res = (study_def.finished_seed(seed_dir, seed) if summary_only
               else study_def.run_seed(seed_dir, seed, settings, plan, parallel, reuse))
        per_seed[str(seed)] = {"rows": compact_rows(res["rows"]), "errors": res["meta"]["errors"],
                               "timings_s": res["meta"]["timings_s"], "wall_time_s": res["meta"]["wall_time_s"],
                               "reused_runs": res["meta"].get("reused_runs", []), **study_def.seed_extras(seed_dir)}
    study = {
        "meta": {"seeds": list(seeds), "n_seeds": len(seeds), **study_def.describe(settings, plan),
                 "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), 1 torch thread per run, "
                            f"{parallel} runs at a time",
                 "wall_time_s": round(sum(v["wall_time_s"] for v in per_seed.values()) if summary_only
                                      else time.time() - t0, 1), "commit": commit(),
                 "code_fingerprint": fingerprint,
                 "seed_wall_time_s": {k: v["wall_time_s"] for k, v in per_seed.items()},
                 **({"seeds_from_summary": carried} if carried else {})},
        "per_seed": per_seed,
    }
    return study_def.write(study, summary_dir)


def _prior_summary(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            prior = json.load(f)
    except (OSError, ValueError) as e:
        raise StepFailed(f"cannot read the existing summary {path} ({e}); restore it or remove it") from None
    return prior if isinstance(prior, dict) else {}


def _carried_seed(prior: dict, seed: int, seed_dir: str, path: str, fingerprint: str) -> dict:
    """Seed ``seed`` as the summary at ``path`` holds it, when that summary's code is this checkout's
    (``fingerprint``)."""
    entry = (prior.get("per_seed") or {}).get(str(seed))
    if entry is None:
        raise StepFailed(f"seed {seed}: no {seed_dir} and not in {path}; run the seed first")
    written_by = (prior.get("meta") or {}).get("code_fingerprint")
    if written_by != fingerprint:
        raise StepFailed(f"seed {seed}: no {seed_dir}, and {path} was written by other code (fingerprint "
                         f"{written_by}, this checkout {fingerprint}): its runs are not this code's; "
                         "run the seed again")
    rows = entry.get("rows") if isinstance(entry, dict) else None
    if not isinstance(rows, dict):
        raise StepFailed(f"seed {seed}: per_seed.{seed} in {path} has no rows; restore the file or run the seed again")
    for name, row in rows.items():
        for dom, scores in (row.items() if isinstance(row, dict) else ()):
            for key, value in (scores.items() if isinstance(scores, dict) else ()):
                if key in ("conf_ece", "cw_ece", "acc", "mean_conf") and not (
                        value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))):
                    raise StepFailed(f"seed {seed}: per_seed.{seed}.rows.{name}.{dom}.{key} in {path} is "
                                     f"{value!r}, not a number; restore the file or run the seed again")
    return entry


def rerender(summary_dir: str, kinds: Sequence[str] | None = None) -> list[str]:
    """Re-summarise and re-render the committed summaries in ``summary_dir`` from their JSON (every registered
    study whose ``<stem>.json`` is there, or ``kinds``); figures are left as they are. Returns the Markdown paths."""
    from .studies import STUDIES

    done = []
    for name in kinds or list(STUDIES):
        s = get_study(name)
        if kinds or os.path.exists(s.paths(summary_dir)["json"]):
            s.rerender(summary_dir)
            done.append(s.paths(summary_dir)["md"])
    return done
