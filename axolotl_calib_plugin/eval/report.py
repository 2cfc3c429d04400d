"""Calibration report of one model: our lm-eval tasks -> ``calibration_report.{md,json}`` + reliability PNGs.

Three producers write the same folder layout, so ``axolotl-calib table`` and ``axolotl-calib
temperature`` read any of them:

* after training, when the config sets ``calib_eval_tasks`` (:class:`PostTrainingReport`, driven by
  the plugin's ``post_trainer_create`` / ``post_train`` / ``post_train_unload`` hooks), into ``output_dir``;
* ``axolotl-calib eval`` (any model folder or peft adapter), into ``--output-dir``;
* ``axolotl-calib temperature --out``, the temperature-scaled probabilities.

Layout: ``calibration_report.json`` / ``.md``, ``reliability_<task>.png`` and, under
``calibration_eval/`` (eval and post-training), lm-eval's own ``results_<time>.json`` and
``samples_<task>_<time>.jsonl`` (each question's option probabilities and log-likelihoods).

The numbers are lm-eval's aggregates of our tasks (``acc``, ``conf_ece``, ``cw_ece``: the shared
metrics core, 10 bins); the diagrams are drawn from the same per-question items.
"""

from __future__ import annotations

import datetime as _dt
import glob
import importlib.util
import json
import math
import os
import re
import time
import weakref
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "EVAL_SUBDIR", "LOG_PREFIX", "REPORT_JSON", "REPORT_MD", "PostTrainingReport", "check_eval_config",
    "find_samples", "load_results", "log_to_trainer", "read_samples", "stack_items", "summarize", "write_report",
]

REPORT_JSON = "calibration_report.json"
REPORT_MD = "calibration_report.md"
#: lm-eval's results + samples of a report live here (relative to the report folder).
EVAL_SUBDIR = "calibration_eval"
#: trainer log keys ``test_calib/<task>/<metric>``; HF's TensorBoard / W&B callbacks show them as ``test/calib/...``.
LOG_PREFIX = "test_calib"
METRICS = ("acc", "conf_ece", "cw_ece")
METRIC_LABELS = {"acc": "acc", "conf_ece": "conf-ECE", "cw_ece": "cw-ECE"}
_SAMPLES_RE = re.compile(r"^samples_(?P<task>.+)_(?P<time>\d{4}-\d{2}-\d{2}T[0-9\-.]+)\.jsonl$")


# ----------------------------------------------------------------------------------- reading lm-eval output
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


# ----------------------------------------------------------------------------------- writing the report
def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def markdown_table(tasks: Mapping[str, Mapping]) -> str:
    lines = ["| task | n | acc | conf-ECE | cw-ECE |", "|---|---:|---:|---:|---:|"]
    for name, t in tasks.items():
        label = f"{name} (group: mean of its tasks)" if t.get("kind") == "group" else name
        lines.append(f"| {label} | {t.get('n', '-')} | {_fmt(t.get('acc'))} | {_fmt(t.get('conf_ece'))} | "
                     f"{_fmt(t.get('cw_ece'))} |")
    return "\n".join(lines)


def write_report(out_dir: str, tasks: Mapping[str, Mapping], items: Mapping[str, Sequence[Mapping]], *,
                 title: str, meta: Mapping | None = None, notes: Sequence[str] = ()) -> dict:
    """Write ``calibration_report.json`` / ``.md`` and one ``reliability_<task>.png`` per task with items.

    ``tasks``: :func:`summarize` output; ``items``: per-question items by task (diagrams); ``meta``:
    what was evaluated (model, data, settings), stored in the JSON and listed in the Markdown.
    Returns the written paths.
    """
    from . import plots

    os.makedirs(out_dir, exist_ok=True)
    paths: dict[str, Any] = {"plots": {}}
    for task, its in items.items():
        if not its:
            continue
        probs, labels, ks = stack_items(its)
        name = f"reliability_{task}.png"
        plots.plot_reliability(probs, labels, os.path.join(out_dir, name), title=f"{title}: {task}", num_options=ks)
        paths["plots"][task] = name
    doc = {"title": title, "created": _dt.datetime.now().isoformat(timespec="seconds"), "n_bins": 10,
           "meta": dict(meta or {}), "tasks": {k: dict(v) for k, v in tasks.items()}, "plots": paths["plots"]}
    paths["json"] = os.path.join(out_dir, REPORT_JSON)
    with open(paths["json"], "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
    md = [f"# Calibration report: {title}", ""]
    md += [f"* {k}: `{v}`" for k, v in (meta or {}).items() if v not in (None, "", [], {})]
    md += ["", markdown_table(tasks), "",
           "conf-ECE: confidence (max option probability) vs accuracy; cw-ECE: every option's probability vs "
           "its empirical frequency, averaged over the options; both over 10 equal-width bins, lower is better "
           "(`axolotl_calib_plugin.metrics`). A group row averages its tasks' ECEs; the `*_pooled` tasks give "
           "the ECE of the pooled predictions.", ""]
    md += [f"* {n}" for n in notes]
    if paths["plots"]:
        md += ["", "## Reliability diagrams", ""]
        md += [f"### {task}\n\n![{task}]({png})\n" for task, png in paths["plots"].items()]
    paths["md"] = os.path.join(out_dir, REPORT_MD)
    with open(paths["md"], "w", encoding="utf-8") as fh:
        fh.write("\n".join(md) + "\n")
    return paths


def log_payload(tasks: Mapping[str, Mapping]) -> dict[str, float]:
    """``test_calib/<task>/<metric>`` -> value, for the trainer's loggers."""
    logs = {}
    for task, t in tasks.items():
        for m in (*METRICS, "n"):
            v = t.get(m)
            if isinstance(v, (int, float)) and math.isfinite(v):
                logs[f"{LOG_PREFIX}/{task}/{m}"] = float(v)
    return logs


def log_to_trainer(trainer, tasks: Mapping[str, Mapping]) -> dict[str, float]:
    """Send the report's numbers through ``trainer.log`` (TensorBoard, W&B, ... and ``log_history``).

    HF's ``TensorBoardCallback`` closed its writer in ``on_train_end`` and reopens one on this log;
    that writer is closed again here so the event file is complete on disk.
    """
    logs = log_payload(tasks)
    if not logs:
        return logs
    trainer.log(dict(logs))
    try:
        from transformers.integrations import TensorBoardCallback
    except ImportError:  # pragma: no cover - transformers always has it
        return logs
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback) and getattr(cb, "tb_writer", None) is not None:
            cb.tb_writer.close()
            cb.tb_writer = None
    return logs


def evaluate_to_report(lm, tasks: Sequence[str], out_dir: str, *, title: str, meta: Mapping | None = None,
                       model_name: str = "model", **run_kw) -> tuple[dict, dict]:
    """Run our tasks on a loaded lm-eval model and write the full report into ``out_dir``.

    ``run_kw`` goes to :func:`axolotl_calib_plugin.eval.evaluation.run_tasks` (data, limit, chat template).
    Returns ``(per-task summary, written paths)``.
    """
    from .evaluation import run_tasks

    res = run_tasks(lm, tasks, output_dir=os.path.join(out_dir, EVAL_SUBDIR), model_name=model_name, **run_kw)
    summary = summarize(res)
    order: list[str] = []
    for name in tasks:  # the requested order, each group followed by its tasks
        order += [n for n in [name, *(res.get("group_subtasks") or {}).get(name, [])] if n in summary and n not in order]
    summary = {n: summary[n] for n in order + [n for n in summary if n not in order]}
    samples = res.get("samples") or {}
    items = {task: items_from_samples(samples[task]) for task in summary if task in samples}
    meta = {**dict(meta or {}), "tasks": list(tasks), "lm_eval_outputs": EVAL_SUBDIR,
            **{k: v for k, v in run_kw.items() if k in ("data_dir", "data_files", "ood_data_files", "limit",
                                                         "task_metadata") and v}}
    paths = write_report(out_dir, summary, items, title=title, meta=meta)
    return summary, paths


# ----------------------------------------------------------------------------------- after training
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
                 "adapter_model.safetensors", "adapter_model.bin")


def _saved_since(output_dir: str, since: float) -> bool:
    """True once the final weights (or adapter) sit in ``output_dir``, written after ``since``.

    Checkpoints go to ``checkpoint-N/`` and Axolotl pre-saves only configs and the tokenizer at the
    root, so weights at the root are the run's final save."""
    for name in _WEIGHT_FILES:
        path = os.path.join(output_dir, name)
        if os.path.isfile(path) and os.path.getmtime(path) >= since - 1.0:
            return True
    return False


def _dtype_name(cfg) -> str:
    dtype = cfg.get("torch_dtype")
    if dtype is not None:
        return str(dtype).replace("torch.", "")
    return "bfloat16" if cfg.get("bf16") is True else "float16" if cfg.get("fp16") is True else "float32"


class PostTrainingReport:
    """The post-training calibration report of one run (state kept by the plugin instance).

    When: in Axolotl's ``post_train`` hook once the final model is in ``output_dir``. Axolotl 0.19 calls
    that hook twice: right after ``trainer.train()`` (model not saved yet, process group still up) and
    after saving the model and tearing the process group down; the report runs on the second call
    (idempotent: once per run). ``post_train_unload`` is a fallback for code paths that never reach
    it (numbers then go to the files only).

    Who: only the main process (global rank 0) evaluates; the other ranks return at once. It runs
    after Axolotl destroyed the process group, so it can take as long as it needs without stalling a
    collective. Which model: the trained model in memory (the weights just saved) for single-process
    and DDP runs, else (FSDP, DeepSpeed: sharded in memory) the saved ``output_dir``, loaded on one
    device. The numbers reach the trainer's loggers (TensorBoard, W&B) as ``test_calib/<task>/<metric>``.
    """

    def __init__(self) -> None:
        self._trainer = None
        self._since = time.time()
        self._done = False

    def trainer_created(self, cfg, trainer) -> None:
        self._trainer = weakref.ref(trainer)
        self._since = time.time()
        self._done = False

    def _main(self, trainer) -> bool:
        if trainer is not None:
            return bool(trainer.is_world_process_zero())
        return int(os.environ.get("RANK", "0")) == 0

    def post_train(self, cfg, model) -> None:
        if self._done or not cfg.get("calib_eval_tasks"):
            return
        trainer = self._trainer() if self._trainer is not None else None
        if not self._main(trainer):
            self._done = True
            return
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return  # the first call, inside the process group: wait for the one after the save
        if not _saved_since(cfg.output_dir, self._since):
            return  # the first call, before the final save
        self._done = True
        sharded = bool(cfg.get("fsdp") or cfg.get("fsdp_config") or cfg.get("deepspeed"))
        self.run(cfg, model=None if sharded else model, trainer=trainer)

    def post_train_unload(self, cfg) -> None:
        if self._done or not cfg.get("calib_eval_tasks") or not self._main(None):
            return
        self._done = True
        from axolotl.utils.logging import get_logger

        get_logger(__name__).warning("calibration report: post_train was not reached after the final save; "
                                     "evaluating %s from disk (the numbers go to the report files only)", cfg.output_dir)
        self.run(cfg, model=None, trainer=None)

    def run(self, cfg, model=None, trainer=None) -> dict:
        """Evaluate ``model`` (or the saved ``output_dir``) on ``calib_eval_tasks`` and write the report."""
        from axolotl.utils.logging import get_logger

        from .evaluation import make_hflm

        log = get_logger(__name__)
        out = cfg.output_dir
        tasks = list(cfg.calib_eval_tasks)
        batch_size = int(cfg.get("calib_eval_batch_size") or 8)
        log.info("calibration report: evaluating %s on %s", "the trained model" if model is not None else out, tasks)
        if model is not None:
            from lm_eval.models.huggingface import HFLM

            tokenizer = getattr(trainer, "processing_class", None) if trainer is not None else None
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(out)
            was_training = model.training
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=True)
        else:
            was_training = None
            lm = make_hflm(out, dtype=_dtype_name(cfg), batch_size=batch_size)
        chat = cfg.get("calib_prompt_format") == "chat_template"
        try:
            summary, paths = evaluate_to_report(
                lm, tasks, out, title=os.path.basename(os.path.normpath(out)) or "model", model_name="model",
                meta={"model": os.path.abspath(out), "evaluated": "in-memory trained model" if model is not None
                      else "saved output_dir", "batch_size": batch_size, "apply_chat_template": chat},
                data_dir=cfg.get("calib_eval_data_dir"), data_files=cfg.get("calib_eval_data_files"),
                ood_data_files=cfg.get("calib_eval_ood_data_files"), limit=cfg.get("calib_eval_limit"),
                apply_chat_template=chat, system_instruction=cfg.get("calib_system_prompt") if chat else None,
                task_metadata=row_metadata(cfg),
            )
        finally:
            if was_training:
                model.train()
        for task, t in summary.items():
            log.info("calibration report %s: acc %s, conf-ECE %s, cw-ECE %s (n=%s)", task, _fmt(t["acc"]),
                     _fmt(t["conf_ece"]), _fmt(t["cw_ece"]), t["n"])
        if trainer is not None:
            log_to_trainer(trainer, summary)
        log.info("calibration report written to %s", paths["md"])
        return summary


# ----------------------------------------------------------------------------------- config-time checks
#: report keys other than the task list (calib_eval_batch_size has a default and is not listed).
_EVAL_DATA_KEYS = ("calib_eval_limit", "calib_eval_data_dir", "calib_eval_data_files", "calib_eval_ood_data_files")
_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def as_list(value) -> list[str]:
    """A YAML list or a comma-separated string -> list of stripped strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value]


def _task_utils():
    """The task folder's ``utils.py`` (the tasks' own readers and row checks), loaded by path as lm-eval does."""
    from .evaluation import find_task_dir

    path = os.path.join(find_task_dir(), "calib", "utils.py")
    spec = importlib.util.spec_from_file_location("_axolotl_calib_task_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_lm_eval_route(data: dict) -> None:
    """Axolotl's ``LMEvalPlugin`` runs ``lm_eval`` without ``--include_path``: our task names would
    fail there, after training. Say so at validation time and name the key that works."""
    ours = [t for t in as_list(data.get("lm_eval_tasks")) if t.split(":", 1)[0].startswith("calib_")]
    if ours:
        names = [t.split(":", 1)[0] for t in ours]
        raise ValueError(
            f"lm_eval_tasks: {ours} are axolotl-calib tasks, but Axolotl's LMEvalPlugin runs `lm_eval` without "
            "--include_path, so it cannot find them (the run would fail after training). Use "
            f"calib_eval_tasks: [{', '.join(names)}] instead (evaluated after training; report in "
            f"output_dir/{REPORT_MD}), or run: lm_eval --include_path \"$(axolotl-calib tasks-path)\" --tasks "
            f"{','.join(names)} ..."
        )


#: training key -> lm-eval task metadata key (lm_eval_tasks/calib/utils.py), with the training default.
ROW_METADATA = {"calib_option_letters": ("option_letters", None), "calib_answer_format": ("answer_format", "auto"),
                "calib_field_question": ("question_field", "question"),
                "calib_field_choices": ("choices_field", "choices"), "calib_field_answer": ("answer_field", "answer")}
#: what ``axolotl-calib eval`` reads to score a model as it was trained (written by the training callback).
SETTINGS_FILE = "calib_settings.json"


def row_metadata(cfg: Mapping) -> dict:
    """The lm-eval metadata that makes the tasks build rows as training did (letters, answer format, fields)."""
    from ..prompts import DEFAULT_LETTERS, check_option_letters

    out = {meta: cfg.get(key) if cfg.get(key) is not None else default for key, (meta, default) in ROW_METADATA.items()}
    out["option_letters"] = check_option_letters(out["option_letters"] or list(DEFAULT_LETTERS))
    return out


def training_settings(settings) -> dict:
    """The contents of :data:`SETTINGS_FILE`: row metadata plus the prompt format and system prompt."""
    cfg = {k: getattr(settings, k, None) for k in ROW_METADATA}
    return {**row_metadata(cfg), "prompt_format": settings.calib_prompt_format,
            "system_prompt": settings.calib_system_prompt}


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS)


def check_eval_config(data: dict) -> None:
    """Check the ``calib_eval_*`` keys of a raw config dict before anything trains (and normalise them).

    Task names must be ours; every data source the tasks read must be there and parse: local files are
    read and every row is checked with the tasks' own loaders (errors name the file and line); a hub
    suite without ``calib_eval_data_dir`` under ``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE`` is an
    error. Paths are made absolute (the report runs in the same process, after training).
    """
    from .evaluation import JSONL_TASK_METADATA, task_index, task_suites

    _check_lm_eval_route(data)
    tasks = as_list(data.get("calib_eval_tasks"))
    others = [k for k in _EVAL_DATA_KEYS if data.get(k) not in (None, "", [])]
    if not tasks:
        if others:
            raise ValueError(f"{', '.join(others)} only configure the post-training report: set calib_eval_tasks "
                             "(e.g. [calib_in_domain_pooled, calib_arc_challenge]) or remove them")
        return
    import difflib

    index = task_index()
    unknown = [t for t in tasks if t not in index]
    if unknown:
        hints = {t: difflib.get_close_matches(t, list(index), n=1) for t in unknown}
        listing = ", ".join(f"{t!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for t, h in hints.items())
        raise ValueError(f"calib_eval_tasks: unknown task(s) {listing}; axolotl-calib's tasks: {', '.join(sorted(index))}")
    data["calib_eval_tasks"] = tasks
    suites: list[str] = []
    for t in tasks:
        suites += [s for s in task_suites(t, index) if s not in suites]
    utils = _task_utils()
    row_meta = row_metadata(data)
    files_keys = {"calib_jsonl": "calib_eval_data_files", "calib_jsonl_ood": "calib_eval_ood_data_files"}
    for suite, key in files_keys.items():
        files = [os.path.abspath(os.path.expanduser(f)) for f in as_list(data.get(key))]
        if suite in suites and not files:
            raise ValueError(f"calib_eval_tasks includes {suite}, which reads local MCQ files: set {key}: [/path/file.jsonl] "
                             "(rows {question, choices, answer})")
        if files and suite not in suites:
            raise ValueError(f"{key} is set but calib_eval_tasks does not include {suite} (the task that reads it)")
        if files:
            try:
                utils.load_suite(suite, **{JSONL_TASK_METADATA[suite]: files}, **row_meta)
            except ValueError as e:  # CalibDataError names the file and line
                raise ValueError(f"{key}: {e}") from None
            data[key] = files
    hub = [s for s in suites if s not in files_keys]
    data_dir = data.get("calib_eval_data_dir")
    if data_dir:
        data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
        if not os.path.isdir(data_dir):
            raise ValueError(f"calib_eval_data_dir: {data_dir} is not a directory")
        if not hub:
            raise ValueError(f"calib_eval_data_dir is set but none of calib_eval_tasks {tasks} reads a hub suite "
                             "(calib_jsonl reads calib_eval_data_files)")
        for suite in hub:
            try:
                utils.load_suite_docs(suite, data_dir, row_meta["option_letters"])
            except ValueError as e:
                raise ValueError(f"calib_eval_data_dir: {e}") from None
        data["calib_eval_data_dir"] = data_dir
    elif hub and _offline():
        raise ValueError(
            f"calib_eval_tasks {tasks} read the hub datasets of {hub}, but "
            f"{'/'.join(v for v in _OFFLINE_VARS if os.environ.get(v))} is set, so the report would fail after training: "
            f"set calib_eval_data_dir to a folder with {', '.join(s + '.jsonl' for s in hub)} (each in its hub schema), "
            "or allow hub access"
        )
