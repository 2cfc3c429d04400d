"""Reading what our lm-eval tasks wrote: per-question items of ``samples_<task>_<time>.jsonl`` files and
per-task metrics of ``results_*.json`` or a ``calibration_report.json`` (the layout :mod:`.report` writes).

The numbers are lm-eval's aggregates of our tasks (``acc``, ``conf_ece``, ``cw_ece``: the shared metrics
core, 10 bins); the items carry each question's option probabilities and log-likelihoods.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["EVAL_SUBDIR", "METRICS", "REPORT_JSON", "REPORT_MD", "find_samples", "items_from_samples", "load_results",
           "read_samples", "samples_task", "stack_items", "summarize"]

REPORT_JSON = "calibration_report.json"

REPORT_MD = "calibration_report.md"

#: lm-eval's results + samples of a report live here (relative to the report folder).
EVAL_SUBDIR = "calibration_eval"

METRICS = ("acc", "conf_ece", "cw_ece")

_SAMPLES_RE = re.compile(r"^samples_(?P<task>.+)_(?P<time>\d{4}-\d{2}-\d{2}T[0-9\-.]+)\.jsonl$")


def stack_items(items: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tasks' per-question items ``{"probs", "gold", ...}`` -> probs (n, Kmax) zero-padded, labels (n,),
    K per row (n,). Zero padding is what the metrics core expects for mixed option counts."""
    if not items:
        raise ValueError("no evaluated questions")
    ks = np.array([len(it["probs"]) for it in items], dtype=np.int64)
    probs = np.zeros((len(items), int(ks.max())), dtype=np.float64)
    for i, it in enumerate(items):
        probs[i, : ks[i]] = it["probs"]
    labels = np.array([int(it["gold"]) for it in items], dtype=np.int64)
    return probs, labels, ks


def _sample_item(sample: Mapping) -> dict:
    item = sample.get("conf_ece")
    if not isinstance(item, Mapping) or "probs" not in item:
        raise ValueError("sample has no 'conf_ece' item with option probabilities: is this a calib_* task's samples file?")
    return {"doc_id": int(sample.get("doc_id", 0)), "probs": [float(p) for p in item["probs"]],
            "gold": int(item["gold"]), "logliks": [float(v) for v in item.get("logliks") or []]}


def items_from_samples(samples: Iterable[Mapping]) -> list[dict]:
    """lm-eval samples of one calib task (in memory) -> items in doc order."""
    return sorted((_sample_item(s) for s in samples), key=lambda it: it["doc_id"])


def read_samples(path: str) -> list[dict]:
    """Items of a ``samples_<task>_<time>.jsonl`` file written by lm-eval ``--log_samples`` for a calib task."""
    items = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                items.append(_sample_item(json.loads(line)))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path} line {lineno}: {e}") from None
    if not items:
        raise ValueError(f"{path}: no samples")
    return sorted(items, key=lambda it: it["doc_id"])


def samples_task(path: str) -> str:
    """Task name of an lm-eval samples file (``samples_<task>_<time>.jsonl``)."""
    m = _SAMPLES_RE.match(os.path.basename(path))
    if not m:
        raise ValueError(f"{path}: not an lm-eval samples file (expected samples_<task>_<time>.jsonl)")
    return m.group("task")


def find_samples(folder: str) -> dict[str, str]:
    """``{task: newest samples file}`` under ``folder`` (any depth), or the file itself."""
    if os.path.isfile(folder):
        return {samples_task(folder): folder}
    found: dict[str, tuple[str, str]] = {}
    for path in glob.glob(os.path.join(folder, "**", "samples_*.jsonl"), recursive=True):
        m = _SAMPLES_RE.match(os.path.basename(path))
        if m and (m.group("task") not in found or m.group("time") > found[m.group("task")][0]):
            found[m.group("task")] = (m.group("time"), path)
    return {task: path for task, (_, path) in sorted(found.items())}


def summarize(res: Mapping) -> dict[str, dict]:
    """lm-eval's result dict -> ``{task or group: {"kind", "acc", "conf_ece", "cw_ece", "n"}}`` (plain floats)."""
    groups = set((res.get("groups") or {}).keys())
    n_samples = res.get("n-samples") or {}
    subtasks = res.get("group_subtasks") or {}
    out: dict[str, dict] = {}
    for name, row in (res.get("results") or {}).items():
        entry: dict[str, Any] = {"kind": "group" if name in groups else "task"}
        for m in METRICS:
            v = row.get(f"{m},none")
            entry[m] = float(v) if isinstance(v, (int, float)) else None
        if name in groups:
            entry["n"] = int(sum((n_samples.get(t) or {}).get("effective", 0) for t in subtasks.get(name, [])))
        else:
            entry["n"] = int((n_samples.get(name) or {}).get("effective", 0))
        out[name] = entry
    return out


def load_results(path: str) -> dict[str, dict]:
    """Per-task metrics of a folder: its ``calibration_report.json``, else lm-eval ``results_*.json``
    files below it (the newest file wins for a task). ``path`` may also be one such file."""
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        return doc["tasks"] if "tasks" in doc and "results" not in doc else summarize(doc)
    report = os.path.join(path, REPORT_JSON)
    if os.path.isfile(report):
        return load_results(report)
    files = sorted(glob.glob(os.path.join(path, "**", "results_*.json"), recursive=True),
                   key=lambda p: os.path.basename(p))
    if not files:
        raise FileNotFoundError(f"{path}: no {REPORT_JSON} and no lm-eval results_*.json below it "
                                "(write one with axolotl-calib eval, calib_eval_tasks or lm_eval --output_path)")
    out: dict[str, dict] = {}
    for f in files:
        out.update(load_results(f))
    return out
