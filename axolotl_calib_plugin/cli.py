"""``axolotl-calib``: the project's console script.

Subcommands::

    axolotl-calib demo --out DIR [--fast] [--seed N] [--reuse]
        the offline reproduction (world with known truth -> SFT -> DPO -> TS / LS / CFT / RCFT -> lm-eval)
    axolotl-calib diagnose --model PATH --data MCQ.jsonl [--tokenizer PATH] [--acc-star X] [--json]
        conf-ECE / cw-ECE / acc of a model on an MCQ set (lm-eval, calib_jsonl task) and the regime verdict
    axolotl-calib make-tiny --out DIR [--data MCQ.jsonl] [--hidden 64] [--layers 2]
        a local tiny Llama + tokenizer (no hub) for trying configs on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from .offline import OFFLINE_ENV


def _offline_env() -> None:
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def cmd_demo(a) -> int:
    from .demo.pipeline import StepFailed, print_summary, run_demo

    try:
        results = run_demo(a.out, fast=a.fast, seed=a.seed, reuse=a.reuse)
    except StepFailed as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    print_summary(results, os.path.abspath(a.out))
    return 1 if results["meta"]["errors"] else 0


def cmd_diagnose(a) -> int:
    from scipy.special import softmax

    from .evaluation import evaluate_files, find_task_dir, load_lm
    from .regime import diagnose

    lm = load_lm(a.model, a.batch_size, tokenizer=a.tokenizer)
    res = evaluate_files(lm, [a.data], a.tasks or find_task_dir(), a.batch_size)[0]
    probs = softmax(res["logliks"], axis=1)
    d = diagnose(probs, res["labels"], acc_star=a.acc_star)
    if a.json:
        out = d.as_dict()
        out["lm_eval"] = res["metrics"]
        print(json.dumps(out))  # one line, last on stdout (lm-eval may print notes before it)
    else:
        print(f"model {a.model} on {a.data} (lm-eval task calib_jsonl)")
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="axolotl-calib", description="Calibration-aware fine-tuning (CFT / RCFT) tools.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="offline end-to-end reproduction (see README)")
    d.add_argument("--out", default="demo_out")
    d.add_argument("--fast", action="store_true", help="small data, few steps (the test suite's variant)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--reuse", action="store_true", help="reuse models already trained in --out")
    d.set_defaults(func=cmd_demo)
    g = sub.add_parser("diagnose", help="calibration metrics + calibratable / non-calibratable verdict")
    g.add_argument("--model", required=True, help="local HF model directory")
    g.add_argument("--data", required=True, help="MCQ JSONL: {question, choices, answer} per line")
    g.add_argument("--tokenizer", default=None)
    g.add_argument("--acc-star", type=float, default=None, help="known oracle accuracy (optional)")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--tasks", default=None, help="lm_eval_tasks directory (default: this checkout's)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_diagnose)
    t = sub.add_parser("make-tiny", help="write a local tiny Llama + tokenizer")
    t.add_argument("--out", required=True)
    t.add_argument("--data", default=None, help="MCQ JSONL to train the tokenizer on (default: a built-in corpus)")
    t.add_argument("--hidden", type=int, default=64)
    t.add_argument("--layers", type=int, default=2)
    t.set_defaults(func=cmd_make_tiny)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    _offline_env()
    a = build_parser().parse_args(argv)
    return int(a.func(a) or 0)


if __name__ == "__main__":
    sys.exit(main())
