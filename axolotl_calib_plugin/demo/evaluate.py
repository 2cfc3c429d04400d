"""Evaluate local models with lm-eval and the project's ``calib_jsonl`` / ``calib_jsonl_ood`` tasks.

Runs ``lm_eval.simple_evaluate`` (lm-eval's own evaluator, ``HFLM`` backend) with
``--include_path lm_eval_tasks``-equivalent task discovery and ``log_samples``, and keeps, for every
question, the K option-letter log-likelihoods lm-eval computed (``filtered_resps``) next to the task's
own aggregate ``acc`` / ``conf_ece`` / ``cw_ece``. The demo needs the per-question numbers for the
temperature-scaling fit, the preference-pair ratios and the reliability diagrams.

CLI (what the demo calls in a subprocess)::

    python -m axolotl_calib_plugin.demo.evaluate --out DIR --model NAME=PATH [--model ...] \
        --set in=eval_in.jsonl --set out=eval_out.jsonl [--set ts_fit=ts.jsonl:aligned]

A set ``NAME=PATH:MODEL1,MODEL2`` is only evaluated for the listed models. Writes
``DIR/<model>__<set>.json`` (see :func:`evaluate_model`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

#: in-domain files go to calib_jsonl, out-domain to calib_jsonl_ood: two tasks run in one evaluator call.
TASK_ENV = (("calib_jsonl", "CALIB_JSONL"), ("calib_jsonl_ood", "CALIB_JSONL_OOD"))


def find_task_dir() -> str:
    """The ``lm_eval_tasks`` directory of this checkout (or ``$AXOLOTL_CALIB_TASKS``)."""
    env = os.environ.get("AXOLOTL_CALIB_TASKS")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    for up in (os.path.join(here, "..", ".."), os.getcwd()):
        cand = os.path.abspath(os.path.join(up, "lm_eval_tasks"))
        if os.path.isdir(cand):
            return cand
    raise FileNotFoundError("cannot find the lm_eval_tasks directory; set AXOLOTL_CALIB_TASKS=/path/to/lm_eval_tasks")


def _extract(task_samples: list[dict]) -> dict:
    samples = sorted(task_samples, key=lambda s: s["doc_id"])
    logliks, labels, ids = [], [], []
    for s in samples:
        resps = s["filtered_resps"]
        logliks.append([float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in resps])
        labels.append(int(s["doc"]["gold"]))
        ids.append(str(s["doc"].get("id", s["doc_id"])))
    return {"logliks": logliks, "labels": labels, "ids": ids}


def evaluate_model(lm, files: Sequence[str], task_dir: str, batch_size: int = 64) -> list[dict]:
    """Evaluate one loaded ``HFLM`` on up to two MCQ JSONL files in ONE ``simple_evaluate`` call.

    Returns, per file, ``{"metrics": {acc, conf_ece, cw_ece} (lm-eval's aggregates), "logliks": (n, K)
    full-vocabulary log-likelihoods of the option letters, "labels": (n,), "ids": (n,)}``.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    if not 1 <= len(files) <= len(TASK_ENV):
        raise ValueError(f"one or two files per call, got {len(files)}")
    tasks = []
    for (task, env), path in zip(TASK_ENV, files):
        os.environ[env] = os.path.abspath(path)
        tasks.append(task)
    tm = TaskManager(include_path=task_dir, include_defaults=False)
    res = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=tm, log_samples=True, batch_size=batch_size,
                                  num_fewshot=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                  fewshot_random_seed=0)
    out = []
    for task in tasks:
        r = res["results"][task]
        entry = {"metrics": {m: float(r[f"{m},none"]) for m in ("acc", "conf_ece", "cw_ece")}}
        entry.update(_extract(res["samples"][task]))
        out.append(entry)
    return out


def load_lm(path: str, batch_size: int = 64):
    from lm_eval.models.huggingface import HFLM

    # add_bos_token: the tiny tokenizer's post-processor adds <s>, exactly as Axolotl tokenized in training.
    return HFLM(pretrained=path, tokenizer=path, dtype="float32", device="cpu", batch_size=batch_size,
                add_bos_token=True, trust_remote_code=False)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH")
    ap.add_argument("--set", action="append", required=True, help="NAME=PATH[:MODEL,...]")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--tasks", default=None, help="lm_eval_tasks directory (default: this checkout's)")
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
        lm = load_lm(mpath, a.batch_size)
        todo = [(n, p) for n, p, only in sets if only is None or mname in only]
        for i in range(0, len(todo), 2):
            chunk = todo[i:i + 2]
            results = evaluate_model(lm, [p for _, p in chunk], task_dir, a.batch_size)
            for (sname, spath), r in zip(chunk, results):
                r.update({"model": mname, "model_path": mpath, "set": sname, "file": os.path.abspath(spath)})
                with open(os.path.join(a.out, f"{mname}__{sname}.json"), "w", encoding="utf-8") as f:
                    json.dump(r, f)
                print(f"[eval] {mname:16s} {sname:7s} acc={r['metrics']['acc']:.4f} "
                      f"conf_ece={r['metrics']['conf_ece']:.4f} cw_ece={r['metrics']['cw_ece']:.4f}", flush=True)
        del lm
    return 0


if __name__ == "__main__":
    sys.exit(main())
