"""The post-training calibration report as the plugin runs it (``calib_eval_tasks``): its config-time checks,
:class:`PostTrainingReport` (driven by the plugin's ``post_trainer_create`` / ``post_train`` /
``post_train_unload`` hooks) and the numbers sent to the trainer's loggers. The report itself is
:mod:`axolotl_calib_plugin.eval.report`."""

from __future__ import annotations

import importlib.util
import math
import os
import time
import weakref
from typing import Mapping

from ..eval.evaluation import as_list
from ..eval.report import evaluate_to_report, fmt_value, row_metadata
from ..eval.samples import METRICS, REPORT_MD

__all__ = ["LOG_PREFIX", "PostTrainingReport", "check_eval_config", "log_payload", "log_to_trainer"]

#: trainer log keys ``test_calib/<task>/<metric>``; HF's TensorBoard / W&B callbacks show them as ``test/calib/...``.
LOG_PREFIX = "test_calib"


def log_payload(tasks: Mapping[str, Mapping]) -> dict[str, float]:
    """``test_calib/<task>/<metric>`` -> value, for the trainer's loggers; ``<task>`` drops the ``calib_`` every
    task name starts with (``test/calib/arc_challenge/conf_ece``, not ``test/calib/calib_arc_challenge/...``)."""
    logs = {}
    for task, t in tasks.items():
        for m in (*METRICS, "n"):
            v = t.get(m)
            if isinstance(v, (int, float)) and math.isfinite(v):
                logs[f"{LOG_PREFIX}/{task.removeprefix('calib_')}/{m}"] = float(v)
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

        from ..eval.evaluation import hflm_for_model, make_hflm

        log = get_logger(__name__)
        out = cfg.output_dir
        tasks = list(cfg.calib_eval_tasks)
        batch_size = int(cfg.get("calib_eval_batch_size") or 8)
        chat = cfg.get("calib_prompt_format") == "chat_template"
        log.info("calibration report: evaluating %s on %s", "the trained model" if model is not None else out, tasks)
        if model is not None:
            tokenizer = getattr(trainer, "processing_class", None) if trainer is not None else None
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(out)
            was_training = model.training
            lm = hflm_for_model(model, tokenizer, chat=chat, batch_size=batch_size)
        else:
            was_training = None
            lm = make_hflm(out, dtype=_dtype_name(cfg), batch_size=batch_size, chat=chat)
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
            log.info("calibration report %s: acc %s, conf-ECE %s, cw-ECE %s (n=%s)", task, fmt_value(t["acc"]),
                     fmt_value(t["conf_ece"]), fmt_value(t["cw_ece"]), t["n"])
        if trainer is not None:
            log_to_trainer(trainer, summary)
        log.info("calibration report written to %s", paths["md"])
        return summary


# ----------------------------------------------------------------------------------- config-time checks
#: report keys other than the task list (calib_eval_batch_size has a default and is not listed).
_EVAL_DATA_KEYS = ("calib_eval_limit", "calib_eval_data_dir", "calib_eval_data_files", "calib_eval_ood_data_files")

_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def _task_utils():
    """The task folder's ``utils.py`` (the tasks' own readers and row checks), loaded by path as lm-eval does."""
    from ..eval.evaluation import find_task_dir

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


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS)


def check_eval_config(data: dict) -> None:
    """Check the ``calib_eval_*`` keys of a raw config dict before anything trains (and normalise them).

    Task names must be ours; every data source the tasks read must be there and parse: local files are
    read and every row is checked with the tasks' own loaders (errors name the file and line); a hub
    suite without ``calib_eval_data_dir`` under ``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE`` is an
    error. Paths are made absolute (the report runs in the same process, after training).
    """
    from ..eval.evaluation import JSONL_TASK_METADATA, task_index, task_suites

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
