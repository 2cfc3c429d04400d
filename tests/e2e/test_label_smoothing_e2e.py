"""``calib_label_smoothing`` end to end: a real ``axolotl train`` step of the paper's baseline (SFT with label
smoothing, no ECE term: ``calib_lambda: 0``) logs HF's label-smoothed cross-entropy
``(1 - eps) * NLL + eps * mean over the vocabulary of -log p``, computed here by hand from the initial model,
which differs from the plain cross-entropy."""

from __future__ import annotations

import pytest
import torch

from helpers import log_history, loss_logs, prepared_train_dataset, run_train


def _hand_losses(model_dir, ds) -> tuple[float, float]:
    """(mean NLL, mean over positions and vocabulary of -log p) over every label token of ``ds``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    nll, smooth, count, vocab = 0.0, 0.0, 0, None
    with torch.no_grad():
        for row in ds:
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1].double()
            labels = torch.tensor(row["labels"][1:])
            keep = labels != -100
            logp = torch.log_softmax(logits[keep], dim=-1)
            nll += float(-logp.gather(1, labels[keep].view(-1, 1)).sum())
            smooth += float(-logp.sum())
            count += int(keep.sum())
            vocab = logp.shape[-1]
    return nll / count, smooth / (count * vocab)



def _peaked_model(tiny_model_dir, out_dir) -> str:
    """The tiny model with its output head scaled up: peaked next-token distributions, so the smoothing
    term (mean -log p over the vocabulary) is far from the NLL and label smoothing visibly changes the loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out_dir)
    return str(out_dir)



def test_label_smoothing_key_smooths_the_sft_loss(tmp_path, tiny_cfg, tiny_model_dir, mcq_rows):
    eps = 0.2
    model_dir = _peaked_model(tiny_model_dir, tmp_path / "peaked")
    cfg = tiny_cfg(base_model=model_dir,
                   datasets=[{"path": str(mcq_rows(6, num_options=4, seed=8)), "type": "axolotl_calib_plugin.mcq"}],
                   micro_batch_size=6, num_epochs=1, logging_steps=1, save_strategy="steps", save_steps=1, seed=1,
                   calib_label_smoothing=eps, calib_lambda=0.0)
    run_train(cfg, tmp_path)
    (first,) = loss_logs(log_history(cfg.output_dir))  # one step: all 6 rows in one batch, initial weights
    nll, smooth = _hand_losses(model_dir, prepared_train_dataset(cfg.dataset_prepared_path))
    assert smooth - nll > 0.5  # nats: a case where smoothing matters
    assert first["loss"] == pytest.approx((1 - eps) * nll + eps * smooth, rel=1e-4)
    assert first["loss"] - nll > 0.1  # really smoothed (100x the tolerance above), not the plain cross-entropy
