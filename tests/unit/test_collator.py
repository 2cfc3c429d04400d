"""Collators for the per-token calib_* columns (``axolotl_calib_plugin.collator``), without and with
sample packing. The packing case goes through Axolotl's real path: ``load_cfg`` -> ``load_datasets``
(tokenize, drop, add position_ids) -> ``setup_model_and_trainer`` (our plugin picks the collator) ->
``trainer.get_train_dataloader()`` (MultipackBatchSampler + our V2 collator)."""

from __future__ import annotations

import pytest

from helpers import letter_ids
import torch

from axolotl_calib_plugin.train.columns import CALIB_COLUMNS


def _features():
    """Three tokenized rows of different lengths, one marker each (t* = 2, 4, 1)."""
    rows = []
    for n, t, sid, gold, k in [(5, 2, 11, 1, 4), (7, 4, 22, 0, 2), (3, 1, 33, 2, 3)]:
        row = {"input_ids": list(range(10, 10 + n)), "attention_mask": [1] * n, "labels": [-100] * (t + 1) + [7] * (n - t - 1)}
        for col, fill in CALIB_COLUMNS.items():
            row[col] = [fill] * n
        row["calib_sample_id"][t], row["calib_answer_idx"][t], row["calib_num_options"][t] = sid, gold, k
        rows.append(row)
    return rows


def test_axolotl_collator_alone_cannot_batch_the_columns(tiny_tokenizer):
    """Why the plugin ships a collator: Axolotl 0.19's pads labels/position_ids only."""
    from axolotl.utils.collators.batching import DataCollatorForSeq2Seq

    with pytest.raises(ValueError, match="calib_"):
        DataCollatorForSeq2Seq(tiny_tokenizer, padding=True, return_tensors="pt")(_features())


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_matches_input_ids_width_and_keeps_markers(tiny_tokenizer, side, monkeypatch):
    from axolotl_calib_plugin.train.collator import CalibDataCollatorForSeq2Seq

    monkeypatch.setattr(tiny_tokenizer, "padding_side", side)
    feats = _features()
    batch = CalibDataCollatorForSeq2Seq(tiny_tokenizer, padding=True, pad_to_multiple_of=8, return_tensors="pt")(feats)
    assert batch["input_ids"].shape == (3, 8)
    for col, fill in CALIB_COLUMNS.items():
        assert batch[col].shape == batch["input_ids"].shape and batch[col].dtype == torch.long
    for i, f in enumerate(feats):
        n = len(f["input_ids"])
        sl = slice(0, n) if side == "right" else slice(8 - n, 8)
        pad = slice(n, 8) if side == "right" else slice(0, 8 - n)
        assert batch["input_ids"][i, sl].tolist() == f["input_ids"]
        for col, fill in CALIB_COLUMNS.items():
            assert batch[col][i, sl].tolist() == f[col]  # markers stay aligned with their tokens
            assert (batch[col][i, pad] == fill).all()
    assert batch["calib_sample_id"][batch["calib_sample_id"] >= 0].tolist() == [11, 22, 33]
    assert feats[0]["calib_sample_id"] == [-1, -1, 11, -1, -1]  # caller's features untouched


def test_rows_without_calib_columns_pass_through(tiny_tokenizer):
    from axolotl_calib_plugin.train.collator import CalibDataCollatorForSeq2Seq

    feats = [{k: v for k, v in f.items() if k not in CALIB_COLUMNS} for f in _features()]
    batch = CalibDataCollatorForSeq2Seq(tiny_tokenizer, padding=True, return_tensors="pt")(feats)
    assert not any(c in batch for c in CALIB_COLUMNS)


def test_out_of_sync_columns_are_an_error(tiny_tokenizer):
    from axolotl_calib_plugin.train.collator import CalibDataCollatorForSeq2Seq

    feats = _features()
    feats[1]["input_ids"] = feats[1]["input_ids"][:4]  # e.g. a truncation that only knows Axolotl's columns
    feats[1]["attention_mask"], feats[1]["labels"] = feats[1]["attention_mask"][:4], feats[1]["labels"][:4]
    with pytest.raises(ValueError, match="calib_sample_id has 7 entries but input_ids has 4 in batch row 1"):
        CalibDataCollatorForSeq2Seq(tiny_tokenizer, padding=True, return_tensors="pt")(feats)


def test_packed_collator_concatenates_then_pads(tiny_tokenizer):
    """Two bins of a micro-batch (lists of rows), as the MultipackBatchSampler hands them over."""
    from axolotl_calib_plugin.train.collator import CalibV2BatchSamplerDataCollatorForSeq2Seq

    feats = _features()
    for f in feats:
        f["position_ids"] = list(range(len(f["input_ids"])))
    batch = CalibV2BatchSamplerDataCollatorForSeq2Seq(tiny_tokenizer, padding=True, pad_to_multiple_of=16,
                                                      return_tensors="pt")([[feats[0], feats[1]], [feats[2]]])
    assert batch["input_ids"].shape == (2, 16)
    assert (batch["calib_sample_id"][0] >= 0).nonzero().view(-1).tolist() == [2, 5 + 4]  # 2nd row offset by 5
    assert (batch["calib_sample_id"][1] >= 0).nonzero().view(-1).tolist() == [1]
    assert batch["calib_answer_idx"][0, 9].item() == 0 and batch["calib_num_options"][1, 1].item() == 3
    assert batch["attention_mask"][0, :12].tolist() == [1] * 5 + [2] * 7  # Axolotl's per-sample numbering


# ------------------------------------------------------------------------------------------- plugin hook
def test_plugin_collator_hook(tiny_cfg):
    from axolotl_calib_plugin.train.collator import (
        CalibBatchSamplerDataCollatorForSeq2Seq,
        CalibDataCollatorForSeq2Seq,
        CalibV2BatchSamplerDataCollatorForSeq2Seq,
    )
    from axolotl_calib_plugin.train.plugin import CalibrationPlugin

    plugin = CalibrationPlugin()
    assert plugin.get_collator_cls_and_kwargs(tiny_cfg(plugins=["other.Plugin"])) is None  # bare None, not (None, None)
    assert plugin.get_collator_cls_and_kwargs(tiny_cfg()) == (CalibDataCollatorForSeq2Seq, {})
    packed = tiny_cfg(sample_packing=True, eval_sample_packing=False, model_config_type="llama")
    assert plugin.get_collator_cls_and_kwargs(packed)[0] is CalibV2BatchSamplerDataCollatorForSeq2Seq
    assert plugin.get_collator_cls_and_kwargs(packed, is_eval=True)[0] is CalibDataCollatorForSeq2Seq
    fa2 = tiny_cfg(sample_packing=True, model_config_type="llama", attn_implementation="flash_attention_2")
    assert plugin.get_collator_cls_and_kwargs(fa2)[0] is CalibV2BatchSamplerDataCollatorForSeq2Seq  # llama is listed
    other = tiny_cfg(sample_packing=True, model_config_type="gpt_neox_unknown", attn_implementation="sdpa")
    assert plugin.get_collator_cls_and_kwargs(other)[0] is CalibBatchSamplerDataCollatorForSeq2Seq
    assert plugin.get_trainer_cls(tiny_cfg(plugins=["other.Plugin"])) is None
    assert plugin.add_callbacks_post_trainer(tiny_cfg(plugins=["other.Plugin"]), trainer=None) == []


# ------------------------------------------------------------------------------------------- real packing path
def test_real_multipack_dataloader_keeps_every_marker_on_its_sample(tiny_cfg, mcq_rows, tiny_tokenizer):
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets
    from axolotl.train import setup_model_and_trainer

    from axolotl_calib_plugin.train.collator import CalibV2BatchSamplerDataCollatorForSeq2Seq
    from axolotl_calib_plugin.train.trainer import AxolotlCalibTrainer

    path = mcq_rows(n=24, num_options=(2, 3, 4, 5), answer_as="index")
    cfg = load_cfg(tiny_cfg(datasets=[{"path": str(path), "type": "axolotl_calib_plugin.mcq"}], sample_packing=True,
                            attn_implementation="sdpa", sequence_len=128, micro_batch_size=2))
    meta = load_datasets(cfg=cfg)
    source = meta.train_dataset
    assert "position_ids" in source.column_names
    by_id = {}
    for row in source:
        t = [i for i, v in enumerate(row["calib_sample_id"]) if v >= 0]
        assert len(t) == 1
        by_id[row["calib_sample_id"][t[0]]] = (row, t[0])

    trainer, *_ = setup_model_and_trainer(cfg, meta)
    assert isinstance(trainer, AxolotlCalibTrainer)
    assert isinstance(trainer.data_collator, CalibV2BatchSamplerDataCollatorForSeq2Seq)
    letters = letter_ids(tiny_tokenizer, cfg, num_options=5)

    seen = []
    for batch in trainer.get_train_dataloader():
        assert all(batch[c].shape == batch["input_ids"].shape for c in CALIB_COLUMNS)
        b_idx, p_idx = (batch["calib_sample_id"] >= 0).nonzero(as_tuple=True)
        assert b_idx.numel() >= 2, "packing should put several samples in a row"
        for b, p in zip(b_idx.tolist(), p_idx.tolist()):
            sid = batch["calib_sample_id"][b, p].item()
            row, t = by_id[sid]
            start = p - t  # where this sample begins inside the packed row
            n = len(row["input_ids"])
            assert batch["input_ids"][b, start:start + n].tolist() == row["input_ids"]
            assert batch["position_ids"][b, p].item() == t  # position restarts per sample
            gold = batch["calib_answer_idx"][b, p].item()
            assert gold == row["calib_answer_idx"][t]
            assert batch["calib_num_options"][b, p].item() == row["calib_num_options"][t]
            assert batch["input_ids"][b, p + 1].item() == letters[gold]
            seen.append(sid)
    assert len(seen) == len(set(seen)) and len(seen) >= len(by_id) // 2
