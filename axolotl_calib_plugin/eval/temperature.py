"""Temperature scaling (Guo et al., 2017): the post-hoc baseline of the paper's Table 2.

One scalar ``T > 0`` is fitted by minimising the negative log-likelihood of the held-out labels under
``softmax(logits / T)`` over the K option logits, then applied at evaluation time. Dividing by one
positive scalar never changes the argmax, so accuracy is unchanged by construction.

Differences from the authors' reference code (its ``inference_temperature.py``):
there the closure computes the NLL under ``no_grad`` and wraps it in a fresh ``requires_grad`` tensor,
so ``T`` receives no gradient and stays at its initial 1.5. Here the NLL is a differentiable function
of ``log T`` (optimised in log space, so ``T`` stays positive), LBFGS uses a strong-Wolfe line search,
and the fit is in float64. Log-probabilities work as well as logits: they differ by a per-row
constant, which the softmax ignores.

:func:`scale_samples` runs the baseline on lm-eval's logged samples of the ``calib_*`` tasks (their
per-question option log-likelihoods), with mixed option counts, for ``axolotl-calib temperature``. It fits
on in-domain tasks only unless told otherwise (an out-of-domain column scored with a T fitted on it would
not be out-of-domain), and marks every scored question that was also used to fit T.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..metrics import ArrayLike

__all__ = ["fit_temperature", "apply_temperature", "in_domain_tasks", "probs_to_logits", "nll", "pad_ragged_logits",
           "scale_samples", "softmax_rows", "temperature_report"]


def _logits_tensor(logits: ArrayLike) -> torch.Tensor:
    t = logits.detach().cpu() if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
    t = t.to(torch.float64)
    if t.ndim != 2 or t.shape[1] < 2 or t.shape[0] == 0:
        raise ValueError(f"logits must have shape (n, K) with n >= 1 and K >= 2, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("logits contain NaN or inf (use probs_to_logits for probabilities with zeros)")
    return t


def _labels_tensor(labels: ArrayLike, n: int, k: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels)).to(torch.int64)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {tuple(y.shape)}")
    if bool(((y < 0) | (y >= k)).any()):
        raise ValueError(f"labels must lie in [0, {k})")
    return y


def probs_to_logits(probs: ArrayLike, eps: float = 1e-12) -> np.ndarray:
    """log(probs) clipped at ``eps``: logits up to a per-row constant."""
    p = np.asarray(probs, dtype=np.float64)
    return np.log(np.clip(p, eps, 1.0))


def nll(logits: ArrayLike, labels: ArrayLike, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = _logits_tensor(logits)
    y = _labels_tensor(labels, *z.shape)
    return float(torch.nn.functional.cross_entropy(z / temperature, y))


def fit_temperature(logits: ArrayLike, labels: ArrayLike, init: float = 1.5, max_iter: int = 200,
                    bounds: tuple[float, float] = (1e-2, 1e2)) -> float:
    """The temperature minimising the held-out NLL of ``softmax(logits / T)``.

    ``logits``: (n, K) option logits or log-probabilities; ``labels``: (n,) gold indices.
    Returns a float in ``bounds`` (a model that is right on every sample wants T -> 0, one whose
    logits are pure noise wants T -> inf; the bounds keep those cases finite).
    """
    z = _logits_tensor(logits)
    y = _labels_tensor(labels, *z.shape)
    log_lo, log_hi = math.log(bounds[0]), math.log(bounds[1])
    log_t = torch.tensor([math.log(init)], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z * torch.exp(-log_t), y)
        loss.backward()
        return loss

    opt.step(closure)
    value = float(log_t.detach().clamp(log_lo, log_hi))
    if not math.isfinite(value):  # pragma: no cover - strong-Wolfe LBFGS on a 1-D convex problem
        value = math.log(init)
    return math.exp(value)


def apply_temperature(logits: ArrayLike, temperature: float) -> np.ndarray:
    """``softmax(logits / T)`` as a float64 numpy array (rows sum to 1; argmax unchanged)."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    z = _logits_tensor(logits)
    return torch.softmax(z / temperature, dim=1).numpy()


# ----------------------------------------------------------------------------------- lm-eval samples
#: how far below a row's smallest logit the missing options of a short row are put (mixed K): with
#: T <= 100 (the fit bounds) they get a probability below exp(-100) relative to the row's options.
RAGGED_GAP = 1e4


def pad_ragged_logits(rows, gap: float = RAGGED_GAP) -> np.ndarray:
    """Rows of K_i option logits (K varies, e.g. ARC's 3-5 options) -> (n, Kmax) finite array for
    :func:`fit_temperature`: short rows are padded ``gap`` below their smallest logit, so the padded
    options carry no probability at any temperature in the fit bounds."""
    rows = [np.asarray(r, dtype=np.float64) for r in rows]
    if not rows:
        raise ValueError("no logits rows")
    kmax = max(len(r) for r in rows)
    out = np.empty((len(rows), kmax), dtype=np.float64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        out[i, len(r):] = r.min() - gap
    return out


def softmax_rows(rows, temperature: float) -> list[list[float]]:
    """``softmax(row / T)`` of each row (each with its own K), as plain floats."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    out = []
    for r in rows:
        z = np.asarray(r, dtype=np.float64) / temperature
        e = np.exp(z - z.max())
        out.append((e / e.sum()).tolist())
    return out


#: the group whose suites are the paper's in-domain data; ``calib_jsonl`` reads the user's own in-domain file.
IN_DOMAIN_GROUP = "calib_in_domain"
IN_DOMAIN_FILE_TASK = "calib_jsonl"


def in_domain_tasks(index: dict | None = None) -> list[str]:
    """Tasks of our folder that read in-domain data only (every suite among :data:`IN_DOMAIN_GROUP`'s, or
    the user's ``calib_jsonl`` file): what temperature scaling fits on by default."""
    from .evaluation import task_index, task_suites

    index = index if index is not None else task_index()
    suites = set(task_suites(IN_DOMAIN_GROUP, index)) | {IN_DOMAIN_FILE_TASK}
    return sorted(n for n, e in index.items() if e["kind"] == "task" and set(task_suites(n, index)) <= suites)


def _question_key(task: str, item: dict) -> tuple:
    """One scored question of one evaluation: the same task, document, answer and option log-likelihoods
    (a copy of a samples file, or the same file reached through a folder, gives the same keys; another
    data file or another model does not)."""
    return task, int(item["doc_id"]), int(item["gold"]), tuple(float(v) for v in item["logliks"])


def scale_samples(fit: dict, apply: dict, fit_fraction: float = 1.0, seed: int = 0,
                  fit_tasks: Sequence[str] | None = None) -> dict:
    """Temperature scaling of lm-eval samples (the paper's Table 2 baseline, Sec. 6 of the paper).

    ``fit`` / ``apply``: ``{samples file: items}`` (files named ``samples_<task>_<time>.jsonl``) with items
    ``{"doc_id", "probs", "gold", "logliks"}`` as :func:`axolotl_calib_plugin.eval.samples.read_samples` returns
    them. One T is fitted by NLL on the ``logliks`` of the ``fit`` items of ``fit_tasks`` (default:
    :func:`in_domain_tasks`; files of other tasks are left out and listed in ``fit["excluded"]``). With
    ``fit_fraction < 1`` only a seeded random fraction of each fit file is used. An ``apply`` file is scored
    on its questions that were not fitted (the authors fit on a random 10 % of the evaluation split and
    report the other 90 %); a file whose every question was fitted is scored on all of them and marked
    ``held_out: False`` (in-sample), never passed off as held-out.

    Returns ``{"temperature", "fit": {...}, "apply": {path: {"items": scaled items, "before": items,
    "held_out", "n_fitted", ...}}}``; scaled items carry ``probs = softmax(logliks / T)`` and ``logliks / T``.
    """
    from .samples import samples_task

    if not 0 < fit_fraction <= 1:
        raise ValueError(f"fit fraction must be in (0, 1], got {fit_fraction}")
    allowed = set(in_domain_tasks() if fit_tasks is None else fit_tasks)
    rng = np.random.default_rng(seed)
    fit_items, fitted_keys, used, excluded = [], set(), [], {}
    for path, items in fit.items():
        task = samples_task(path)
        if task not in allowed:
            excluded[path] = task
            continue
        if any(not it["logliks"] for it in items):
            raise ValueError(f"{path}: samples carry no 'logliks' (written by an older calib task?); cannot fit T")
        idx = range(len(items))
        if fit_fraction < 1:
            k = max(1, int(round(fit_fraction * len(items))))
            idx = sorted(rng.choice(len(items), size=k, replace=False).tolist())
        chosen = [items[i] for i in idx]
        fit_items += chosen
        fitted_keys |= {_question_key(task, it) for it in chosen}
        used.append(path)
    if not fit_items:
        found = sorted(set(excluded.values()))
        raise ValueError(f"no samples of a task to fit T on: found {', '.join(found) or 'none'}, fitting on "
                         f"{', '.join(sorted(allowed)) or 'none'} (pass --fit-tasks to fit on other tasks)")
    logits = pad_ragged_logits([it["logliks"] for it in fit_items])
    labels = np.array([it["gold"] for it in fit_items], dtype=np.int64)
    t = fit_temperature(logits, labels)
    result = {"temperature": t, "fit": {"files": used, "n": len(fit_items), "fraction": fit_fraction, "seed": seed,
                                        "tasks": sorted({samples_task(f) for f in used}), "excluded": excluded,
                                        "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, t)},
              "apply": {}}
    for path, items in apply.items():
        if any(not it["logliks"] for it in items):
            raise ValueError(f"{path}: samples carry no 'logliks'; cannot apply T")
        task = samples_task(path)
        unseen = [it for it in items if _question_key(task, it) not in fitted_keys]
        n_fitted = len(items) - len(unseen)
        before = unseen or list(items)
        probs = softmax_rows([it["logliks"] for it in before], t)
        scaled = [{**it, "probs": p, "logliks": [v / t for v in it["logliks"]]} for it, p in zip(before, probs)]
        result["apply"][path] = {"items": scaled, "before": before, "n_fitted": n_fitted, "held_out": bool(unseen),
                                 "held_out_only": bool(unseen) and n_fitted > 0, "overlaps_fit": not unseen}
    return result


def temperature_bound_note(t: float, n: int, bounds: tuple[float, float] = (1e-2, 1e2)) -> str | None:
    """A sentence when the fitted T sits on a bound of the fit (then T is the bound, not an estimate: one question,
    or questions all right or all wrong, carry no temperature), else None."""
    import math

    lo, hi = bounds
    for edge, what in ((lo, "near one-hot: the fitted questions were all answered right, or nearly"),
                       (hi, "near uniform: the fitted questions look like noise to the model, e.g. all wrong")):
        if abs(math.log(t) - math.log(edge)) < 1e-6:
            return (f"T = {t:g} is the fit's bound, not an estimate (probabilities {what}; {n} question(s) fitted). "
                    "Fit on more questions (a larger --fit-fraction) that the model gets both right and wrong")
    return None


def temperature_report(res: dict, output_dir: str | None = None, plot_format: str = "png") -> dict:
    """The text of ``axolotl-calib temperature`` for a :func:`scale_samples` result (T, one row per scored task:
    before / after, held-out or in-sample) and, with ``output_dir``, the folder ``axolotl-calib table`` reads:
    ``calibration_report.{md,json}``, the scaled samples in lm-eval's layout and a before/after diagram per task.
    Returns ``{"temperature", "text", "report": the Markdown report's path or None, "meta"}``."""
    import json
    import os

    from .compare import metrics_of_items
    from .samples import sample_record, samples_task, stack_items

    t, f = res["temperature"], res["fit"]
    bound = f.get("bound_warning") or temperature_bound_note(t, f["n"])
    text = [f"T = {t:.4f}  (fitted by NLL on {f['n']} questions of {len(f['files'])} file(s), tasks "
            f"{', '.join(f['tasks'])}; NLL {f['nll_before']:.4f} -> {f['nll_after']:.4f})"]
    text += [f"WARNING: {bound}"] if bound else []
    text += [
            "| task | n | scored on | acc | conf-ECE before | conf-ECE after | cw-ECE before | cw-ECE after |",
            "|---|---:|---|---:|---:|---:|---:|---:|"]
    summary, items, notes = {}, {}, []
    for path, r in res["apply"].items():
        task = samples_task(path)
        before = metrics_of_items(r["before"])
        after = metrics_of_items(r["items"])
        summary[task] = {"kind": "task", "acc": after["accuracy"], "conf_ece": after["conf_ece"],
                         "cw_ece": after["cw_ece"], "n": len(r["items"]), "held_out": r["held_out"],
                         "n_fitted": r["n_fitted"],
                         "before": {"acc": before["accuracy"], "conf_ece": before["conf_ece"], "cw_ece": before["cw_ece"]},
                         "source": os.path.abspath(path)}
        items[task] = r["items"]
        if r["held_out_only"]:
            notes.append(f"{task}: scored on the {len(r['items'])} questions not used to fit T")
        elif not r["held_out"]:
            notes.append(f"{task}: IN-SAMPLE, not held-out: T was fitted on all {len(r['items'])} of these questions "
                         "(use --fit-fraction < 1 to hold some out)")
        text.append(f"| {task} | {len(r['items'])} | {'held-out' if r['held_out'] else 'FITTED (in-sample)'} | "
                    f"{after['accuracy']:.4f} | {before['conf_ece']:.4f} | {after['conf_ece']:.4f} | "
                    f"{before['cw_ece']:.4f} | {after['cw_ece']:.4f} |")
    text += [f"* {n}" for n in notes]
    meta = {"temperature": t, "temperature_at_bound": bool(bound), "fit_files": f["files"], "fit_tasks": f["tasks"], "fit_questions": f["n"],
            "fit_fraction": f["fraction"], "seed": f["seed"], "nll_before": f["nll_before"], "nll_after": f["nll_after"]}
    out = {"temperature": t, "text": "\n".join(text), "report": None, "meta": meta}
    if output_dir:
        from datetime import datetime

        from .plots import plot_comparison
        from .report import write_report

        paths = write_report(output_dir, summary, items, title=f"temperature scaling (T = {t:.4f})", meta=meta,
                             notes=([f"WARNING: {bound}"] if bound else []) + notes, plot_format=plot_format)
        # lm-eval's samples layout (its EvaluationTracker's file name and date stamp), so `table` can pair the
        # questions. Written here: EvaluationTracker.save_results_samples wants lm-eval's own request fields
        # (arguments, resps, target), which temperature-scaled probabilities do not have.
        stamp = datetime.now().isoformat().replace(":", "-")
        for path, r in res["apply"].items():
            task = samples_task(path)
            with open(os.path.join(output_dir, f"samples_{task}_{stamp}.jsonl"), "w", encoding="utf-8") as fh:
                for it in r["items"]:
                    fh.write(json.dumps(sample_record(it)) + "\n")
            plot_comparison({"before": stack_items(r["before"]), f"T = {t:.3f}": stack_items(r["items"])},
                            os.path.join(output_dir, f"reliability_before_after_{task}.{plot_format}"),
                            title=f"temperature scaling: {task}")
        out["report"] = paths["md"]
    return out
