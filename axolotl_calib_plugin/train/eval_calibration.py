"""Calibration metrics of a whole evaluation during training (``eval_calib/*``): conf-ECE, cw-ECE and accuracy
of the eval split, the split of its prompts into target and report rows, and figure logging.

The evaluation forwards already compute every answer position's option logits (the trainer reads them
for the ECE term); their softmax is collected per micro-batch and, at the end of the evaluation loop,
gathered over ranks and scored ONCE over the whole eval set with the metrics core (never an average of
per-batch ECEs, which is not the ECE of the set). Distributed evaluation pads the last batches with
repeated samples; those repeats are dropped by keeping, for every (prompt, gold) pair, only as many rows
as the eval dataset holds.

Held-out means never fitted. When the M-step reads held-out rows (``calib_bin_accuracy: heldout``,
``calib_targets: temperature``), the eval split's prompts are split by sample id into TARGET rows, which set the
targets, and REPORT rows, which never do (:func:`target_sample_ids`): ``eval_calib/*`` is scored on the report rows
only, and the target rows' numbers are logged as ``eval_calib_fit/*`` (a diagnostic of the fit: the M-step pulls the
model toward exactly those rows' accuracies, so their ECE is optimistic).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Optional

import numpy as np
import torch

from .. import metrics
from .distributed import all_gather_rows, dist_info

__all__ = ["DEFAULT_TARGET_FRACTION", "FEW_SPLIT_ROWS", "TargetSplitError", "calibration_values", "held_out_metrics",
           "held_out_rows", "missing_entries", "target_sample_ids"]

#: default ``calib_target_fraction``: the share of the eval split's prompts that set the targets
DEFAULT_TARGET_FRACTION = 0.5
#: fewer prompts than this in either half of the eval split: a warning (the half's numbers rest on a handful of rows)
FEW_SPLIT_ROWS = 20


class TargetSplitError(ValueError):
    """The eval split cannot be split into target and report rows (one half would be empty)."""


def target_sample_ids(sample_ids, fraction: float) -> np.ndarray:
    """Sorted unique sample ids of the eval prompts that set the targets: the ``round(fraction * U)`` of the U distinct
    prompts with the smallest sample ids (a sample id is a blake2b digest of the prompt's tokens, so this is a
    deterministic pseudo-random draw that depends on the prompts only: the same rows on every rank, in every
    evaluation, and in the M-step's own forward). Rows sharing a prompt share its half. ``fraction`` 1: every prompt
    (no report rows). :class:`TargetSplitError` when a half would be empty."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (0 < fraction <= 1):
        raise TargetSplitError(f"calib_target_fraction must be a number in (0, 1], got {fraction!r}")
    uniq = np.unique(np.asarray(sample_ids, dtype=np.int64))
    n_target = int(math.floor(fraction * len(uniq) + 0.5))
    if fraction >= 1:
        n_target = len(uniq)
    if n_target == 0 or (fraction < 1 and n_target == len(uniq)):
        raise TargetSplitError(
            f"calib_target_fraction: {fraction} splits the eval split's {len(uniq)} distinct prompt(s) into "
            f"{n_target} target and {len(uniq) - n_target} report prompt(s): one half is empty, so "
            + ("no row could set a target" if n_target == 0 else "no row is left to report held-out calibration on")
            + ". Add rows to the eval split (test_datasets or a larger val_set_size), or set calib_target_fraction: 1 "
            "(every eval row sets targets; eval_calib/* is then not logged, only eval_calib_fit/*).")
    return uniq[:n_target]


def missing_entries(data, ids: torch.Tensor, gold: torch.Tensor) -> np.ndarray:
    """Answer positions of ``data`` (an ``EStepData`` of the eval dataset) that the collected rows (``ids``, ``gold``)
    do not cover, counting repeated (prompt, gold) pairs: what an evaluation left out (sample packing's eval
    sampler drops its last partial pack)."""
    seen = Counter(zip(ids.tolist(), gold.tolist()))
    out = []
    for e, key in enumerate(zip(data.sample_id.tolist(), data.answer_idx.tolist())):
        if seen[key] > 0:
            seen[key] -= 1
        else:
            out.append(e)
    return np.asarray(out, dtype=np.int64)


def calibration_values(probs: np.ndarray, labels: np.ndarray, num_options: np.ndarray) -> dict:
    """``{"conf_ece", "cw_ece", "acc", "n"}`` of some eval rows, through the metrics core (10 bins)."""
    m = metrics.calibration_metrics(probs, labels, metrics.DEFAULT_N_BINS, num_options=num_options)
    return {"conf_ece": m["conf_ece"], "cw_ece": m["cw_ece"], "acc": m["accuracy"], "n": int(len(labels))}


def _cat(parts: list, width: int) -> tuple[torch.Tensor, ...]:
    if not parts:
        return (torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                torch.zeros(0, width, dtype=torch.float32))
    ids = torch.cat([p[0].detach().cpu().to(torch.int64) for p in parts])
    gold = torch.cat([p[1].detach().cpu().to(torch.int64) for p in parts])
    k = torch.cat([p[2].detach().cpu().to(torch.int64) for p in parts])
    probs = torch.cat([torch.nn.functional.pad(p[3].detach().cpu().float(), (0, width - p[3].shape[1])) for p in parts])
    return ids, gold, k, probs


def _drop_padding_repeats(ids: torch.Tensor, gold: torch.Tensor, dataset) -> np.ndarray:
    """Row mask keeping at most as many rows per (sample id, gold) as ``dataset`` holds."""
    from .estep import EStepData

    data = EStepData(dataset)
    budget = Counter(zip(data.sample_id.tolist(), data.answer_idx.tolist()))
    keep = np.zeros(len(ids), dtype=bool)
    for i, key in enumerate(zip(ids.tolist(), gold.tolist())):
        if budget[key] > 0:
            budget[key] -= 1
            keep[i] = True
    return keep


def held_out_rows(parts: list, width: int, device, dataset=None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sample ids, golds, option counts, probs)`` of the collected ``parts`` over all ranks, padding repeats
    dropped. A collective under torch.distributed: every rank calls it at the end of the same evaluation."""
    ids, gold, k, probs = _cat(parts, width)
    _, world = dist_info()
    if world > 1:
        ids, gold, k, probs = (all_gather_rows(t, device) for t in (ids, gold, k, probs))
        if dataset is not None and "calib_sample_id" in getattr(dataset, "column_names", ()):
            keep = torch.from_numpy(_drop_padding_repeats(ids, gold, dataset))
            ids, gold, k, probs = ids[keep], gold[keep], k[keep], probs[keep]
    return ids, gold, k, probs


def held_out_metrics(parts: list, width: int, device, dataset=None
                     ) -> Optional[tuple[dict, np.ndarray, np.ndarray, np.ndarray]]:
    """``({"conf_ece", "cw_ece", "acc", "n"}, probs (n, width), labels (n,), option counts (n,))`` of the collected
    ``parts`` = [(sample ids, golds, option counts, probs), ...] over all ranks, or None without rows.

    A collective under torch.distributed: every rank calls it at the end of the same evaluation.
    """
    ids, gold, k, probs = held_out_rows(parts, width, device, dataset)
    if ids.numel() == 0:
        return None
    p, y = probs.double().numpy(), gold.numpy()
    return calibration_values(p, y, k.numpy()), p, y, k.numpy()


def _image_loggers(callbacks) -> list:
    """The trainer's callbacks that can show an image now: TensorBoard with an open writer, W&B with a run."""
    out = []
    for cb in callbacks:
        name = type(cb).__name__
        if name == "TensorBoardCallback" and getattr(cb, "tb_writer", None) is not None:
            out.append(cb)
        elif name == "WandbCallback" and getattr(cb, "_wandb", None) is not None and cb._wandb.run is not None:
            out.append(cb)
    return out


def has_image_logger(callbacks) -> bool:
    """True when :func:`log_figure` would send a figure anywhere (so a figure is worth drawing)."""
    return bool(_image_loggers(callbacks))


def log_figure(callbacks, key: str, fig, path: str, step: int) -> None:
    """Send a matplotlib figure to the trainer's image-capable loggers: TensorBoard (``add_figure`` on the
    ``TensorBoardCallback``'s writer) and W&B (``wandb.Image`` of the saved PNG, when a run is active).

    ``key`` is named like a ``trainer.log`` key (``eval_calib/reliability``, ``calib/bins``); images bypass
    HF's ``on_log``, so the tag is rewritten here with HF's own ``rewrite_logs`` (``eval/calib/reliability``,
    ``train/calib/bins``) to sit next to the scalars of the same name."""
    from transformers.integrations.integration_utils import rewrite_logs

    tag = next(iter(rewrite_logs({key: None})))
    for cb in _image_loggers(callbacks):
        if type(cb).__name__ == "TensorBoardCallback":
            cb.tb_writer.add_figure(tag, fig, global_step=step, close=False)
            cb.tb_writer.flush()
        else:
            cb._wandb.log({tag: cb._wandb.Image(path)}, commit=False)
