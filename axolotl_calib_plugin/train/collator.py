"""Collators that carry the per-token ``calib_*`` columns, with and without sample packing.

Axolotl's ``DataCollatorForSeq2Seq`` pads only ``labels`` and ``position_ids`` by hand and leaves
the rest to ``tokenizer.pad``, which pads only the tokenizer's model inputs. Extra per-token
columns therefore break it (checked on 0.19.0): rows of different lengths raise "Unable to create
tensor ... (`calib_sample_id` in this case)", and a single row comes back shorter than the padded
``input_ids``. So the columns are taken out before Axolotl pads and put back afterwards, padded
to the final ``input_ids`` width on the tokenizer's padding side with the values of
:data:`axolotl_calib_plugin.train.columns.CALIB_COLUMNS` (``-1`` ids/answers, ``0`` options).

The packing collators (``V2BatchSamplerDataCollatorForSeq2Seq`` and the older
``BatchSamplerDataCollatorForSeq2Seq``) concatenate every column of the samples of a bin before
calling the base ``__call__``; per-token columns concatenate correctly (each marker stays on its own
``t*`` token), so the packing variants only add the same pad step through the MRO:
``CalibV2...`` -> ``V2BatchSampler...`` (concatenate) -> ``CalibDataCollatorForSeq2Seq`` (pad ours)
-> ``DataCollatorForSeq2Seq``.

A plugin collator replaces ALL of Axolotl's collator choices (``build_collator``), so
:func:`select_collator_cls` reproduces its packing / non-packing choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from axolotl.utils.collators.batching import (
    BatchSamplerDataCollatorForSeq2Seq,
    DataCollatorForSeq2Seq,
    V2BatchSamplerDataCollatorForSeq2Seq,
)

from .columns import CALIB_COLUMNS


def pad_calib_columns(columns: Mapping[str, Sequence[Sequence[int]]], length: int, padding_side: str = "right"
                      ) -> dict[str, torch.Tensor]:
    """Pad each calib column (a list of per-row int sequences) to ``length``: ``(B, length)`` int64."""
    out = {}
    for name, rows in columns.items():
        fill = CALIB_COLUMNS[name]
        t = torch.full((len(rows), length), fill, dtype=torch.long)
        for i, row in enumerate(rows):
            row = torch.as_tensor(np.asarray(row, dtype=np.int64))
            n = row.shape[0]
            if n > length:
                raise ValueError(f"{name} row {i} has {n} tokens but the padded batch is only {length} wide")
            if padding_side == "left":
                t[i, length - n:] = row
            else:
                t[i, :n] = row
        out[name] = t
    return out


@dataclass
class CalibDataCollatorForSeq2Seq(DataCollatorForSeq2Seq):
    """Axolotl's padding collator plus the calib_* per-token columns."""

    def __call__(self, features, return_tensors=None):
        present = [c for c in CALIB_COLUMNS if features and c in features[0]]
        if not present:
            return super().__call__(features, return_tensors=return_tensors)
        features = [dict(f) for f in features]
        columns = {c: [f.pop(c) for f in features] for c in present}
        for c, rows in columns.items():
            for i, (row, f) in enumerate(zip(rows, features)):
                if len(row) != len(f["input_ids"]):
                    raise ValueError(
                        f"{c} has {len(row)} entries but input_ids has {len(f['input_ids'])} in batch row {i}: the "
                        "per-token calibration columns were cut out of sync with the tokens (a truncation step "
                        "that only knows Axolotl's own columns?)"
                    )
        batch = super().__call__(features, return_tensors=return_tensors)
        width = batch["input_ids"].shape[-1]
        padded = pad_calib_columns(columns, width, self.tokenizer.padding_side)
        for c, t in padded.items():
            batch[c] = t if (return_tensors or self.return_tensors) == "pt" else t.numpy()
        return batch


@dataclass
class CalibV2BatchSamplerDataCollatorForSeq2Seq(V2BatchSamplerDataCollatorForSeq2Seq, CalibDataCollatorForSeq2Seq):
    """Sample packing (flex attention / supported multipack models): concatenate, then pad ours."""


@dataclass
class CalibBatchSamplerDataCollatorForSeq2Seq(BatchSamplerDataCollatorForSeq2Seq, CalibDataCollatorForSeq2Seq):
    """Sample packing for models outside Axolotl's multipack list: concatenate, then pad ours."""


def select_collator_cls(cfg: Mapping[str, Any], is_eval: bool = False) -> type:
    """The calib variant of the collator Axolotl's ``build_collator`` would have picked."""
    packing = bool(cfg.get("eval_sample_packing")) if is_eval else bool(cfg.get("sample_packing"))
    if not packing:
        return CalibDataCollatorForSeq2Seq
    from axolotl.monkeypatch.multipack import SUPPORTED_MULTIPACK_MODEL_TYPES

    attn = cfg.get("attn_implementation")
    model_type = cfg.get("model_config_type")
    if (
        attn == "flex_attention"
        or model_type in SUPPORTED_MULTIPACK_MODEL_TYPES
        or (model_type == "llama" and attn != "flash_attention_2")
    ):
        return CalibV2BatchSamplerDataCollatorForSeq2Seq
    return CalibBatchSamplerDataCollatorForSeq2Seq
