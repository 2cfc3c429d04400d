"""Held-out calibration during training: conf-ECE, cw-ECE and accuracy of a whole evaluation.

The evaluation forwards already compute every answer position's option logits (the trainer reads them
for the ECE term); their softmax is collected per micro-batch and, at the end of the evaluation loop,
gathered over ranks and scored ONCE over the whole eval set with the metrics core (never an average of
per-batch ECEs, which is not the ECE of the set). Distributed evaluation pads the last batches with
repeated samples; those repeats are dropped by keeping, for every (prompt, gold) pair, only as many rows
as the eval dataset holds.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

import numpy as np
import torch

from .. import metrics
from .distributed import all_gather_rows, dist_info

__all__ = ["held_out_metrics"]


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


def held_out_metrics(parts: list, width: int, device, dataset=None
                     ) -> Optional[tuple[dict, np.ndarray, np.ndarray, np.ndarray]]:
    """``({"conf_ece", "cw_ece", "acc", "n"}, probs (n, width), labels (n,), option counts (n,))`` of the collected
    ``parts`` = [(sample ids, golds, option counts, probs), ...] over all ranks, or None without rows.

    A collective under torch.distributed: every rank calls it at the end of the same evaluation.
    """
    ids, gold, k, probs = _cat(parts, width)
    _, world = dist_info()
    if world > 1:
        ids, gold, k, probs = (all_gather_rows(t, device) for t in (ids, gold, k, probs))
        if dataset is not None and "calib_sample_id" in getattr(dataset, "column_names", ()):
            keep = torch.from_numpy(_drop_padding_repeats(ids, gold, dataset))
            ids, gold, k, probs = ids[keep], gold[keep], k[keep], probs[keep]
    if ids.numel() == 0:
        return None
    p = probs.double().numpy()
    y = gold.numpy()
    m = metrics.calibration_metrics(p, y, metrics.DEFAULT_N_BINS, num_options=k.numpy())
    values = {"conf_ece": m["conf_ece"], "cw_ece": m["cw_ece"], "acc": m["accuracy"],
              "n": int(len(y))}
    return values, p, y, k.numpy()


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
