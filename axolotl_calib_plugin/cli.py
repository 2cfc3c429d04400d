"""``axolotl-calib``: the project's console script (``axolotl-calib <command> --help`` explains each).

    eval         calibration report of a model folder or peft adapter (lm-eval + report + diagrams)
    tasks-path   the lm-eval task folder to pass as ``lm_eval --include_path``
    temperature  temperature-scaling baseline fitted on lm-eval samples
    table        a Table-2-style comparison of several evaluated runs
    diagnose     conf-ECE / cw-ECE / acc of a model on an MCQ file and the calibratable-regime verdict
    make-tiny    a local tiny Llama + tokenizer (no hub) for trying configs on a CPU
    demo         the offline reproduction (world with known truth -> SFT -> DPO -> fixes -> lm-eval)

Product commands import product modules only; ``demo`` is the one that imports the demo package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from .offline import OFFLINE_ENV

DEFAULT_EVAL_TASKS = "calib_in_domain_pooled,calib_arc_challenge"


def _offline_env() -> None:
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def _tasks(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def _limit(value: str):
    v = float(value)
    if v >= 1 and v.is_integer():
        return int(v)
    if 0 < v < 1:
        return v
    raise argparse.ArgumentTypeError(f"--limit must be an integer >= 1 or a fraction in (0, 1), got {value}")


# ----------------------------------------------------------------------------------- commands
def _seeds(spec: str) -> list[int]:
    """``5`` -> seeds 0..4; ``0,3,7`` -> those seeds (argparse type: a bad value is a usage error)."""
    spec = str(spec).strip()
    bad = argparse.ArgumentTypeError(
        f"needs a count >= 1 (seeds 0..N-1) or a comma-separated list of distinct seeds >= 0, got {spec!r}")
    try:
        if "," in spec:
            seeds = [int(x) for x in spec.split(",") if x.strip()]
            if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
                raise bad
            return seeds
        n = int(spec)
    except ValueError:
        raise bad from None
    if n < 1:
        raise bad
    return list(range(n))


def _fraction(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        v = -1.0
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"needs a fraction in (0, 1], got {value!r}")
    return v


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"needs an integer >= 1, got {value!r}")
    return n


def _check_paths(ap: argparse.ArgumentParser, a) -> None:
    """Usage errors for missing local files and folders, before any model is loaded (a path that does not exist
    would otherwise reach the hub client as a malformed repo id)."""
    offline = a.cmd in OFFLINE_COMMANDS
    for flag in ("model", "base_model"):
        value = getattr(a, flag, None)
        if not value or os.path.exists(value):
            continue
        looks_local = value.startswith((".", "/", "~")) or value.count("/") > 1
        if offline or looks_local:
            why = ("this command runs offline, so it needs a local model or adapter folder" if offline
                   else "no such folder (a hub id is 'name' or 'owner/name')")
            ap.error(f"--{flag.replace('_', '-')} {value}: {why}")
    for flag in ("data", "train_data", "data_files", "ood_data_files"):
        values = getattr(a, flag, None)
        for path in [values] if isinstance(values, str) else values or []:
            if not os.path.isfile(path):
                ap.error(f"--{flag.replace('_', '-')} {path}: no such file (an MCQ JSONL: question, choices, answer)")


def cmd_demo(a) -> int:
    from .demo.pipeline import FAST, FULL, StepFailed, print_summary, run_demo

    try:
        if a.seeds:
            from dataclasses import replace

            from .demo.study import run_study

            settings = replace(FAST if a.fast else FULL, world=a.world)
            study = run_study(a.out, a.seeds, settings, parallel=a.parallel, reuse=not a.fresh,
                              summary_dir=a.summary_dir)
            summary = a.summary_dir or a.out
            print(open(os.path.join(summary, "study.md"), encoding="utf-8").read())
            errors = {k: v["errors"] for k, v in study["per_seed"].items() if v["errors"]}
            for seed, errs in errors.items():
                for name, msg in errs.items():
                    print(f"[FAILED] seed {seed} {name}: {msg.splitlines()[0]}", file=sys.stderr)
            return 1 if errors else 0
        results = run_demo(a.out, fast=a.fast, seed=a.seed, reuse=not a.fresh, parallel=a.parallel, world=a.world)
    except StepFailed as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    print_summary(results, os.path.abspath(a.out))
    return 1 if results["meta"]["errors"] else 0


def cmd_diagnose(a) -> int:
    from scipy.special import softmax

    from .evaluation import evaluate_files, find_task_dir, make_hflm
    from .regime import diagnose
    from .temperature import pad_ragged_logits

    device = a.device or "cpu"
    lm = make_hflm(a.model, base_model=a.base_model, tokenizer=a.tokenizer, device=device,
                   dtype=a.dtype or ("float32" if device == "cpu" else "auto"), batch_size=a.batch_size)
    files = [a.data] + ([a.train_data] if a.train_data else [])
    res = evaluate_files(lm, files, a.tasks or find_task_dir(), a.batch_size)
    probs = softmax(pad_ragged_logits(res[0]["logliks"]), axis=1)  # mixed K: padded options get probability 0
    train = {}
    if a.train_data:
        train = {"train_probs": softmax(pad_ragged_logits(res[1]["logliks"]), axis=1), "train_labels": res[1]["labels"]}
    d = diagnose(probs, res[0]["labels"], acc_star=a.acc_star, **train)
    if a.json:
        out = d.as_dict()
        out["lm_eval"] = res[0]["metrics"]
        print(json.dumps(out))  # one line, last on stdout (lm-eval may print notes before it)
    else:
        print(f"model {a.model} on {a.data} (lm-eval task calib_jsonl)"
              + (f", training data {a.train_data} (calib_jsonl_ood)" if a.train_data else ""))
        print(d.render())
    return 0


def cmd_make_tiny(a) -> int:
    from .prompts import format_mcq_prompt
    from .rows import read_jsonl
    from .testing import make_tiny_model_dir

    corpus = None
    if a.data:
        corpus = [format_mcq_prompt(r["question"], r["choices"]) + " A" for r in read_jsonl(a.data)]
    path = make_tiny_model_dir(a.out, corpus=corpus, hidden_size=a.hidden, num_layers=a.layers)
    print(f"tiny Llama + tokenizer written to {path}")
    return 0


def cmd_tasks_path(a) -> int:
    from .evaluation import find_task_dir

    print(find_task_dir())
    return 0


def cmd_eval(a) -> int:
    from .evaluation import make_hflm
    from .report import evaluate_to_report, markdown_table

    tasks = _tasks(a.tasks)
    if a.data_files and "calib_jsonl" not in tasks:
        raise SystemExit("--data-files feeds the calib_jsonl task: add it to --tasks (e.g. --tasks calib_jsonl)")
    if a.ood_data_files and "calib_jsonl_ood" not in tasks:
        raise SystemExit("--ood-data-files feeds the calib_jsonl_ood task: add it to --tasks")
    for task, files, flag in (("calib_jsonl", a.data_files, "--data-files"), ("calib_jsonl_ood", a.ood_data_files,
                                                                               "--ood-data-files")):
        if task in tasks and not files:
            raise SystemExit(f"--tasks {task} reads local MCQ files: pass {flag} FILE.jsonl")
    task_metadata = _trained_row_settings(a)
    lm = make_hflm(a.model, base_model=a.base_model, tokenizer=a.tokenizer, device=a.device, dtype=a.dtype,
                   batch_size=a.batch_size, trust_remote_code=a.trust_remote_code)
    title = os.path.basename(os.path.normpath(a.model)) or a.model
    summary, paths = evaluate_to_report(
        lm, tasks, a.output_dir, title=title, model_name=title,
        meta={"model": a.model, "adapter": bool(getattr(lm, "peft", None)), "device": str(lm.device), "dtype": a.dtype,
              "batch_size": a.batch_size, "apply_chat_template": a.apply_chat_template},
        data_dir=a.data_dir, data_files=a.data_files, ood_data_files=a.ood_data_files, limit=a.limit,
        apply_chat_template=a.apply_chat_template, system_instruction=a.system_instruction,
        task_metadata=task_metadata,
    )
    print(markdown_table(summary))
    print(f"\nreport: {paths['md']}\nlm-eval results and samples: {os.path.join(a.output_dir, 'calibration_eval')}")
    return 0


def _trained_row_settings(a) -> dict:
    """Letters / answer format / fields for the tasks: the model folder's calib_settings.json (written by training),
    else --option-letters; a flag that contradicts what the model was trained with is refused, naming both."""
    import json

    from .args import check_option_letters
    from .report import SETTINGS_FILE, row_metadata

    path = os.path.join(a.model, SETTINGS_FILE)
    flag = check_option_letters(a.option_letters, "--option-letters") if a.option_letters else None
    if not os.path.isfile(path):
        return row_metadata({"calib_option_letters": flag})
    with open(path, encoding="utf-8") as fh:
        trained = json.load(fh)
    meta = {k: trained[k] for k in row_metadata({}) if k in trained}
    problems = []
    if flag is not None and flag != meta.get("option_letters"):
        problems.append(f"--option-letters {','.join(flag)} but it was trained with calib_option_letters "
                        f"{meta.get('option_letters')} (drop the flag)")
    chat = trained.get("prompt_format") == "chat_template"
    if chat != bool(a.apply_chat_template):
        problems.append(f"it was trained with calib_prompt_format: {trained.get('prompt_format')} but this evaluation "
                        f"{'scores plain prompts (add --apply-chat-template)' if chat else 'applies the chat template (drop --apply-chat-template)'}")
    elif chat and (trained.get("system_prompt") or None) != (a.system_instruction or None):
        problems.append(f"it was trained with calib_system_prompt {trained.get('system_prompt')!r} but "
                        f"--system-instruction is {a.system_instruction!r}")
    if problems:
        raise SystemExit(f"{a.model} ({SETTINGS_FILE}): " + "; ".join(problems) + ". Scoring other prompts than the "
                         "model was trained on gives numbers for a different task.")
    return meta


def _samples_arg(paths: Sequence[str]) -> dict[str, list]:
    """Files or folders -> {samples file: items} (a folder contributes the newest file of each task)."""
    from .report import find_samples, read_samples

    files = []
    for p in paths:
        if not os.path.exists(p):
            raise SystemExit(f"{p}: no such file or folder")
        found = find_samples(p)
        if not found:
            raise SystemExit(f"{p}: no lm-eval samples_<task>_<time>.jsonl files (run lm_eval with --log_samples)")
        files += [f for f in found.values() if f not in files]
    return {f: read_samples(f) for f in files}


def _metrics_of(items) -> dict:
    """conf-ECE / cw-ECE / accuracy of per-question items, as the calib tasks aggregate them."""
    import inspect

    from . import metrics
    from .report import stack_items

    probs, labels, ks = stack_items(items)
    if "num_options" in inspect.signature(metrics.calibration_metrics).parameters:
        return metrics.calibration_metrics(probs, labels, num_options=ks)
    return metrics.calibration_metrics(probs, labels)


def cmd_temperature(a) -> int:
    from .plots import plot_comparison
    from .report import samples_task, stack_items, write_report
    from .temperature import scale_samples

    fit = _samples_arg(a.fit)
    apply = _samples_arg(a.apply)
    res = scale_samples(fit, apply, fit_fraction=a.fit_fraction, seed=a.seed)
    t = res["temperature"]
    f = res["fit"]
    print(f"T = {t:.4f}  (fitted by NLL on {f['n']} questions of {len(f['files'])} file(s); "
          f"NLL {f['nll_before']:.4f} -> {f['nll_after']:.4f})")
    summary, items, notes = {}, {}, []
    lines = ["| task | n | acc | conf-ECE before | conf-ECE after | cw-ECE before | cw-ECE after |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for path, r in res["apply"].items():
        task = samples_task(path)
        before = _metrics_of(r["before"])
        after = _metrics_of(r["items"])
        summary[task] = {"kind": "task", "acc": after["accuracy"], "conf_ece": after["conf_ece"],
                         "cw_ece": after["cw_ece"], "n": len(r["items"]),
                         "before": {"acc": before["accuracy"], "conf_ece": before["conf_ece"], "cw_ece": before["cw_ece"]},
                         "source": os.path.abspath(path)}
        items[task] = r["items"]
        if r["held_out_only"]:
            notes.append(f"{task}: scored on the {len(r['items'])} questions not used to fit T")
        elif r["overlaps_fit"]:
            notes.append(f"{task}: the fit used all of these questions too (use --fit-fraction < 1 to hold some out)")
        lines.append(f"| {task} | {len(r['items'])} | {after['accuracy']:.4f} | {before['conf_ece']:.4f} | "
                     f"{after['conf_ece']:.4f} | {before['cw_ece']:.4f} | {after['cw_ece']:.4f} |")
    print("\n".join(lines))
    for n in notes:
        print(f"* {n}")
    if a.out:
        from datetime import datetime

        meta = {"temperature": t, "fit_files": f["files"], "fit_questions": f["n"], "fit_fraction": f["fraction"],
                "seed": f["seed"], "nll_before": f["nll_before"], "nll_after": f["nll_after"]}
        paths = write_report(a.out, summary, items, title=f"temperature scaling (T = {t:.4f})", meta=meta, notes=notes)
        stamp = datetime.now().isoformat().replace(":", "-")
        for path, r in res["apply"].items():  # lm-eval's samples layout, so `table --plots` can read them
            task = samples_task(path)
            with open(os.path.join(a.out, f"samples_{task}_{stamp}.jsonl"), "w", encoding="utf-8") as fh:
                for it in r["items"]:
                    fh.write(json.dumps({"doc_id": it["doc_id"], "conf_ece": {k: it[k] for k in ("probs", "gold", "logliks")}})
                             + "\n")
            plot_comparison({"before": stack_items(r["before"]), f"T = {t:.3f}": stack_items(r["items"])},
                            os.path.join(a.out, f"reliability_before_after_{task}.png"), title=f"temperature scaling: {task}")
        print(f"\nreport: {paths['md']}")
    return 0


def cmd_table(a) -> int:
    from .compare import build_table, plot_runs, render_markdown, write_json

    runs = []
    for spec in a.run:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--run expects NAME=FOLDER, got {spec!r}")
        if not os.path.exists(path):
            raise SystemExit(f"--run {name}: {path} does not exist")
        runs.append((name, path))
    try:
        table = build_table(runs, a.in_task, a.out_task)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(str(e)) from None
    print(render_markdown(table))
    if a.json:
        write_json(table, a.json)
        print(f"\nJSON: {a.json}")
    if a.plots:
        for p in plot_runs(runs, [a.in_task, a.out_task], a.plots):
            print(f"diagram: {p}")
    return 0


# ----------------------------------------------------------------------------------- parser
class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default (argparse's, or the help's own "(default: ...)" wording where a bare None
    would say nothing) and keeps the examples in descriptions as written."""

    def _get_help_string(self, action):
        if action.required or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _sub(sub, name: str, help: str, description: str):
    return sub.add_parser(name, help=help, description=description, formatter_class=_Formatter)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="axolotl-calib", formatter_class=_Formatter,
                                 description="Calibration-aware fine-tuning (CFT / RCFT) tools: evaluate, compare and "
                                             "temperature-scale models with the calib_* lm-eval tasks.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    e = _sub(sub, "eval", "calibration report of a model folder or peft adapter",
             "Evaluate a model with the calib_* lm-eval tasks and write lm-eval's results + samples, "
             "calibration_report.{md,json} and reliability diagrams into --output-dir.\n\n"
             "  axolotl-calib eval --model outputs/llama_cft --output-dir eval/cft\n"
             "  axolotl-calib eval --model outputs/tiny --tasks calib_jsonl --data-files heldout.jsonl "
             "--output-dir eval/tiny --device cpu")
    e.add_argument("--model", required=True, help="HF model folder or hub id, or a peft adapter folder "
                   "(adapter_config.json: loaded on its base model)")
    e.add_argument("--output-dir", required=True, help="where the report, diagrams and lm-eval outputs go")
    e.add_argument("--tasks", default=DEFAULT_EVAL_TASKS, help="comma-separated calib_* tasks or groups "
                   "(axolotl-calib tasks-path lists the folder); the default is the paper's in/out-domain pair")
    e.add_argument("--data-dir", default=None, help="folder of local <task>.jsonl files (each in its hub schema) "
                   "read instead of the hub (lm-eval metadata calib_data_dir) (default: the hub)")
    e.add_argument("--data-files", nargs="+", default=None, metavar="FILE", help="MCQ JSONL file(s) "
                   "({question, choices, answer}) for the calib_jsonl task (default: none)")
    e.add_argument("--ood-data-files", nargs="+", default=None, metavar="FILE",
                   help="MCQ JSONL file(s) for the calib_jsonl_ood task (default: none)")
    e.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    e.add_argument("--dtype", default="auto", help="model dtype: auto (the model config's), float32, bfloat16, float16")
    e.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size")
    e.add_argument("--limit", type=_limit, default=None, help="first N questions per task, or a fraction in (0, 1) "
                   "(default: all questions)")
    e.add_argument("--base-model", default=None, help="base model of an adapter (default: from adapter_config.json)")
    e.add_argument("--tokenizer", default=None, help="tokenizer folder or id (default: the model's / adapter's)")
    e.add_argument("--apply-chat-template", action="store_true",
                   help="score through the tokenizer's chat template (models trained with calib_prompt_format: "
                        "chat_template)")
    e.add_argument("--system-instruction", default=None, help="system turn with --apply-chat-template "
                   "(your calib_system_prompt) (default: none)")
    e.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub")
    e.add_argument("--option-letters", default=None, help="option letters the model was trained with "
                   "(calib_option_letters), e.g. ABCDE or '1,2,3,4'; read from the model's calib_settings.json when "
                   "training wrote one (default: A..J)")
    e.set_defaults(func=cmd_eval)

    p = _sub(sub, "tasks-path", "print the lm-eval task folder (for lm_eval --include_path)",
             "Print the folder holding the calib_* lm-eval tasks installed with this package:\n\n"
             "  lm_eval --include_path \"$(axolotl-calib tasks-path)\" --tasks calib_mmlu --model hf ...")
    p.set_defaults(func=cmd_tasks_path)

    t = _sub(sub, "temperature", "temperature scaling fitted on lm-eval samples (Table 2 baseline)",
             "Fit one temperature T by NLL on the option log-likelihoods of lm-eval samples files "
             "(samples_<task>_<time>.jsonl from --log_samples, axolotl-calib eval or calib_eval_tasks) and "
             "report each --apply task before and after softmax(logliks / T). Accuracy is unchanged by "
             "construction.\n\n"
             "The authors' protocol (fit on a random 10% of the in-domain evaluation split, report the rest):\n"
             "  axolotl-calib temperature --fit eval/dpo --fit-fraction 0.1 \\\n"
             "      --apply eval/dpo --out eval/dpo_ts\n"
             "(a folder stands for its newest samples file of every task; name files to pick tasks).")
    t.add_argument("--fit", nargs="+", required=True, metavar="SAMPLES",
                   help="samples files or folders to fit T on (held-out questions)")
    t.add_argument("--apply", nargs="+", required=True, metavar="SAMPLES",
                   help="samples files or folders to scale and score")
    t.add_argument("--fit-fraction", type=_fraction, default=1.0, help="fit on this seeded random fraction of each "
                   "--fit file; an --apply file that is also a --fit file is scored on the rest only")
    t.add_argument("--seed", type=int, default=0, help="seed of the --fit-fraction split")
    t.add_argument("--out", default=None, help="write calibration_report.{md,json}, scaled samples and "
                   "before/after diagrams here, readable by axolotl-calib table (default: print only)")
    t.set_defaults(func=cmd_temperature)

    c = _sub(sub, "table", "Table-2-style comparison of several evaluated runs",
             "Assemble conf-ECE / cw-ECE / accuracy, in-domain and out-of-domain, of several runs into one "
             "Markdown table (stdout) and a JSON file. A run folder is anything axolotl-calib eval, "
             "calib_eval_tasks (the training output_dir), axolotl-calib temperature --out or lm_eval "
             "--output_path wrote.\n\n"
             "  axolotl-calib table --run DPO=eval/dpo --run TS=eval/dpo_ts --run CFT=outputs/llama_cft \\\n"
             "      --in calib_in_domain_pooled --out calib_arc_challenge --plots eval/compare")
    c.add_argument("--run", action="append", required=True, metavar="NAME=FOLDER",
                   help="a row: its name and folder (repeat, in row order)")
    c.add_argument("--in", "--in-domain", dest="in_task", default="calib_in_domain_pooled",
                   help="task of the in-domain columns")
    c.add_argument("--out", "--out-domain", dest="out_task", default="calib_arc_challenge",
                   help="task of the out-of-domain columns")
    c.add_argument("--json", default="calibration_table.json", help="where to write the table as JSON ('' = don't)")
    c.add_argument("--plots", default=None, metavar="DIR", help="also draw one comparison reliability diagram per "
                   "task from the runs' samples into DIR (default: no diagrams)")
    c.set_defaults(func=cmd_table)

    g = _sub(sub, "diagnose", "calibration metrics + calibratable / non-calibratable verdict",
             "conf-ECE / cw-ECE / accuracy of a model on one MCQ file (lm-eval task calib_jsonl) and our own, "
             "documented regime heuristic (axolotl_calib_plugin/regime.py: not from the paper).")
    g.add_argument("--model", required=True,
                   help="local HF model folder, or a peft adapter folder (adapter_config.json: loaded on its base model)")
    g.add_argument("--base-model", default=None, help="base model of an adapter folder (default: the adapter's own "
                   "base_model_name_or_path)")
    g.add_argument("--data", required=True, help="HELD-OUT MCQ JSONL: {question, choices, answer} per line")
    g.add_argument("--train-data", default=None,
                   help="the MCQ JSONL you would fine-tune on (default: none). Recommended: the decisive check "
                        "compares the model's accuracy there with its held-out accuracy")
    g.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    g.add_argument("--acc-star", type=float, default=None, help="known oracle accuracy acc* (default: unknown)")
    g.add_argument("--device", default=None, help="torch device (default: cpu)")
    g.add_argument("--dtype", default=None, help="model dtype (default: float32 on cpu, else auto)")
    g.add_argument("--batch-size", type=int, default=32, help="lm-eval batch size")
    g.add_argument("--tasks", default=None, help="lm-eval task folder (default: the one axolotl-calib tasks-path prints)")
    g.add_argument("--json", action="store_true", help="print one JSON line instead of the text verdict")
    g.set_defaults(func=cmd_diagnose)

    m = _sub(sub, "make-tiny", "write a local tiny Llama + tokenizer",
             "A tiny randomly initialised Llama and a BPE tokenizer trained locally (no hub), for trying configs on a CPU.")
    m.add_argument("--out", required=True, help="output folder")
    m.add_argument("--data", default=None, help="MCQ JSONL to train the tokenizer on (default: a built-in corpus)")
    m.add_argument("--hidden", type=int, default=64, help="hidden size")
    m.add_argument("--layers", type=int, default=2, help="number of layers")
    m.set_defaults(func=cmd_make_tiny)

    d = _sub(sub, "demo", "offline end-to-end reproduction (see README); --seeds N: the multi-seed study",
             "Offline miniature of the paper's Table 2 on a world with known truth, through the real axolotl train "
             "and lm_eval: base SFT -> DPO (the aligned arm), then temperature scaling, label smoothing, CFT and RCFT "
             "(lambda 0 and 1). --seeds runs the study: also the over-fine-tuned arm, a lambda sweep and the online "
             "E-step, with statistics over seeds.")
    d.add_argument("--out", default="demo_out", help="output folder")
    d.add_argument("--fast", action="store_true", help="small data, few steps, lambda 1 only (the test suite's variant)")
    d.add_argument("--seed", type=int, default=0, help="seed of the world and of every run (single-seed demo)")
    d.add_argument("--seeds", type=_seeds, default=None,
                   help="run the multi-seed study instead: a count N (seeds 0..N-1) or a comma list; every cell as "
                        "mean ± 95%% CI, paired differences, the λ curve (default: single seed)")
    d.add_argument("--world", choices=("topic", "sampled"), default="topic",
                   help="topic: hard labels, question text with learnable structure; sampled: the earlier world "
                        "whose answers are sampled afresh from p* per row")
    d.add_argument("--summary-dir", default=None,
                   help="where the study writes study.json, study.md and lambda_curve.png (default: --out)")
    d.add_argument("--parallel", type=_positive_int, default=2, help="training runs at a time (1 torch thread each)")
    d.add_argument("--fresh", action="store_true",
                   help="retrain everything (default: reuse a finished run whose config and code are unchanged)")
    d.set_defaults(func=cmd_demo)
    return ap


#: commands that only ever use local models and data: run them with the hub and telemetry off.
OFFLINE_COMMANDS = ("demo", "diagnose", "make-tiny")


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    _check_paths(ap, a)
    if a.cmd in OFFLINE_COMMANDS:
        _offline_env()
    from .rows import CalibDataError

    try:
        return int(a.func(a) or 0)
    except CalibDataError as e:  # bad rows: the message names file, line and field; a traceback adds nothing
        ap.exit(1, f"axolotl-calib {a.cmd}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
