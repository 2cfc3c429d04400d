"""The per-token calibration columns: the contract between the dataset strategy and the trainer.

The MCQ strategy (:mod:`.mcq`) marks ONE token per sample, the answer position ``t*`` (the last prompt
token, whose next-token logits predict the option letter), in three int columns as long as
``input_ids``. They are per-token, not per-row, so that sample packing's concatenation keeps every
marker on its own token (a packed row then holds several answer positions).
"""

from __future__ import annotations

import torch

#: column -> its value away from ``t*`` (also the padding value of the collators).
#: ``calib_sample_id``: at t* a stable non-negative int63 id of the prompt tokens;
#: ``calib_answer_idx``: at t* the 0-based gold option; ``calib_num_options``: at t* the number K of options.
CALIB_COLUMNS: dict[str, int] = {"calib_sample_id": -1, "calib_answer_idx": -1, "calib_num_options": 0}

#: label value the SFT cross-entropy ignores (Hugging Face / Axolotl convention).
IGNORE_INDEX = -100


def answer_positions(sample_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, position) indices of every answer position (``calib_sample_id >= 0``) of a
    (B, T) per-token id tensor, in row-major order. Packed rows may hold several."""
    if sample_id.ndim != 2:
        raise ValueError(f"calib_sample_id must be a (batch, seq) per-token tensor, got {tuple(sample_id.shape)}")
    b, t = (sample_id >= 0).nonzero(as_tuple=True)
    return b, t
