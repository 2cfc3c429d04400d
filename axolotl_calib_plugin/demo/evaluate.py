"""The demo's evaluation step: several local models x several MCQ files, one lm-eval process.

Every evaluation is :func:`axolotl_calib_plugin.eval.evaluation.evaluate_files` (lm-eval's own evaluator with
the project's ``calib_jsonl`` / ``calib_jsonl_ood`` tasks); the demo needs the per-question option
log-likelihoods for the temperature-scaling fit, the preference-pair ratios and the reliability diagrams.

CLI (what the demo calls in a subprocess)::

    python -m axolotl_calib_plugin.demo.evaluate --out DIR --model NAME=PATH [--model ...] \
        --set in=eval_in.jsonl --set out=eval_out.jsonl [--set ts_fit=ts.jsonl:aligned] [--replies pref_eval.jsonl]

A set ``NAME=PATH:MODEL1,MODEL2`` is only evaluated for the listed models. Writes
``DIR/<model>__<set>.json`` (see :func:`axolotl_calib_plugin.eval.evaluation.evaluate_files`). ``--replies``:
the preference domain's held-out prompts; writes ``DIR/<model>__replies.json`` with the (n, K) log-likelihoods
of every candidate reply (:func:`axolotl_calib_plugin.eval.preference.candidate_logprobs`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from ..eval.evaluation import evaluate_files, find_task_dir, load_lm
from ..eval.preference import candidate_logprobs
from ..rows import read_jsonl


def write_json_atomic(path: str, obj) -> None:
    """``obj`` as JSON at ``path``, written to a temporary file first and renamed: an evaluation killed while
    writing leaves no truncated file that ``--only-missing`` would then take as done."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def outputs_to_write(out: str, model: str, sets: list[tuple[str, str, set | None]], replies: bool,
                     only_missing: bool) -> tuple[list[tuple[str, str]], bool]:
    """The (set name, path) pairs to evaluate for ``model`` and whether to score the replies; with
    ``only_missing``, those whose ``<model>__<name>.json`` exists are left out, so a model that lacks only its
    replies file is not re-evaluated on every set."""
    def missing(name: str) -> bool:
        return not only_missing or not os.path.exists(os.path.join(out, f"{model}__{name}.json"))

    todo = [(n, p) for n, p, only in sets if (only is None or model in only) and missing(n)]
    return todo, replies and missing("replies")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH")
    ap.add_argument("--set", action="append", required=True, help="NAME=PATH[:MODEL,...]")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--replies", default=None, help="preference-domain prompts with candidate replies (JSONL)")
    ap.add_argument("--tasks", default=None, help="lm_eval_tasks directory (default: this checkout's)")
    ap.add_argument("--only-missing", action="store_true",
                    help="skip every output file that already exists (a model with none missing is not loaded)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    task_dir = a.tasks or find_task_dir()
    os.makedirs(a.out, exist_ok=True)
    models = [m.split("=", 1) for m in a.model]
    sets = []
    for s in a.set:
        name, rest = s.split("=", 1)
        path, _, only = rest.partition(":")
        sets.append((name, path, set(only.split(",")) if only else None))
    for mname, mpath in models:
        todo, replies = outputs_to_write(a.out, mname, sets, bool(a.replies), a.only_missing)
        if not todo and not replies:
            continue
        lm = load_lm(mpath, a.batch_size)
        for i in range(0, len(todo), 2):
            chunk = todo[i:i + 2]
            results = evaluate_files(lm, [p for _, p in chunk], task_dir, a.batch_size)
            for (sname, spath), r in zip(chunk, results):
                r.update({"model": mname, "model_path": mpath, "set": sname, "file": os.path.abspath(spath)})
                write_json_atomic(os.path.join(a.out, f"{mname}__{sname}.json"), r)
                print(f"[eval] {mname:16s} {sname:7s} acc={r['metrics']['acc']:.4f} "
                      f"conf_ece={r['metrics']['conf_ece']:.4f} cw_ece={r['metrics']['cw_ece']:.4f}", flush=True)
        if replies:
            rows = read_jsonl(a.replies)
            ll = candidate_logprobs(lm, [r["prompt"] for r in rows], [r["replies"] for r in rows], where=a.replies)
            write_json_atomic(os.path.join(a.out, f"{mname}__replies.json"),
                              {"model": mname, "model_path": mpath, "file": os.path.abspath(a.replies),
                               "logliks": ll.tolist()})
        del lm
    return 0


if __name__ == "__main__":
    sys.exit(main())
