"""Reading what our lm-eval tasks wrote: per-question items of ``samples_<task>_<time>.jsonl`` files and
per-task metrics of ``results_*.json`` or a ``calibration_report.json`` (the layout :mod:`.report` writes).

The numbers are lm-eval's aggregates of our tasks (``acc``, ``conf_ece``, ``cw_ece``: the shared metrics
core, 10 bins); the items carry each question's option probabilities and log-likelihoods.

File names are taken apart with lm-eval's own helpers (``lm_eval.utils.get_file_task_name``,
``get_file_datetime``, ``get_latest_filename``, ``get_results_filenames``), the ones its ``EvaluationTracker``
uses on the files it wrote. What lm-eval 0.4.11 has no helper for stays here: telling a samples file from any
other ``*.jsonl`` (its helpers slice at the first and last ``_`` of any name, so :data:`_SAMPLES_RE` checks the
name first), reading a samples file (lm-eval only writes them; a reader here names the bad line), and turning a
results dict into per-task numbers (its ``make_table`` prints a table, it returns no values). ``lm_eval.utils``
is imported only once a file passed that check (:func:`_lm_eval_utils`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["EVAL_SUBDIR", "METRICS", "REPORT_JSON", "REPORT_MD", "find_samples", "items_from_samples", "load_results",
           "question_hash", "read_samples", "sample_record", "samples_task", "stack_items", "summarize"]

REPORT_JSON = "calibration_report.json"

REPORT_MD = "calibration_report.md"

#: lm-eval's results + samples of a report live here (relative to the report folder).
EVAL_SUBDIR = "calibration_eval"

METRICS = ("acc", "conf_ece", "cw_ece")

#: what ``EvaluationTracker.save_results_samples`` names a file: ``samples_<task>_<datetime.isoformat() with - for :>``
_SAMPLES_RE = re.compile(r"^samples_(?P<task>.+)_(?P<time>\d{4}-\d{2}-\d{2}T[0-9\-.]+)\.jsonl$")


def _lm_eval_utils():
    """``lm_eval.utils``, imported on first use: it costs ~0.6 s (requests, jinja2), which the CLI's path checks
    must not pay before they fail (they run before anything heavy is imported)."""
    import lm_eval.utils

    return lm_eval.utils


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


def question_hash(doc: Mapping) -> str | None:
    """The identity of a question across runs: a SHA-256 of its text, options and gold index as the task's
    document holds them. Unlike lm-eval's ``doc_hash`` it leaves out what says how the question was *asked*
    (option letters, source file name, row id), so two runs that asked the same question differently pair up
    and their differing prompts are named (:func:`axolotl_calib_plugin.eval.compare.build_table`) instead of
    looking like other questions. ``None`` for a document without those fields."""
    if not isinstance(doc, Mapping) or not all(k in doc for k in ("question", "choices", "gold")):
        return None
    text = json.dumps([doc["question"], doc["choices"], doc["gold"]], ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _prompt_of(sample: Mapping) -> str | None:
    """The prompt text of a sample's first request (lm-eval logs ``arguments`` = [[context, continuation], ...];
    its ``prompt_hash`` is the SHA-256 of that context)."""
    try:
        ctx = sample["arguments"][0][0]
    except (KeyError, IndexError, TypeError):
        return None
    return ctx if isinstance(ctx, str) else None


def _sample_item(sample: Mapping) -> dict:
    item = sample.get("conf_ece")
    if not isinstance(item, Mapping) or "probs" not in item:
        raise ValueError("sample has no 'conf_ece' item with option probabilities: is this a calib_* task's samples file?")
    probs = [float(p) for p in item["probs"]]
    gold = int(item["gold"])
    if len(probs) < 2:
        raise ValueError(f"{len(probs)} option probabilities (a question needs at least 2 options)")
    if not all(math.isfinite(p) and p >= 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-4:
        raise ValueError(f"option probabilities {probs} are not a distribution (finite, >= 0, summing to 1): "
                         "the file is damaged or was not written by a calib_* task")
    if not 0 <= gold < len(probs):
        raise ValueError(f"gold {gold} is not one of the question's {len(probs)} options")
    doc = sample.get("doc")
    letters = sample.get("letters") or (doc.get("letters") if isinstance(doc, Mapping) else None)
    return {"doc_id": int(sample.get("doc_id", 0)), "probs": probs, "gold": gold,
            "logliks": [float(v) for v in item.get("logliks") or []],
            "question_hash": sample.get("question_hash") or question_hash(doc),
            "prompt_hash": sample.get("prompt_hash"), "prompt": _prompt_of(sample),
            "letters": [str(x) for x in letters] if letters else None}


def sample_record(item: Mapping) -> dict:
    """One line of a samples file written from an item (temperature-scaled probabilities): what
    :func:`read_samples` reads back, the question and prompt identities included, so ``axolotl-calib table``
    pairs the scaled run with the runs it came from."""
    out = {"doc_id": item["doc_id"]}
    for key in ("question_hash", "prompt_hash", "letters"):
        if item.get(key) is not None:
            out[key] = item[key]
    out["conf_ece"] = {k: item[k] for k in ("probs", "gold", "logliks")}
    return out


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
    name = os.path.basename(path)
    if not _SAMPLES_RE.match(name):
        raise ValueError(f"{path}: not an lm-eval samples file (expected samples_<task>_<time>.jsonl)")
    return _lm_eval_utils().get_file_task_name(name)


def find_samples(folder: str) -> dict[str, str]:
    """``{task: newest samples file}`` under ``folder`` (any depth), or the file itself."""
    if os.path.isfile(folder):
        return {samples_task(folder): folder}
    paths = [p for p in glob.glob(os.path.join(folder, "**", "samples_*.jsonl"), recursive=True)
             if _SAMPLES_RE.match(os.path.basename(p))]
    if not paths:
        return {}
    lm = _lm_eval_utils()
    by_task: dict[str, list[str]] = {}
    for path in paths:
        by_task.setdefault(lm.get_file_task_name(os.path.basename(path)), []).append(path)
    return {task: lm.get_latest_filename(found) for task, found in sorted(by_task.items())}


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
    files = glob.glob(os.path.join(path, "**", "results_*.json"), recursive=True)
    if not files:
        raise FileNotFoundError(f"{path}: no {REPORT_JSON} and no lm-eval results_*.json below it "
                                "(write one with axolotl-calib eval, calib_eval_tasks or lm_eval --output_path)")
    lm = _lm_eval_utils()
    out: dict[str, dict] = {}
    for f in sorted(lm.get_results_filenames(files), key=lambda p: lm.get_file_datetime(os.path.basename(p))):
        out.update(load_results(f))  # oldest first: the newest file wins a task
    return out
