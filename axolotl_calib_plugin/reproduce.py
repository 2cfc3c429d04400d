"""``axolotl-calib reproduce``: from a DPO model and an MCQ calibration set to the paper's Table 2 (DPO, TS, LS,
CFT, RCFT; conf-ECE, cw-ECE, accuracy, in- and out-of-domain) in one command.

It is the shared orchestration (:func:`axolotl_calib_plugin.orchestrate.execute`) with these parts:

* runs: one per training method (``ls``, ``sft``, ``cft``, ``rcft``) and seed, each starting from the user's model;
* configs: the user's base config (``--base-config``; default :data:`DEFAULT_BASE`, the paper's settings) plus
  only the keys below -- the same route as adding the plugin to an existing config: :data:`CALIB_LINES`, the
  method's :data:`METHOD_LINES`, the run's model / data / folders (:data:`RUN_KEYS`), and the settings of the
  device it trains on (:func:`device_lines`: precision, optimizer, LoRA kernels) where the base config sets
  none. Base-config keys that reproduce replaces or drops (its own evaluation replaces ``calib_eval_*``) are
  named in a notice;
* launch: ``<this python> -m axolotl.cli.train <DIR>/configs/<run>.yml`` (log in ``<DIR>/logs/<run>.log``);
* evaluation, in this process through the library functions the commands use: the start model and every trained
  model scored on the in- and out-of-domain suites with the SAME row settings (the base config's letters, answer
  format, fields and prompt format: every row of the table answers the same prompts; ``<DIR>/eval/<run>/``, the
  layout of ``axolotl-calib eval``), temperature scaling on the start model's in-domain samples (T fitted on a
  seeded 10 % of them, scored on the rest: the authors' protocol; ``<DIR>/eval/ts/``), and the table over those
  folders (``<DIR>/table/``), which is what ``axolotl-calib table`` gives on them. ``commands.sh`` holds the same
  steps as commands of this environment.

Everything is also written to ``<DIR>/reproduce.json``. A rerun reuses a finished run whose config, data files
and code are unchanged (and its evaluation), and retrains the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import yaml

from . import orchestrate
from .defaults import EVAL_TASKS, METHODS, ROW_NAMES

__all__ = ["CALIB_LINES", "DEFAULT_BASE", "METHODS", "METHOD_LINES", "REPLACED_EVAL_KEYS", "RUN_KEYS",
           "ReproduceError", "build_configs", "check_model", "check_output_dir", "device_lines", "eval_spec",
           "evaluate_model", "overlap_notices", "plan", "read_questions", "replaced_notices", "reproduce",
           "row_settings", "temperature_scale", "validate_data", "write_table"]

PLUGIN = "axolotl_calib_plugin.CalibrationPlugin"
#: the plugin lines every calibration run adds to the base config (the paper: 10 bins, EM refresh every epoch)
CALIB_LINES = {"calib_bins": 10, "calib_refresh": "epoch"}
#: the method's own lines: LS is the paper's label-smoothing baseline (plain SFT on the answer, smoothed 0.1);
#: SFT is the same training without the calibration loss (calib_lambda 0), so CFT minus SFT is what the loss adds
METHOD_LINES = {
    "ls": {"calib_mode": "cft", "calib_lambda": 0.0, "calib_label_smoothing": 0.1},
    "sft": {"calib_mode": "cft", "calib_lambda": 0.0},
    "cft": {"calib_mode": "cft", "calib_lambda": 1.0},
    "rcft": {"calib_mode": "rcft", "calib_lambda": 1.0},
}
#: the post-training report keys: reproduce evaluates every model itself, so a base config's are dropped (else each
#: model would be evaluated twice)
REPLACED_EVAL_KEYS = ("calib_eval_tasks", "calib_eval_batch_size", "calib_eval_limit", "calib_eval_data_dir",
                      "calib_eval_data_files", "calib_eval_ood_data_files")

#: keys of the base config a method decides (dropped, so an LS line never leaks into CFT; the plugin sets
#: train_on_inputs from calib_mode)
_METHOD_KEYS = {k for lines in METHOD_LINES.values() for k in lines} | {"calib_sft_scope", "train_on_inputs"}
#: keys every written config sets from the command line (whatever the base config says)
RUN_KEYS = ("base_model", "datasets", "output_dir", "dataset_prepared_path", "plugins")
#: the paper's training settings (examples/llama_cft.yml, the authors' scripts) for an 8B model on one GPU; precision
#: and optimizer come from the device (:func:`device_lines`)
DEFAULT_BASE: dict = {
    "sequence_len": 2048, "sample_packing": False,
    "adapter": "lora", "lora_r": 128, "lora_alpha": 64, "lora_dropout": 0.05, "lora_target_linear": True,
    "learning_rate": 5e-6, "lr_scheduler": "cosine", "warmup_ratio": 0.1, "num_epochs": 5,
    "micro_batch_size": 2, "gradient_accumulation_steps": 1, "weight_decay": 0.0,
    "gradient_checkpointing": True, "attn_implementation": "sdpa",
    "val_set_size": 0, "seed": 42, "logging_steps": 10, "save_strategy": "no",
}
#: the paper's settings on a GPU with bf16 (A100 / H100: the authors' runs)
GPU_LINES = {"bf16": True, "tf32": True, "optimizer": "adamw_torch_fused"}
#: a GPU without bf16 (V100, T4): fp16 mixed precision
GPU_FP16_LINES = {"bf16": False, "fp16": True, "tf32": False, "optimizer": "adamw_torch_fused"}
#: a CPU: float32 (Axolotl's bf16: auto would pick fp16), plain AdamW; LoRA also turns Axolotl's GPU-only fused
#: kernels off (:data:`axolotl_calib_plugin.train.plugin.LORA_KERNEL_KEYS`)
CPU_LINES = {"bf16": False, "fp16": False, "tf32": False, "optimizer": "adamw_torch"}
#: the paper's columns (Sec. 6.1): the pooled in-domain suite and ARC-Challenge
DEFAULT_EVAL = EVAL_TASKS
#: the tasks that score local files (in-domain, out-of-domain) and their ``axolotl-calib eval`` flags
FILE_TASKS = (("calib_jsonl", "--data-files"), ("calib_jsonl_ood", "--ood-data-files"))
EVAL_DONE = "reproduce_eval_done.json"


class ReproduceError(ValueError):
    """A bad argument of ``reproduce``, found before anything runs; the message says what to do."""


def _log(msg: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------- checks (before any training)
def _truthy(value: Optional[str]) -> bool:
    return str(value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_offline() -> bool:
    """The hub is off for this process (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``): models must be cached."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def check_model(model: str, offline: Optional[bool] = None) -> str:
    """``model`` as the configs' ``base_model``: an absolute folder, or a hub id. Offline, a hub id must be in the
    local cache (``huggingface_hub.try_to_load_from_cache``: no network call). Raises :class:`ReproduceError`."""
    from .eval.evaluation import is_adapter_dir

    if os.path.isdir(model):
        if is_adapter_dir(model):
            raise ReproduceError(f"--model {model} is a peft adapter folder; the fixes start from full weights: merge "
                                 f"it first (axolotl merge-lora <its config>) and pass the merged folder")
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise ReproduceError(f"--model {model}: no config.json in this folder (a model saved with save_pretrained)")
        return os.path.abspath(model)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ReproduceError(f"--model {model}: no such folder (a hub id is 'owner/name')")
    if hub_offline() if offline is None else offline:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            from huggingface_hub.constants import HF_HUB_CACHE

            raise ReproduceError(
                f"--model {model}: the hub is off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) and this model is not in the "
                f"local cache ({HF_HUB_CACHE}). Download it where there is network (huggingface-cli download {model}; "
                "copy the cache here or set HF_HOME to it), pass a local model folder, or unset HF_HUB_OFFLINE")
    return model


def read_questions(path: str, cfg: Mapping) -> list:
    """Every row of a local MCQ file through the project's row validator, read as training will (the config's
    ``calib_option_letters`` / ``calib_answer_format`` / ``calib_field_*``): the checked rows
    (:class:`~axolotl_calib_plugin.rows.MCQRow`); :class:`CalibDataError` names the file and the 1-based line of each
    bad row."""
    from .eval.report import row_metadata
    from .rows import normalize_records, read_records

    meta = row_metadata(cfg)
    records, is_csv = read_records(path)
    rows = normalize_records(records, path, question_field=meta["question_field"], choices_field=meta["choices_field"],
                             answer_field=meta["answer_field"], letters=meta["option_letters"],
                             answer_format=meta["answer_format"], answer_from_csv=is_csv)
    return [row for _, row in rows]


def validate_data(path: str, cfg: Mapping) -> int:
    """Check every row of a local MCQ file (:func:`read_questions`); returns the number of rows."""
    return len(read_questions(path, cfg))


def overlap_notices(train_files: Sequence[str], spec: "EvalSpec", cfg: Mapping) -> list[str]:
    """Questions (text and options) of the evaluation files that are also training questions: a column scored on
    them measures fitted rows, not held-out ones. Every in-domain question a training one: refused; some: named."""
    def keys(files):
        return {(r.question.strip(), tuple(c.strip() for c in r.choices)) for f in files for r in read_questions(f, cfg)}

    if not train_files:
        return []
    train = keys(train_files)
    out = []
    for files, flag in ((spec.data_files, "--data-files"), (spec.ood_data_files, "--ood-data-files")):
        if not files:
            continue
        asked = keys(files)
        shared = len(asked & train)
        if shared == len(asked) and flag == "--data-files":
            raise ReproduceError(f"{flag}: all {shared} questions are training questions (--train-data-files): the "
                                 "in-domain column would score rows the fixes trained on; pass held-out questions")
        if shared:
            out.append(f"{flag}: {shared} of its {len(asked)} questions are also training questions; that column "
                       "scores them as well (not held out)")
    return out


@dataclass(frozen=True)
class EvalSpec:
    """The table's two columns: their tasks and the ``axolotl-calib eval`` flags that feed local files."""

    in_task: str
    out_task: str
    flags: tuple[str, ...] = ()
    data_files: tuple[str, ...] = ()
    ood_data_files: tuple[str, ...] = ()


def eval_spec(in_task: Optional[str], out_task: Optional[str], data_files: Optional[Sequence[str]],
              ood_data_files: Optional[Sequence[str]], cfg: Mapping) -> EvalSpec:
    """The table's columns: ``--data-files`` / ``--ood-data-files`` (local MCQ files, every row checked now) are
    scored as ``calib_jsonl`` / ``calib_jsonl_ood``; else the tasks ``--in-task`` / ``--out-task`` (default: the
    paper's pair, :data:`DEFAULT_EVAL`)."""
    tasks, flags, paths = [], [], []
    for files, task, (file_task, flag), default in zip((data_files, ood_data_files), (in_task, out_task), FILE_TASKS,
                                                       DEFAULT_EVAL):
        if files:
            if task not in (None, default, file_task):
                raise ReproduceError(f"{flag} is scored as the {file_task} task, but the column's task is {task}: drop "
                                     f"one of them")
            for path in files:
                validate_data(path, cfg)
            tasks.append(file_task)
            paths.append(tuple(os.path.abspath(f) for f in files))
            flags += [flag, *paths[-1]]
        else:
            tasks.append(task or default)
            paths.append(())
    if tasks[0] == tasks[1]:
        raise ReproduceError(f"the in- and out-of-domain columns are the same task {tasks[0]}")
    if paths[0] and sorted(set(paths[0])) == sorted(set(paths[1])):
        raise ReproduceError("--data-files and --ood-data-files are the same files: the two columns would score the "
                             "same questions; pass out-of-domain questions as --ood-data-files")
    return EvalSpec(tasks[0], tasks[1], tuple(flags), *paths)


def load_base_config(path: Optional[str]) -> dict:
    """The user's Axolotl YAML (a mapping), else :data:`DEFAULT_BASE`; an ``rl:`` config is refused (the fixes
    are supervised fine-tuning), and so is YAML that Axolotl's own loader (``yaml.safe_load``) would not read."""
    if not path:
        return dict(DEFAULT_BASE)
    if not os.path.isfile(path):
        raise ReproduceError(f"--base-config {path}: no such file")
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh)
    except yaml.YAMLError as e:
        raise ReproduceError(f"--base-config {path}: not YAML that axolotl train reads (it loads configs with "
                             f"yaml.safe_load: plain values only, no !!python tags): {' '.join(str(e).split())}") from None
    except UnicodeDecodeError as e:
        raise ReproduceError(f"--base-config {path}: not UTF-8 text ({e})") from None
    if not isinstance(cfg, dict):
        raise ReproduceError(f"--base-config {path}: not a YAML mapping of Axolotl keys")
    if cfg.get("rl"):
        raise ReproduceError(f"--base-config {path} sets rl: {cfg['rl']}; CFT / RCFT / LS are supervised fine-tuning: "
                             "remove rl (and its keys) from the base config")
    if isinstance(cfg.get("plugins"), str):
        cfg["plugins"] = [cfg["plugins"]]
    if cfg.get("plugins") is not None and not isinstance(cfg["plugins"], list):
        raise ReproduceError(f"--base-config {path}: plugins must be a list of plugin class paths")
    try:
        from .eval.report import row_metadata

        row_metadata(cfg)
    except ValueError as e:  # letters the tasks cannot ask with (duplicates, empty, more than 26, ...)
        raise ReproduceError(f"--base-config {path}: {e}") from None
    return cfg


# ----------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Run:
    """One training run: ``name`` is its model / config / eval folder name; ``start`` the user's model."""

    name: str
    method: str
    seed: Optional[int]
    start: str = "model"


def plan(methods: Sequence[str], seeds: Optional[Sequence[int]]) -> list[Run]:
    """Training runs in the table's order (TS trains nothing); with ``seeds``, one run per method and seed."""
    trained = [m for m in METHODS if m in methods and m in METHOD_LINES]
    if not seeds:
        return [Run(m, m, None) for m in trained]
    return [Run(f"{m}_seed{s}", m, s) for s in seeds for m in trained]


def device_lines(device: Optional[str], base: Mapping, user_base: bool = True) -> tuple[dict, list[str]]:
    """The precision / optimizer / LoRA-kernel lines of the device the runs train on (``device``: ``cpu``, ``cuda``...;
    default: cuda if available, else cpu), and the notices that say where each came from: a key the user's base
    config sets (``user_base``) is kept as written; on a CPU a LoRA kernel it turns on is refused (the fused kernels
    need CUDA; the plugin refuses it too, but only once training starts)."""
    import torch

    if device:
        cuda = str(device).startswith("cuda")
        bf16 = True  # a named GPU: the paper's settings (a box without bf16 sets bf16 / fp16 in --base-config)
    else:
        cuda = torch.cuda.is_available()
        bf16 = cuda and torch.cuda.is_bf16_supported()
    where = str(device) if device else ("cuda (found)" if cuda else "cpu (no CUDA device found)")
    lines = dict(GPU_LINES if cuda and bf16 else GPU_FP16_LINES if cuda else CPU_LINES)
    if not cuda and base.get("adapter") in ("lora", "qlora"):
        from .train.plugin import LORA_KERNEL_KEYS

        on = [k for k in LORA_KERNEL_KEYS if base.get(k)]
        if on:
            raise ReproduceError(f"--base-config sets {', '.join(on)}: true, but the runs train on {where} and Axolotl's "
                                 "fused LoRA kernels need CUDA: set them to false (or pass --device cuda to write "
                                 "configs for a GPU machine)")
        lines.update({k: False for k in LORA_KERNEL_KEYS})
    kept = {k: base[k] for k in lines if user_base and k in base}
    chosen = ", ".join(f"{k}: {v}" for k, v in lines.items() if k not in kept)
    notices = [f"training device {where}: " + (chosen or "every precision / optimizer / kernel key from --base-config")]
    if kept:
        notices.append("kept from --base-config: " + ", ".join(f"{k}: {v}" for k, v in kept.items()))
    return {k: v for k, v in lines.items() if k not in kept}, notices


def replaced_notices(base: Mapping, methods: Sequence[str]) -> list[str]:
    """What reproduce does with the base config's keys it decides itself: the calibration lines, the methods' lines
    and the post-training report keys (dropped)."""
    out = []
    run_keys = [k for k in RUN_KEYS if k != "plugins" and base.get(k) is not None]
    if run_keys:
        out.append(f"--base-config sets {', '.join(run_keys)}: replaced by --model, the calibration set and each run's "
                   "folders under --output-dir")
    dropped = [k for k in REPLACED_EVAL_KEYS if base.get(k) is not None]
    if dropped:
        out.append(f"--base-config sets {', '.join(dropped)}: dropped, reproduce evaluates every model itself "
                   "(DIR/eval/), each once")
    for k, v in CALIB_LINES.items():
        if k in base and base[k] != v:
            out.append(f"--base-config sets {k}: {base[k]}; replaced by {v} (the paper's) in every run")
    trained = [m for m in methods if m in METHOD_LINES]
    for k in sorted(_METHOD_KEYS):
        if k in base:
            own = {m: METHOD_LINES[m].get(k) for m in trained}
            said = ", ".join(f"{ROW_NAMES[m]} {v}" for m, v in own.items() if v is not None)
            out.append(f"--base-config sets {k}: {base[k]}; replaced by each method's own "
                       f"({said or 'unset'}{'; the plugin sets train_on_inputs from calib_mode' if k == 'train_on_inputs' else ''})")
    return out


def row_settings(cfg: Mapping) -> dict:
    """How every row of the table is asked, from the base config: the lm-eval metadata of the row settings
    (letters, answer format, fields) and the prompt format (chat template, system turn)."""
    from .eval.report import row_metadata

    chat = cfg.get("calib_prompt_format") == "chat_template"
    return {"task_metadata": row_metadata(cfg), "apply_chat_template": chat,
            "system_instruction": (cfg.get("calib_system_prompt") or None) if chat else None}


def row_flags(rows: Mapping) -> list[str]:
    """``axolotl-calib eval`` flags of :func:`row_settings` (letters and prompt format; it has no flags for the
    answer format and field names, which the model folder's calib_settings.json supplies for trained models)."""
    flags = ["--option-letters", ",".join(rows["task_metadata"]["option_letters"])]
    if rows["apply_chat_template"]:
        flags.append("--apply-chat-template")
        if rows["system_instruction"]:
            flags += ["--system-instruction", rows["system_instruction"]]
    return flags


def run_config(run: Run, base: Mapping, model: str, data: Sequence[Mapping], out: str,
               device: Optional[Mapping] = None) -> dict:
    """The base config (less the keys reproduce replaces) plus the device's lines, the calibration lines, the method's
    lines and this run's model, data and folders."""
    from .train.args import is_plugin_listed

    cfg = {k: v for k, v in base.items() if k not in _METHOD_KEYS and k not in REPLACED_EVAL_KEYS}
    cfg.update(device or {})
    plugins = [p for p in (base.get("plugins") or []) if not is_plugin_listed([p])]
    cfg.update({
        "base_model": model,
        "datasets": [dict(d) for d in data],
        "output_dir": os.path.join(out, "models", run.name),
        "dataset_prepared_path": os.path.join(out, "prepared", run.name),
        "plugins": plugins + [PLUGIN],
        **CALIB_LINES,
        **METHOD_LINES[run.method],
    })
    if run.seed is not None:
        cfg["seed"] = run.seed
    return cfg


def dataset_entries(files: Sequence[str], dataset: Optional[str], split: Optional[str]) -> list[dict]:
    """``datasets:`` of the calibration set: the local files, or a hub dataset id with its split."""
    if dataset:
        return [{"path": dataset, "split": split or "train", "type": "axolotl_calib_plugin.mcq"}]
    return [{"path": os.path.abspath(f), "type": "axolotl_calib_plugin.mcq"} for f in files]


def build_configs(runs: Sequence[Run], base: Mapping, model: str, data: Sequence[Mapping], out: str,
                  device: Optional[Mapping] = None) -> dict[str, dict]:
    return {r.name: run_config(r, base, model, data, out, device) for r in runs}


def write_config(cfg: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path


# ----------------------------------------------------------------------------------- the commands
def train_command(cfg_path: str) -> list[str]:
    return [sys.executable, "-m", "axolotl.cli.train", cfg_path]


#: ``axolotl-calib`` as a command of this environment (the console script may not be on the PATH of a job)
CLI = (sys.executable, "-m", "axolotl_calib_plugin.cli")


def eval_argv(model: str, eval_dir: str, spec: EvalSpec, eval_flags: Sequence[str]) -> list[str]:
    return ["eval", "--model", model, "--output-dir", eval_dir, "--tasks", f"{spec.in_task},{spec.out_task}",
            *spec.flags, *eval_flags]


def temperature_argv(start_eval: str, ts_dir: str, fraction: float, seed: int, plot_format: str) -> list[str]:
    return ["temperature", "--fit", start_eval, "--fit-fraction", f"{fraction:g}", "--seed", str(seed),
            "--apply", start_eval, "--output-dir", ts_dir, "--plot-format", plot_format]


def table_argv(rows: Sequence[tuple[str, str]], spec: EvalSpec, table_dir: str, plot_format: str) -> list[str]:
    argv = ["table"]
    for name, path in rows:
        argv += ["--run", f"{name}={path}"]
    return argv + ["--in-task", spec.in_task, "--out-task", spec.out_task, "--output-dir", table_dir,
                   "--plot-format", plot_format]


def shell(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


@contextlib.contextmanager
def _output_to(log_path: str):
    """File descriptors 1 and 2 (print, logging, C extensions) into ``log_path`` for the block."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a", encoding="utf-8") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextlib.contextmanager
def _step(what: str, argv: Sequence[str], log_path: Optional[str] = None):
    """One step (the command it equals, ``argv``, heads its log): output to ``log_path``; any failure becomes
    :class:`orchestrate.StepFailed` naming the step and the log (the traceback is in the log)."""
    import traceback

    ctx = _output_to(log_path) if log_path else contextlib.nullcontext()
    try:
        with ctx:
            print("$ axolotl-calib " + shell(argv), flush=True)
            try:
                yield
            except Exception:
                traceback.print_exc()
                raise
    except orchestrate.StepFailed:
        raise
    except Exception as e:
        where = f"; see {log_path}" if log_path else ""
        raise orchestrate.StepFailed(f"{what} failed ({type(e).__name__}: {e}){where}") from e


def _device_dtype(device: Optional[str], dtype: Optional[str]) -> tuple[str, str]:
    """As ``axolotl-calib eval``: cuda if available, else cpu; float32 on cpu, else the model config's dtype."""
    if not device:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, dtype or ("float32" if device == "cpu" else "auto")


def evaluate_model(model: str, eval_dir: str, spec: EvalSpec, rows: Mapping, *, device: Optional[str] = None,
                   dtype: Optional[str] = None, batch_size: int = 8, plot_format: str = "png") -> dict:
    """The report ``axolotl-calib eval`` writes (``eval_dir``: calibration_report.{md,json}, diagrams, lm-eval's
    results and samples) of ``model`` on the two columns, asked with ``rows`` (:func:`row_settings`). A trained
    model's ``calib_settings.json`` must agree with ``rows`` (:class:`orchestrate.StepFailed` otherwise: the row
    would answer other prompts than the rest of the table). Returns the per-task summary."""
    from .eval.evaluation import make_hflm
    from .eval.report import SETTINGS_FILE, SettingsError, evaluate_to_report, read_settings

    settings = os.path.join(model, SETTINGS_FILE)
    try:
        trained = read_settings(model) if os.path.isdir(model) else None
    except SettingsError as e:
        raise orchestrate.StepFailed(str(e)) from None
    if trained is not None:
        want = {**rows["task_metadata"], "prompt_format": "chat_template" if rows["apply_chat_template"] else "plain"}
        if rows["apply_chat_template"]:
            want["system_prompt"] = rows["system_instruction"]
        diff = {k: (trained.get(k), v) for k, v in want.items() if k in trained and trained[k] != v}
        if diff:
            raise orchestrate.StepFailed(f"{settings}: trained with other row settings than the table's "
                                         + "; ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in diff.items()))
    device, dtype = _device_dtype(device, dtype)
    # the token sequence training used: the run's recorded rule, else the tokenizer's own (the DPO start model)
    lm = make_hflm(model, device=device, dtype=dtype, batch_size=batch_size, chat=bool(rows["apply_chat_template"]),
                   add_bos_token=(trained or {}).get("add_bos_token"))
    title = os.path.basename(os.path.normpath(model)) or model
    summary, _ = evaluate_to_report(
        lm, [spec.in_task, spec.out_task], eval_dir, title=title, model_name=title,
        meta={"model": model, "adapter": bool(getattr(lm, "peft", None)), "device": str(lm.device), "dtype": dtype,
              "batch_size": batch_size, "apply_chat_template": rows["apply_chat_template"]},
        data_files=list(spec.data_files) or None, ood_data_files=list(spec.ood_data_files) or None,
        apply_chat_template=rows["apply_chat_template"], system_instruction=rows["system_instruction"],
        task_metadata=rows["task_metadata"], plot_format=plot_format)
    return summary


def temperature_scale(start_eval: str, ts_dir: str, fraction: float, seed: int, plot_format: str = "png") -> float:
    """What ``axolotl-calib temperature --fit START --fit-fraction F --seed S --apply START --output-dir TS`` does:
    T fitted on a seeded fraction of the start model's in-domain samples, every column scored with it (the fitted
    questions left out), written where ``table`` reads it. Returns T."""
    from .eval.samples import find_samples, read_samples
    from .eval.temperature import in_domain_tasks, scale_samples, temperature_report

    found = find_samples(start_eval)
    fit_tasks = in_domain_tasks()
    fit = {f: read_samples(f) for t, f in found.items() if t in fit_tasks}
    res = scale_samples(fit, {f: read_samples(f) for f in found.values()}, fit_fraction=fraction, seed=seed,
                        fit_tasks=fit_tasks)
    print(temperature_report(res, output_dir=ts_dir, plot_format=plot_format)["text"])
    return float(res["temperature"])


def write_table(rows: Sequence[tuple[str, str]], spec: EvalSpec, table_dir: str, plot_format: str = "png") -> dict:
    """What ``axolotl-calib table --run ... --output-dir TABLE`` writes (calibration_table.{json,md}, one comparison
    diagram per column); returns the table."""
    from .eval.compare import build_table, plot_runs, render_markdown, write_json

    table = build_table(rows, spec.in_task, spec.out_task)
    md = render_markdown(table)
    print(md)
    write_json(table, os.path.join(table_dir, "calibration_table.json"))
    with open(os.path.join(table_dir, "calibration_table.md"), "w", encoding="utf-8") as fh:
        fh.write(md + "\n")
    plot_runs(rows, [spec.in_task, spec.out_task], table_dir, plot_format=plot_format)
    return table


# ----------------------------------------------------------------------------------- the command
def train_env() -> dict:
    """This process's environment; with the hub off, also telemetry off (:data:`OFFLINE_ENV`): Axolotl's telemetry
    client retrying a blocked network can keep a finished training process from exiting."""
    from .offline import OFFLINE_ENV

    env = dict(os.environ)
    if hub_offline():
        for k, v in OFFLINE_ENV.items():
            env.setdefault(k, v)
    return env


def _launch(cfg_path: str, log_path: str, what: str) -> float:
    return orchestrate.run_logged(train_command(cfg_path), log_path, what, train_env())


def _eval_key(argv: Sequence[str], model_dir: str, rows: Mapping, spec: EvalSpec) -> str:
    """What an evaluation depends on: its command, the row settings, the contents of its data files, the code, and
    the model (a trained run's done marker, else its path: a hub id or a folder the user owns)."""
    done = os.path.join(model_dir, orchestrate.DONE_FILE)
    mark = open(done, encoding="utf-8").read() if os.path.isfile(done) else model_dir
    return orchestrate.config_hash({"argv": list(argv), "model": mark, "rows": dict(rows),
                                    "data": orchestrate.files_digest([*spec.data_files, *spec.ood_data_files])})


def _evaluate(jobs: Sequence[tuple[str, str, list[str]]], out: str, reuse: bool, reused: set, spec: EvalSpec,
              rows: Mapping, eval_opts: Mapping) -> dict:
    """Each (name, model, argv) evaluated (:func:`evaluate_model`), reusing a finished evaluation of the same key."""
    done = {}
    for i, (name, model_dir, argv) in enumerate(jobs, start=1):
        eval_dir = argv[argv.index("--output-dir") + 1]
        marker = os.path.join(eval_dir, EVAL_DONE)
        key = _eval_key(argv, model_dir, rows, spec)
        tag = f"eval [{i}/{len(jobs)}] {name}"
        if reuse and os.path.isfile(marker) and json.load(open(marker, encoding="utf-8")).get("key") == key:
            _log(f"{tag}: reusing {eval_dir}")
            reused.add(name)
        else:
            shutil.rmtree(eval_dir, ignore_errors=True)
            _log(f"{tag}: axolotl-calib eval -> {eval_dir}")
            t0 = time.time()
            with _step(f"evaluation of {name}", argv, os.path.join(out, "logs", f"eval_{name}.log")):
                evaluate_model(model_dir, eval_dir, spec, rows, **eval_opts)
            os.makedirs(eval_dir, exist_ok=True)
            with open(marker, "w", encoding="utf-8") as fh:
                json.dump({"key": key, "seconds": round(time.time() - t0, 1)}, fh)
            _log(f"{tag}: done in {time.time() - t0:.0f} s")
        done[name] = eval_dir
    return done


def check_output_dir(out: str) -> str:
    """``--output-dir`` as an absolute folder path: refused now when it is a file (or under one)."""
    out = os.path.abspath(out)
    probe = out
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if probe and not os.path.isdir(probe):
        raise ReproduceError(f"--output-dir {out}: {probe} is a file, not a folder; pass a folder path (it is created "
                             "if missing)")
    return out


def reproduce(model: str, out: str, *, train_data_files: Sequence[str] = (), train_dataset: Optional[str] = None,
              train_split: Optional[str] = None, methods: Sequence[str] = METHODS, base_config: Optional[str] = None,
              in_task: Optional[str] = None, out_task: Optional[str] = None, data_files: Optional[Sequence[str]] = None,
              ood_data_files: Optional[Sequence[str]] = None, seeds: Optional[Sequence[int]] = None,
              ts_fit_fraction: float = 0.1, device: Optional[str] = None, dtype: Optional[str] = None,
              batch_size: int = 8, plot_format: str = "png", dry_run: bool = False, reuse: bool = True) -> dict:
    """Run (or, with ``dry_run``, only write and print) the whole reproduction into ``out``; returns the summary
    also written to ``<out>/reproduce.json``. Every argument and every local data row is checked before anything
    trains. The calibration set: ``train_data_files`` (local MCQ files) or ``train_dataset`` (a hub id). ``device``
    picks the training settings (:func:`device_lines`) and the evaluations' device; ``dtype`` / ``batch_size``
    are the evaluations'."""
    t_start = time.time()
    out = check_output_dir(out)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ReproduceError(f"--methods {','.join(methods)}: choose from {','.join(METHODS)}")
    if bool(train_data_files) == bool(train_dataset):
        raise ReproduceError("give the calibration set as --train-data-files FILE... or --train-dataset HUB_ID "
                             "(one of them)")
    if device and str(device).startswith("cuda") and not dry_run:
        import torch

        if not torch.cuda.is_available():
            raise ReproduceError(f"--device {device}: this machine has no CUDA device; run it on a GPU machine, or add "
                                 "--dry-run to write the configs and commands.sh for one")
    base = load_base_config(base_config)
    n_rows = sum(validate_data(f, base) for f in train_data_files) if train_data_files else None
    data = list(train_data_files) if train_data_files else train_dataset
    spec = eval_spec(in_task, out_task, data_files, ood_data_files, base)
    rows = row_settings(base)
    base_model = check_model(model) if not dry_run else (os.path.abspath(model) if os.path.isdir(model) else model)
    runs = plan(methods, seeds)
    dev_lines, notices = device_lines(device, base, user_base=bool(base_config))
    notices += replaced_notices(base, methods) + overlap_notices(train_data_files, spec, base)
    configs = build_configs(runs, base, base_model, dataset_entries(train_data_files, train_dataset, train_split),
                            out, dev_lines)
    ts_seeds = list(seeds) if seeds else [int(base.get("seed", 0) or 0)]
    multi = bool(seeds) and len(seeds) > 1
    eval_flags = [*row_flags(rows), "--batch-size", str(batch_size), "--plot-format", plot_format]
    eval_flags += (["--device", device] if device else []) + (["--dtype", dtype] if dtype else [])
    eval_opts = {"device": device, "dtype": dtype, "batch_size": batch_size, "plot_format": plot_format}

    def eval_dir(name: str) -> str:
        return os.path.join(out, "eval", name)

    start_argv = eval_argv(base_model, eval_dir("dpo"), spec, eval_flags)
    eval_jobs = [("dpo", base_model, start_argv)] + [
        (r.name, configs[r.name]["output_dir"], eval_argv(configs[r.name]["output_dir"], eval_dir(r.name), spec,
                                                          eval_flags)) for r in runs]
    tables = []  # (seed, table dir, rows)
    for s in ts_seeds:
        sfx = f"_seed{s}" if seeds else ""
        table_rows = [("DPO", eval_dir("dpo"))]
        for m in (m for m in METHODS if m in methods):
            table_rows.append((ROW_NAMES[m], eval_dir(f"ts{sfx}" if m == "ts" else f"{m}{sfx}")))
        tables.append((s, os.path.join(out, f"table{sfx if multi else ''}"), table_rows))
    ts_jobs = [(s, temperature_argv(eval_dir("dpo"), eval_dir(f"ts{f'_seed{s}' if seeds else ''}"), ts_fit_fraction, s,
                                    plot_format)) for s in ts_seeds] if "ts" in methods else []
    summary: dict = {"model": model, "base_model": base_model, "data": data, "data_rows": n_rows,
                     "base_config": base_config, "methods": list(methods), "seeds": list(seeds or []),
                     "in_task": spec.in_task, "out_task": spec.out_task, "ts_fit_fraction": ts_fit_fraction,
                     "row_settings": rows, "notices": notices, "configs": {}, "commands": []}
    for r in runs:
        summary["configs"][r.name] = write_config(configs[r.name], os.path.join(out, "configs", f"{r.name}.yml"))
    commands = [shell(train_command(summary["configs"][r.name])) for r in runs]
    commands += [shell([*CLI, *argv]) for _, _, argv in eval_jobs]
    commands += [shell([*CLI, *argv]) for _, argv in ts_jobs]
    commands += [shell([*CLI, *table_argv(rows_, spec, tdir, plot_format)]) for _, tdir, rows_ in tables]
    summary["commands"] = commands
    os.makedirs(out, exist_ok=True)  # --methods ts trains nothing: no config made the folder
    with open(os.path.join(out, "commands.sh"), "w", encoding="utf-8") as fh:
        fh.write("#!/bin/sh\n# axolotl-calib reproduce, step by step (training runs are independent: one job "
                 "each on a scheduler; the evaluations need their model; temperature needs eval/dpo; table last)\n"
                 + "".join(f"# {n}\n" for n in notices) + "set -e\n" + "\n".join(commands) + "\n")
    if dry_run:
        for r in runs:
            print(f"# ---- {summary['configs'][r.name]}")
            print(yaml.safe_dump(configs[r.name], sort_keys=False).rstrip())
        print("# ---- notes")
        print("\n".join(f"# {n}" for n in notices))
        print(f"# ---- commands ({os.path.join(out, 'commands.sh')})")
        print("\n".join(commands))
        return summary

    for n in notices:
        _log(n)
    _log(f"{len(runs)} training run(s) from {base_model} on {', '.join(data) if train_data_files else data}"
         + (f" ({n_rows} rows)" if n_rows else "") + f"; columns {spec.in_task} / {spec.out_task} -> {out}")
    eval_reused: set = set()

    def evaluate(outcome: orchestrate.Outcome) -> None:
        jobs = [j for j in eval_jobs if j[0] == "dpo" or j[0] in outcome.models]
        summary["evals"] = _evaluate(jobs, out, reuse, eval_reused, spec, rows, eval_opts)

    outcome = orchestrate.execute(runs, lambda r: configs[r.name], out, launch=_launch, write_config=write_config,
                                  evaluate=evaluate, reuse=reuse, stale=lambda name: [eval_dir(name)], log=_log)
    for s, argv in ts_jobs:
        ts_dir = argv[argv.index("--output-dir") + 1]
        shutil.rmtree(ts_dir, ignore_errors=True)
        _log(f"temperature (seed {s}): fit on {ts_fit_fraction:g} of the in-domain questions of DPO -> {ts_dir}")
        with _step(f"temperature scaling (seed {s})", argv, os.path.join(out, "logs", f"temperature_seed{s}.log")):
            summary.setdefault("temperature", {})[str(s)] = temperature_scale(eval_dir("dpo"), ts_dir, ts_fit_fraction,
                                                                              s, plot_format)
    summary["tables"] = {}
    for s, tdir, table_rows in tables:
        table_rows = [(n, p) for n, p in table_rows if os.path.isdir(p)]  # a failed run has no row (its error is listed)
        _log(f"table{f' (seed {s})' if multi else ''} -> {tdir}")
        os.makedirs(tdir, exist_ok=True)
        with _step("table", table_argv(table_rows, spec, tdir, plot_format)):
            summary["tables"][str(s)] = write_table(table_rows, spec, tdir, plot_format)
    if multi:
        summary["seed_summary"] = _seed_summary(summary["tables"])
        path = os.path.join(out, "table_seeds.md")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(summary["seed_summary"] + "\n")
        print(summary["seed_summary"])
    summary.update({"models": outcome.models, "errors": outcome.errors, "timings_s": outcome.timings,
                    "reused_runs": sorted(outcome.reused), "reused_evals": sorted(eval_reused),
                    "wall_time_s": round(time.time() - t_start, 1)})
    with open(os.path.join(out, "reproduce.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1, default=str)
    for name, err in outcome.errors.items():
        _log(f"FAILED {name}: {err.splitlines()[0]}")
    _log(f"written: {os.path.join(out, 'reproduce.json')}, " + ", ".join(os.path.join(t, "calibration_table.md")
                                                                         for _, t, _ in tables))
    return summary


def _seed_summary(tables: Mapping[str, dict]) -> str:
    """Mean ± sample standard deviation over seeds of every cell (rows by name)."""
    import numpy as np

    from .eval.compare import COLUMNS

    names = list(dict.fromkeys(r["name"] for t in tables.values() for r in t["rows"]))
    lines = [f"Mean ± sd over {len(tables)} seeds ({', '.join(tables)}):", "",
             "| model | " + " | ".join(c[2] for c in COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for name in names:
        cells = []
        for metric, dom, _ in COLUMNS:
            vals = [(r[dom] or {}).get(metric) for t in tables.values() for r in t["rows"] if r["name"] == name]
            vals = [v for v in vals if v is not None]
            cells.append(f"{np.mean(vals):.4f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0.0:.4f}" if vals else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
