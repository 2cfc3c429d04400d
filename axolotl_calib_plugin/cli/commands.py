"""The ``axolotl-calib`` commands: each ``cmd_*`` takes the parsed flags (:mod:`.parser`), calls library
functions and prints; :func:`main` is the console script.

Product commands import product modules only; ``demo`` is the one that imports the demo package.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Sequence

from ..offline import OFFLINE_ENV
from .parser import OFFLINE_COMMANDS, build_parser, check_args, command_parsers, samples_of

__all__ = ["COMMANDS", "main"]


def _offline_env() -> None:
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def _device_dtype(a) -> tuple[str, str]:
    """The one default of every model-loading command: cuda if available, else cpu; float32 on cpu (bf16/fp16
    matmuls on a CPU are slow and lossy), else the model config's dtype."""
    device = a.device
    if not device:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, a.dtype or ("float32" if device == "cpu" else "auto")


def cmd_demo(a) -> int:
    from ..demo.pipeline import FAST, FULL, StepFailed, print_summary, run_demo
    from ..demo.real_world import RealModelError

    if a.study in ("real", "real_staged") and (a.fast or not a.seeds or a.world != "topic"):
        a.usage_error(f"--study {a.study} runs a real-model study (study/real_model_plan.md): give --seeds N, and no "
                      "--fast or --world (its budget and data are the plan's)")
    try:
        if a.seeds:
            from dataclasses import replace

            from ..demo.study import run_study

            settings = replace(FAST if a.fast else FULL, world=a.world)
            study = run_study(a.output_dir, a.seeds, settings, parallel=a.parallel, reuse=not a.fresh,
                              summary_dir=a.summary_dir, kind=a.study, summary_only=a.summary_only)
            summary = a.summary_dir or a.output_dir
            from ..demo.studies import get_study

            print(open(get_study(a.study).paths(summary)["md"], encoding="utf-8").read())
            errors = {k: v["errors"] for k, v in study["per_seed"].items() if v["errors"]}
            for seed, errs in errors.items():
                for name, msg in errs.items():
                    print(f"[FAILED] seed {seed} {name}: {msg.splitlines()[0]}", file=sys.stderr)
            return 1 if errors else 0
        if a.summary_only:
            a.usage_error("--summary-only summarises a study: give --seeds N")
        results = run_demo(a.output_dir, fast=a.fast, seed=a.seed, reuse=not a.fresh, parallel=a.parallel, world=a.world)
    except (StepFailed, RealModelError) as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    print_summary(results, os.path.abspath(a.output_dir))
    return 1 if results["meta"]["errors"] else 0


def cmd_real_model(a) -> int:
    from ..demo.real_world import MODEL_DIR, RealModelError, prepare

    try:
        prepare(a.output_dir, seed=a.seed, gguf=a.gguf)
        if a.precheck:
            import torch

            from ..demo.real_precheck import run

            torch.set_num_threads(1)
            run(a.output_dir, a.precheck)
    except RealModelError as e:
        a.parser.exit(1, f"axolotl-calib real-model: error: {e}\n")
    print(f"model: {os.path.join(a.output_dir, MODEL_DIR)}")
    return 0


def cmd_reproduce(a) -> int:
    from ..orchestrate import StepFailed
    from ..reproduce import ReproduceError, reproduce

    try:
        summary = reproduce(a.model, a.output_dir, train_data_files=a.train_data_files or (),
                            train_dataset=a.train_dataset, train_split=a.train_split, methods=a.methods,
                            base_config=a.base_config, in_task=a.in_task, out_task=a.out_task, data_files=a.data_files,
                            ood_data_files=a.ood_data_files, seeds=a.seeds, ts_fit_fraction=a.ts_fit_fraction,
                            device=a.device, dtype=a.dtype, batch_size=a.batch_size, plot_format=a.plot_format,
                            dry_run=a.dry_run, reuse=not a.fresh)
    except ReproduceError as e:
        a.usage_error(str(e))
    except StepFailed as e:
        print(f"reproduce failed: {e}", file=sys.stderr)
        return 1
    return 1 if summary.get("errors") else 0


def _same_questions(a) -> None:
    """``diagnose``'s verdict compares held-out with training accuracy: a question in both files shrinks that gap
    toward 0 (identical files: 0, "calibratable" by construction). Refused before any model loads, naming the
    count; a question is the same when its text and options are (as the tasks read them)."""
    from ..eval.evaluation import task_utils

    if not a.train_data_files:
        return
    utils = task_utils()
    meta = dict(a.task_metadata)

    def keys(task, files):
        docs = utils.load_suite(task, **{"data_files" if task == "calib_jsonl" else "ood_data_files": list(files)},
                                **meta)["test"]
        return [(same(d["question"]), tuple(same(c) for c in d["choices"])) for d in docs]

    def same(text: str) -> str:  # the same question up to case and spacing
        return " ".join(str(text).split()).casefold()

    held, train = keys("calib_jsonl", a.data_files), set(keys("calib_jsonl_ood", a.train_data_files))
    both = [k for k in held if k in train]
    if both:
        a.usage_error(f"{len(both)} of the {len(held)} held-out questions (--data-files {' '.join(a.data_files)}) are "
                      f"also in --train-data-files {' '.join(a.train_data_files)} (same question and options up to "
                      f"case and spacing, e.g. "
                      f"{both[0][0][:60]!r}): the verdict rests on the accuracy gap between the two sets, which such "
                      "questions shrink toward 0. Pass held-out questions the model was not fine-tuned on")


def cmd_diagnose(a) -> int:
    from scipy.special import softmax

    from ..eval.evaluation import evaluate_files, find_task_dir, make_hflm
    from ..eval.regime import diagnose
    from ..eval.temperature import pad_ragged_logits

    a.task_metadata = _trained_row_settings(a)
    _same_questions(a)
    device, dtype = _device_dtype(a)
    lm = _load_scored_model(a, device, dtype)
    # one task per role; the tasks read a comma-separated list of files as one pooled set
    files = [",".join(os.path.abspath(f) for f in fs) for fs in (a.data_files, a.train_data_files) if fs]
    res = evaluate_files(lm, files, a.include_path or find_task_dir(), a.batch_size,
                         apply_chat_template=a.apply_chat_template, system_instruction=a.system_instruction,
                         task_metadata=a.task_metadata)
    probs = softmax(pad_ragged_logits(res[0]["logliks"]), axis=1)  # mixed K: padded options get probability 0
    train = {}
    if a.train_data_files:
        train = {"train_probs": softmax(pad_ragged_logits(res[1]["logliks"]), axis=1), "train_labels": res[1]["labels"]}
    d = diagnose(probs, res[0]["labels"], acc_star=a.acc_star, **train)
    if a.json:
        out = d.as_dict()
        out["lm_eval"] = res[0]["metrics"]
        print(json.dumps(out))  # one line, last on stdout (lm-eval may print notes before it)
    else:
        print(f"model {a.model} on {', '.join(a.data_files)} (lm-eval task calib_jsonl)"
              + (f", training data {', '.join(a.train_data_files)} (calib_jsonl_ood)" if a.train_data_files else ""))
        print(d.render())
    return 0


def cmd_preference(a) -> int:
    from ..eval.evaluation import make_hflm
    from ..eval.preference import REPORT_MD, read_pairs, render_markdown, score_preferences, write_report

    if not (math.isfinite(a.beta) and a.beta > 0):
        a.usage_error(f"--beta {a.beta}: needs a positive number (the DPO beta the model was tuned with)")
    pairs = read_pairs(a.pairs, chat=a.apply_chat_template)  # every row checked before a model loads
    device, dtype = _device_dtype(a)

    def load(path: str):
        return make_hflm(path, base_model=a.base_model if path == a.model else None, tokenizer=a.tokenizer
                         if path == a.model else None, device=device, dtype=dtype, batch_size=a.batch_size)

    scores = score_preferences(pairs, load, a.model, a.reference, chat=a.apply_chat_template)
    meta = {"model": a.model, "reference": a.reference, "data": [os.path.abspath(f) for f in a.pairs],
            "apply_chat_template": a.apply_chat_template, "beta": a.beta, "device": device, "dtype": dtype,
            "batch_size": a.batch_size}
    print(render_markdown(write_report(a.output_dir, pairs, scores, meta)))
    print(f"report: {os.path.join(a.output_dir, REPORT_MD)}")
    return 0


def cmd_make_tiny(a) -> int:
    from ..prompts import format_mcq_prompt
    from ..rows import normalize_records, read_jsonl_records
    from ..testing import make_tiny_model_dir

    if a.hidden % 4:
        a.usage_error(f"--hidden must be a multiple of 4 (the tiny model's 4 attention heads), got {a.hidden}")
    corpus = None
    if a.data_files:  # every row checked as training checks it: a bad one is named by file and line
        corpus = [format_mcq_prompt(r.question, r.choices) + " A" for f in a.data_files
                  for _, r in normalize_records(read_jsonl_records(f), f)]
    path = make_tiny_model_dir(a.output_dir, corpus=corpus, hidden_size=a.hidden, num_layers=a.layers)
    print(f"tiny Llama + tokenizer written to {path}")
    return 0


def cmd_tasks_path(a) -> int:
    from ..eval.evaluation import find_task_dir

    print(find_task_dir())
    return 0


def cmd_eval(a) -> int:
    from ..eval.report import evaluate_to_report, markdown_table

    tasks = a.tasks
    if a.data_files and "calib_jsonl" not in tasks:
        a.usage_error("--data-files feeds the calib_jsonl task: add it to --tasks (e.g. --tasks calib_jsonl)")
    if a.ood_data_files and "calib_jsonl_ood" not in tasks:
        a.usage_error("--ood-data-files feeds the calib_jsonl_ood task: add it to --tasks")
    for task, files, flag in (("calib_jsonl", a.data_files, "--data-files"), ("calib_jsonl_ood", a.ood_data_files,
                                                                               "--ood-data-files")):
        if task in tasks and not files:
            a.usage_error(f"--tasks {task} reads local MCQ files: pass {flag} FILE.jsonl")
    task_metadata = _trained_row_settings(a)
    _check_eval_data(a, tasks, task_metadata)  # every data source readable before the model loads
    device, dtype = _device_dtype(a)
    lm = _load_scored_model(a, device, dtype)
    title = os.path.basename(os.path.normpath(a.model)) or a.model
    summary, paths = evaluate_to_report(
        lm, tasks, a.output_dir, title=title, model_name=title,
        meta={"model": a.model, "adapter": bool(getattr(lm, "peft", None)), "device": str(lm.device), "dtype": dtype,
              "batch_size": a.batch_size, "apply_chat_template": a.apply_chat_template,
              "add_bos_token": getattr(lm, "add_bos_token", None), "settings_file": a.settings_file},
        data_dir=a.data_dir, data_files=a.data_files, ood_data_files=a.ood_data_files, limit=a.limit,
        apply_chat_template=a.apply_chat_template, system_instruction=a.system_instruction,
        task_metadata=task_metadata, plot_format=a.plot_format,
    )
    print(markdown_table(summary))
    print(f"\nreport: {paths['md']}\nlm-eval results and samples: {os.path.join(a.output_dir, 'calibration_eval')}")
    return 0


def _trained_row_settings(a) -> dict:
    """The tasks' row metadata for the model (:func:`axolotl_calib_plugin.row_settings.check_trained_row_settings`);
    sets ``a.trained_add_bos`` (the recorded lm-eval ``add_bos_token``, or None) and ``a.settings_file`` (where the
    settings came from, or None). A settings file that cannot be used, or flags that contradict it, end the
    command with the message."""
    from ..row_settings import SettingsError, check_trained_row_settings

    try:
        found = check_trained_row_settings(a.model, settings_from=getattr(a, "settings_from", None),
                                           option_letters=a.option_letters, apply_chat_template=a.apply_chat_template,
                                           system_instruction=a.system_instruction)
    except SettingsError as e:
        raise SystemExit(f"axolotl-calib {a.cmd}: error: {e}") from None
    a.trained_add_bos, a.settings_file = found.add_bos_token, found.settings_file
    return found.task_metadata


def _load_scored_model(a, device: str, dtype: str):
    """The lm-eval model of ``eval`` / ``diagnose``, scoring the token sequence training used (the recorded
    ``add_bos_token`` of calib_settings.json, else the tokenizer's own rule)."""
    from ..eval.evaluation import make_hflm

    try:
        return make_hflm(a.model, base_model=a.base_model, tokenizer=a.tokenizer, device=device, dtype=dtype,
                         batch_size=a.batch_size, trust_remote_code=getattr(a, "trust_remote_code", False),
                         chat=bool(a.apply_chat_template), add_bos_token=getattr(a, "trained_add_bos", None))
    except ValueError as e:  # the tokenizer cannot reproduce training's prompts
        raise SystemExit(f"axolotl-calib {a.cmd}: error: {e}") from None


def _check_eval_data(a, tasks: Sequence[str], task_metadata: dict) -> None:
    """Every data source of ``tasks`` loads and parses (with the letters / fields the model was trained with)
    before the model is loaded: a hub suite that cannot be reached (offline, no cache) names this command's own
    flags; a bad row names its file and line; letters from calib_settings.json that the data cannot use name it."""
    from ..eval.evaluation import task_index, task_suites, task_utils
    from ..rows import CalibDataError

    index = task_index()
    suites: list[str] = []
    for t in tasks:
        suites += [s for s in task_suites(t, index) if s not in suites]
    utils = task_utils()
    letters_from = f" (option letters {task_metadata.get('option_letters')} from {a.settings_file})" \
        if getattr(a, "settings_file", None) else ""
    for suite, flag, files in (("calib_jsonl", "--data-files", a.data_files),
                               ("calib_jsonl_ood", "--ood-data-files", a.ood_data_files)):
        if suite in suites and files:
            try:
                utils.load_suite(suite, **{"data_files" if suite == "calib_jsonl" else "ood_data_files": list(files)},
                                 **task_metadata)
            except CalibDataError as e:
                raise CalibDataError(f"{flag}: {e}{letters_from}") from None
    hub = [s for s in suites if s in utils.SUITES]
    own = ("pass --data-dir DIR with " + ", ".join(f"{s}.jsonl" for s in hub) + " (each in its hub schema), or score "
           "your own questions with --tasks calib_jsonl --data-files FILE.jsonl")
    for suite in hub:  # offline, the datasets cache may still hold them: try, and name the flags if it does not
        try:
            utils.load_suite_docs(suite, a.data_dir, task_metadata.get("option_letters") or utils.DEFAULT_LETTERS)
        except CalibDataError as e:
            where = f"--data-dir {a.data_dir}" if a.data_dir else f"--tasks {','.join(tasks)}"
            a.usage_error(f"{where}: {str(e).split('. Without hub access')[0]}{letters_from}"
                          + ("" if a.data_dir else f". {own}"))


def _read_samples_args(a, flag: str, paths: Sequence[str], tasks=None) -> dict[str, list]:
    """Files or folders -> {samples file: items} (a folder contributes the newest file of each task; with
    ``tasks``, a folder's files of other tasks are left out and a named file of another task is an error)."""
    from ..eval.samples import read_samples, samples_task

    files = []
    for p in paths:
        found = samples_of(a.parser, flag, p)
        if tasks is not None:
            if os.path.isfile(p) and samples_task(p) not in tasks:
                a.usage_error(f"{flag} {p}: task {samples_task(p)} is not one T is fitted on ({', '.join(sorted(tasks))}); "
                              f"an out-of-domain column fitted on would not be out-of-domain. Pass --fit-tasks "
                              f"{samples_task(p)} to fit on it anyway")
            found = {t: f for t, f in found.items() if t in tasks}
        files += [f for f in found.values() if f not in files]
    out = {}
    for f in files:
        try:
            out[f] = read_samples(f)
        except ValueError as e:
            a.usage_error(f"{flag} {e}: the file is damaged (an evaluation killed while writing it?) or not a calib "
                          "task's samples file; rerun the evaluation that wrote it")
    return out


def cmd_temperature(a) -> int:
    from ..eval.temperature import in_domain_tasks, scale_samples, temperature_report

    fit_tasks = a.fit_tasks or in_domain_tasks()
    fit = _read_samples_args(a, "--fit", a.fit, fit_tasks)
    if not fit:
        a.usage_error(f"--fit {' '.join(a.fit)}: no samples of the tasks T is fitted on ({', '.join(fit_tasks)}; "
                      "the default is the in-domain tasks): pass --fit-tasks to fit on others")
    apply = _read_samples_args(a, "--apply", a.apply)
    try:
        res = scale_samples(fit, apply, fit_fraction=a.fit_fraction, seed=a.seed, fit_tasks=fit_tasks)
    except ValueError as e:
        a.usage_error(str(e))
    report = temperature_report(res, output_dir=a.output_dir, plot_format=a.plot_format)
    print(report["text"])
    if report["report"]:
        print(f"\nreport: {report['report']}")
    return 0


def cmd_table(a) -> int:
    from ..eval.table import build_table, plot_runs, render_markdown, write_json

    try:
        table = build_table(a.runs, a.in_task, a.out_task, allow_different_prompts=a.allow_different_prompts)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"axolotl-calib table: error: {e}") from None
    md = render_markdown(table)
    print(md)
    if a.output_dir:
        os.makedirs(a.output_dir, exist_ok=True)
        print(f"\nJSON: {write_json(table, os.path.join(a.output_dir, 'calibration_table.json'))}")
        with open(os.path.join(a.output_dir, "calibration_table.md"), "w", encoding="utf-8") as fh:
            fh.write(md + "\n")
        for p in plot_runs(a.runs, [a.in_task, a.out_task], a.output_dir, plot_format=a.plot_format,
                           allow_different_prompts=a.allow_different_prompts):
            print(f"diagram: {p}")
    return 0


#: command name -> its function (the names :func:`.parser.build_parser` defines)
COMMANDS = {"eval": cmd_eval, "tasks-path": cmd_tasks_path, "temperature": cmd_temperature, "table": cmd_table,
            "diagnose": cmd_diagnose, "preference": cmd_preference, "make-tiny": cmd_make_tiny,
            "reproduce": cmd_reproduce, "real-model": cmd_real_model, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    from ..eval.evaluation import quiet_third_party_logs

    quiet_third_party_logs()  # before torchao / lm-eval are imported
    ap = build_parser()
    a = ap.parse_args(argv)
    cp = command_parsers(ap)[a.cmd]
    a.parser, a.usage_error = cp, cp.error
    check_args(cp, a)
    if a.cmd in OFFLINE_COMMANDS:
        _offline_env()
    from ..rows import CalibDataError

    try:
        return int(COMMANDS[a.cmd](a) or 0)
    except CalibDataError as e:  # bad rows: the message names file, line and field; a traceback adds nothing
        ap.exit(1, f"axolotl-calib {a.cmd}: error: {e}\n")

