"""``axolotl-calib reproduce``: from a DPO model and an MCQ calibration set to the paper's Table 2 (DPO, TS, LS,
CFT, RCFT; conf-ECE, cw-ECE, accuracy, in- and out-of-domain) in one command.

It is the shared orchestration (:func:`axolotl_calib_plugin.orchestrate.execute`) with these parts:

* runs: one per training method (``ls``, ``cft``, ``rcft``) and seed, each starting from the user's model;
* configs: the user's base config (``--base-config``; default :data:`DEFAULT_BASE`, the paper's settings) plus
  only the keys below -- the same route as adding the plugin to an existing config: :data:`CALIB_LINES`, the
  method's :data:`METHOD_LINES`, and the run's model / data / folders (:data:`RUN_KEYS`);
* launch: ``python -m axolotl.cli.train <DIR>/configs/<run>.yml`` (log in ``<DIR>/logs/<run>.log``);
* evaluation: ``axolotl-calib eval`` of the start model and of every trained model on the in- and out-of-domain
  suites (``<DIR>/eval/<run>/``), ``axolotl-calib temperature`` on the start model's in-domain samples (T fitted on
  a seeded 10 % of them, scored on the rest: the authors' protocol; ``<DIR>/eval/ts/``), and
  ``axolotl-calib table`` over those folders (``<DIR>/table/``): the very commands ``--dry-run`` prints, run
  in-process, so the table is what ``axolotl-calib table`` gives on the same folders.

Everything is also written to ``<DIR>/reproduce.json``. A rerun reuses a finished run whose config and code are
unchanged (and its evaluation), and retrains the others.
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
from .rows import CalibDataError

__all__ = ["CALIB_LINES", "DEFAULT_BASE", "METHODS", "METHOD_LINES", "RUN_KEYS", "ReproduceError", "build_configs",
           "check_model", "eval_spec", "plan", "reproduce", "validate_data"]

#: the table's rows in the paper's order; ``ts`` trains nothing (temperature scaling of the start model)
METHODS = ("ts", "ls", "cft", "rcft")
ROW_NAMES = {"dpo": "DPO", "ts": "TS", "ls": "LS", "cft": "CFT", "rcft": "RCFT"}
PLUGIN = "axolotl_calib_plugin.CalibrationPlugin"
#: the plugin lines every calibration run adds to the base config (the paper: 10 bins, EM refresh every epoch)
CALIB_LINES = {"calib_bins": 10, "calib_refresh": "epoch"}
#: the method's own lines: LS is the paper's label-smoothing baseline (plain SFT on the answer, smoothed 0.1)
METHOD_LINES = {
    "ls": {"calib_mode": "cft", "calib_lambda": 0.0, "calib_label_smoothing": 0.1},
    "cft": {"calib_mode": "cft", "calib_lambda": 1.0},
    "rcft": {"calib_mode": "rcft", "calib_lambda": 1.0},
}
#: keys of the base config a method decides (dropped, so an LS line never leaks into CFT; the plugin sets
#: train_on_inputs from calib_mode)
_METHOD_KEYS = {k for lines in METHOD_LINES.values() for k in lines} | {"calib_sft_scope", "train_on_inputs"}
#: keys every written config sets from the command line (whatever the base config says)
RUN_KEYS = ("base_model", "datasets", "output_dir", "dataset_prepared_path", "plugins")
#: the paper's training settings (examples/llama_cft.yml, the authors' scripts) for an 8B model on one GPU
DEFAULT_BASE: dict = {
    "sequence_len": 2048, "sample_packing": False,
    "adapter": "lora", "lora_r": 128, "lora_alpha": 64, "lora_dropout": 0.05, "lora_target_linear": True,
    "learning_rate": 5e-6, "lr_scheduler": "cosine", "warmup_ratio": 0.1, "num_epochs": 5,
    "micro_batch_size": 2, "gradient_accumulation_steps": 1, "optimizer": "adamw_torch_fused", "weight_decay": 0.0,
    "bf16": True, "tf32": True, "gradient_checkpointing": True, "attn_implementation": "sdpa",
    "val_set_size": 0, "seed": 42, "logging_steps": 10, "save_strategy": "no",
}
#: the paper's columns (Sec. 6.1): the pooled in-domain suite and ARC-Challenge
DEFAULT_EVAL = ("calib_in_domain_pooled", "calib_arc_challenge")
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


def validate_data(path: str, cfg: Mapping) -> int:
    """Check every row of a local MCQ file with the project's row validator, reading it as training will (the
    config's ``calib_option_letters`` / ``calib_answer_format`` / ``calib_field_*``); :class:`CalibDataError` names
    the file and the 1-based line of each bad row. Returns the number of rows."""
    from .eval.report import row_metadata
    from .rows import normalize_records, read_records

    meta = row_metadata(cfg)
    records, is_csv = read_records(path)
    rows = normalize_records(records, path, question_field=meta["question_field"], choices_field=meta["choices_field"],
                             answer_field=meta["answer_field"], letters=meta["option_letters"],
                             answer_format=meta["answer_format"], answer_from_csv=is_csv)
    return len(rows)


@dataclass(frozen=True)
class EvalSpec:
    """The table's two columns: their tasks and the ``axolotl-calib eval`` flags that feed local files."""

    in_task: str
    out_task: str
    flags: tuple[str, ...] = ()


def eval_spec(in_task: Optional[str], out_task: Optional[str], data_files: Optional[Sequence[str]],
              ood_data_files: Optional[Sequence[str]], cfg: Mapping) -> EvalSpec:
    """The table's columns: ``--data-files`` / ``--ood-data-files`` (local MCQ files, every row checked now) are
    scored as ``calib_jsonl`` / ``calib_jsonl_ood``; else the tasks ``--in-task`` / ``--out-task`` (default: the
    paper's pair, :data:`DEFAULT_EVAL`)."""
    tasks, flags = [], []
    for files, task, (file_task, flag), default in zip((data_files, ood_data_files), (in_task, out_task), FILE_TASKS,
                                                       DEFAULT_EVAL):
        if files:
            if task not in (None, default, file_task):
                raise ReproduceError(f"{flag} is scored as the {file_task} task, but the column's task is {task}: drop "
                                     f"one of them")
            for path in files:
                validate_data(path, cfg)
            tasks.append(file_task)
            flags += [flag, *(os.path.abspath(f) for f in files)]
        else:
            tasks.append(task or default)
    if tasks[0] == tasks[1]:
        raise ReproduceError(f"the in- and out-of-domain columns are the same task {tasks[0]}")
    return EvalSpec(tasks[0], tasks[1], tuple(flags))


def load_base_config(path: Optional[str]) -> dict:
    """The user's Axolotl YAML (a mapping), else :data:`DEFAULT_BASE`; an ``rl:`` config is refused (the fixes
    are supervised fine-tuning)."""
    if not path:
        return dict(DEFAULT_BASE)
    if not os.path.isfile(path):
        raise ReproduceError(f"--base-config {path}: no such file")
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    if not isinstance(cfg, dict):
        raise ReproduceError(f"--base-config {path}: not a YAML mapping of Axolotl keys")
    if cfg.get("rl"):
        raise ReproduceError(f"--base-config {path} sets rl: {cfg['rl']}; CFT / RCFT / LS are supervised fine-tuning: "
                             "remove rl (and its keys) from the base config")
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


def run_config(run: Run, base: Mapping, model: str, data: Sequence[Mapping], out: str) -> dict:
    """The base config plus the calibration lines, the method's lines and this run's model, data and folders."""
    cfg = {k: v for k, v in base.items() if k not in _METHOD_KEYS}
    plugins = [p for p in (base.get("plugins") or []) if p != PLUGIN]
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


def build_configs(runs: Sequence[Run], base: Mapping, model: str, data: Sequence[Mapping], out: str) -> dict[str, dict]:
    return {r.name: run_config(r, base, model, data, out) for r in runs}


def write_config(cfg: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path


# ----------------------------------------------------------------------------------- the commands
def train_command(cfg_path: str) -> list[str]:
    return [sys.executable, "-m", "axolotl.cli.train", cfg_path]


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


def run_cli(argv: list[str], log_path: Optional[str] = None) -> None:
    """``axolotl-calib <argv>`` in this process (output to ``log_path`` when given); :class:`StepFailed` if it fails."""
    from .cli import main

    ctx = _output_to(log_path) if log_path else contextlib.nullcontext()
    try:
        with ctx:
            if log_path:
                print("$ axolotl-calib " + shell(argv), flush=True)
            rc = main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    if rc:
        where = f"; see {log_path}" if log_path else ""
        raise orchestrate.StepFailed(f"axolotl-calib {argv[0]} failed (exit {rc}){where}")


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


def _eval_key(argv: Sequence[str], model_dir: str) -> str:
    """What an evaluation depends on: its command, the code, and the model (a trained run's done marker, else its
    path: a hub id or a folder the user owns)."""
    done = os.path.join(model_dir, orchestrate.DONE_FILE)
    mark = open(done, encoding="utf-8").read() if os.path.isfile(done) else model_dir
    return orchestrate.config_hash({"argv": list(argv), "model": mark})


def _evaluate(jobs: Sequence[tuple[str, str, list[str]]], out: str, reuse: bool, reused: set) -> dict:
    """``axolotl-calib eval`` per (name, model, argv), reusing a finished evaluation of the same key."""
    done = {}
    for i, (name, model_dir, argv) in enumerate(jobs, start=1):
        eval_dir = argv[argv.index("--output-dir") + 1]
        marker = os.path.join(eval_dir, EVAL_DONE)
        key = _eval_key(argv, model_dir)
        tag = f"eval [{i}/{len(jobs)}] {name}"
        if reuse and os.path.isfile(marker) and json.load(open(marker, encoding="utf-8")).get("key") == key:
            _log(f"{tag}: reusing {eval_dir}")
            reused.add(name)
        else:
            shutil.rmtree(eval_dir, ignore_errors=True)
            _log(f"{tag}: axolotl-calib eval -> {eval_dir}")
            t0 = time.time()
            run_cli(argv, os.path.join(out, "logs", f"eval_{name}.log"))
            os.makedirs(eval_dir, exist_ok=True)
            with open(marker, "w", encoding="utf-8") as fh:
                json.dump({"key": key, "seconds": round(time.time() - t0, 1)}, fh)
            _log(f"{tag}: done in {time.time() - t0:.0f} s")
        done[name] = eval_dir
    return done


def reproduce(model: str, out: str, *, train_data_files: Sequence[str] = (), train_dataset: Optional[str] = None,
              train_split: Optional[str] = None, methods: Sequence[str] = METHODS, base_config: Optional[str] = None,
              in_task: Optional[str] = None, out_task: Optional[str] = None, data_files: Optional[Sequence[str]] = None,
              ood_data_files: Optional[Sequence[str]] = None, seeds: Optional[Sequence[int]] = None,
              ts_fit_fraction: float = 0.1, eval_flags: Sequence[str] = (), plot_format: str = "png",
              dry_run: bool = False, reuse: bool = True) -> dict:
    """Run (or, with ``dry_run``, only write and print) the whole reproduction into ``out``; returns the summary
    also written to ``<out>/reproduce.json``. Every argument and every local data row is checked before anything
    trains. The calibration set: ``train_data_files`` (local MCQ files) or ``train_dataset`` (a hub id)."""
    t_start = time.time()
    out = os.path.abspath(out)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ReproduceError(f"--methods {','.join(methods)}: choose from {','.join(METHODS)}")
    if bool(train_data_files) == bool(train_dataset):
        raise ReproduceError("give the calibration set as --train-data-files FILE... or --train-dataset HUB_ID "
                             "(one of them)")
    base = load_base_config(base_config)
    n_rows = sum(validate_data(f, base) for f in train_data_files) if train_data_files else None
    data = list(train_data_files) if train_data_files else train_dataset
    spec = eval_spec(in_task, out_task, data_files, ood_data_files, base)
    base_model = check_model(model) if not dry_run else (os.path.abspath(model) if os.path.isdir(model) else model)
    runs = plan(methods, seeds)
    configs = build_configs(runs, base, base_model, dataset_entries(train_data_files, train_dataset, train_split),
                            out)
    ts_seeds = list(seeds) if seeds else [int(base.get("seed", 0) or 0)]
    multi = bool(seeds) and len(seeds) > 1

    def eval_dir(name: str) -> str:
        return os.path.join(out, "eval", name)

    start_argv = eval_argv(base_model, eval_dir("dpo"), spec, eval_flags)
    eval_jobs = [("dpo", base_model, start_argv)] + [
        (r.name, configs[r.name]["output_dir"], eval_argv(configs[r.name]["output_dir"], eval_dir(r.name), spec,
                                                          eval_flags)) for r in runs]
    tables = []  # (seed, table dir, rows)
    for s in ts_seeds:
        sfx = f"_seed{s}" if seeds else ""
        rows = [("DPO", eval_dir("dpo"))]
        for m in (m for m in METHODS if m in methods):
            rows.append((ROW_NAMES[m], eval_dir(f"ts{sfx}" if m == "ts" else f"{m}{sfx}")))
        tables.append((s, os.path.join(out, f"table{sfx if multi else ''}"), rows))
    ts_jobs = [(s, temperature_argv(eval_dir("dpo"), eval_dir(f"ts{f'_seed{s}' if seeds else ''}"), ts_fit_fraction, s,
                                    plot_format)) for s in ts_seeds] if "ts" in methods else []
    summary: dict = {"model": model, "base_model": base_model, "data": data, "data_rows": n_rows,
                     "base_config": base_config, "methods": list(methods), "seeds": list(seeds or []),
                     "in_task": spec.in_task, "out_task": spec.out_task, "ts_fit_fraction": ts_fit_fraction,
                     "configs": {}, "commands": []}
    for r in runs:
        summary["configs"][r.name] = write_config(configs[r.name], os.path.join(out, "configs", f"{r.name}.yml"))
    commands = [shell(["python", "-m", "axolotl.cli.train", summary["configs"][r.name]]) for r in runs]
    commands += ["axolotl-calib " + shell(argv) for _, _, argv in eval_jobs]
    commands += ["axolotl-calib " + shell(argv) for _, argv in ts_jobs]
    commands += ["axolotl-calib " + shell(table_argv(rows, spec, tdir, plot_format)) for _, tdir, rows in tables]
    summary["commands"] = commands
    with open(os.path.join(out, "commands.sh"), "w", encoding="utf-8") as fh:
        fh.write("#!/bin/sh\n# axolotl-calib reproduce, step by step (training runs are independent: one job "
                 "each on a scheduler; the evaluations need their model; temperature needs eval/dpo; table last)\n"
                 "set -e\n" + "\n".join(commands) + "\n")
    if dry_run:
        for r in runs:
            print(f"# ---- {summary['configs'][r.name]}")
            print(yaml.safe_dump(configs[r.name], sort_keys=False).rstrip())
        print(f"# ---- commands ({os.path.join(out, 'commands.sh')})")
        print("\n".join(commands))
        return summary

    _log(f"{len(runs)} training run(s) from {base_model} on {', '.join(data) if train_data_files else data}" + (f" ({n_rows} rows)" if n_rows else "")
         + f"; columns {spec.in_task} / {spec.out_task} -> {out}")
    eval_reused: set = set()

    def evaluate(outcome: orchestrate.Outcome) -> None:
        jobs = [j for j in eval_jobs if j[0] == "dpo" or j[0] in outcome.models]
        summary["evals"] = _evaluate(jobs, out, reuse, eval_reused)

    outcome = orchestrate.execute(runs, lambda r: configs[r.name], out, launch=_launch, write_config=write_config,
                                  evaluate=evaluate, reuse=reuse, stale=lambda name: [eval_dir(name)], log=_log)
    for s, argv in ts_jobs:
        ts_dir = argv[argv.index("--output-dir") + 1]
        shutil.rmtree(ts_dir, ignore_errors=True)
        _log(f"temperature (seed {s}): fit on {ts_fit_fraction:g} of the in-domain questions of DPO -> {ts_dir}")
        run_cli(argv, os.path.join(out, "logs", f"temperature_seed{s}.log"))
        with open(os.path.join(ts_dir, "calibration_report.json"), encoding="utf-8") as fh:
            summary.setdefault("temperature", {})[str(s)] = json.load(fh)["meta"]["temperature"]
    summary["tables"] = {}
    for s, tdir, rows in tables:
        rows = [(n, p) for n, p in rows if os.path.isdir(p)]  # a failed run has no row (its error is listed)
        _log(f"table{f' (seed {s})' if multi else ''} -> {tdir}")
        run_cli(table_argv(rows, spec, tdir, plot_format))
        with open(os.path.join(tdir, "calibration_table.json"), encoding="utf-8") as fh:
            summary["tables"][str(s)] = json.load(fh)
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
