"""Run the project's lm-eval tasks in-process and keep every question's option log-likelihoods.

One place that knows how to find the task folder, load a model for lm-eval and read its per-sample
output: the CLI (``axolotl-calib diagnose``) and the demo use it. It calls lm-eval's own evaluator
(``simple_evaluate``, ``HFLM`` backend) with a ``TaskManager`` whose include path is our task folder,
and returns, next to the tasks' own aggregate ``acc`` / ``conf_ece`` / ``cw_ece``, the K option-letter
log-likelihoods lm-eval computed for every question (for temperature scaling, reliability diagrams and
paired comparisons).
"""

from __future__ import annotations

import os
from typing import Sequence

#: in-domain files go to calib_jsonl, out-domain to calib_jsonl_ood: two tasks run in one evaluator call.
TASK_ENV = (("calib_jsonl", "CALIB_JSONL"), ("calib_jsonl_ood", "CALIB_JSONL_OOD"))
#: overrides where the ``lm_eval_tasks`` folder is looked for.
TASKS_ENV = "AXOLOTL_CALIB_TASKS"

__all__ = ["TASK_ENV", "TASKS_ENV", "evaluate_files", "find_task_dir", "load_lm", "samples_to_arrays"]


def find_task_dir() -> str:
    """The ``lm_eval_tasks`` directory (``$AXOLOTL_CALIB_TASKS``, else this checkout's, else the cwd's)."""
    env = os.environ.get(TASKS_ENV)
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    for up in (os.path.join(here, ".."), os.getcwd()):
        cand = os.path.abspath(os.path.join(up, "lm_eval_tasks"))
        if os.path.isdir(cand):
            return cand
    raise FileNotFoundError(f"cannot find the lm_eval_tasks directory; set {TASKS_ENV}=/path/to/lm_eval_tasks")


def samples_to_arrays(task_samples: list[dict]) -> dict:
    """lm-eval's logged samples of one task -> ``{logliks (n, K) lists, labels (n,), ids (n,)}`` in doc order."""
    samples = sorted(task_samples, key=lambda s: s["doc_id"])
    logliks, labels, ids = [], [], []
    for s in samples:
        resps = s["filtered_resps"]
        logliks.append([float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in resps])
        labels.append(int(s["doc"]["gold"]))
        ids.append(str(s["doc"].get("id", s["doc_id"])))
    return {"logliks": logliks, "labels": labels, "ids": ids}


def evaluate_files(lm, files: Sequence[str], task_dir: str, batch_size: int = 64) -> list[dict]:
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
        entry.update(samples_to_arrays(res["samples"][task]))
        out.append(entry)
    return out


def load_lm(path: str, batch_size: int = 64, tokenizer: str | None = None):
    """lm-eval's ``HFLM`` for a local model directory on CPU in float32.

    ``add_bos_token=True``: the model sees the BOS the tokenizer adds in training (Axolotl tokenizes
    with the tokenizer's own special tokens).
    """
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=path, tokenizer=tokenizer or path, dtype="float32", device="cpu", batch_size=batch_size,
                add_bos_token=True, trust_remote_code=False)
