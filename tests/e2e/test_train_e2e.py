"""Real ``axolotl train`` runs (``python -m axolotl.cli.train cfg.yml``, offline, CPU, tiny Llama).

* CFT and RCFT finish; the logged ECE part is non-zero and loss = sft + lambda * ece;
* the SFT masking differs between the modes (answer only vs prompt + answer);
* the targets are recomputed at every refresh and equal the values computed by hand (an
  independent per-sample forward of the saved checkpoint) from the logged bin statistics;
* on a deliberately over-confident model a short CFT run lowers the training-set conf-ECE
  while plain SFT with the same settings raises it.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch

from helpers import (LETTERS, check_refresh_against_hand, expected_targets, hand_estep, letter_ids, log_history,
                     loss_logs, prepared_train_dataset, refresh_logs, refresh_records, run_train)


# ---------------------------------------------------------------------- one CFT run, two tests read it
N_TRAIN, N_EVAL = 16, 5


@pytest.fixture(scope="module")
def cft_run(tmp_path_factory, tiny_model_dir):
    """CFT (training-row bins), lambda 2, 5 bins, 2 epochs over 16 training rows (8 steps each; checkpoints every
    4), plus a 5-row eval split evaluated every 4 steps with TensorBoard and reliability plots: ``(config, output)``."""
    from helpers import tiny_config, write_mcq_rows

    root = tmp_path_factory.mktemp("cft_run")
    data = write_mcq_rows(root / "mcq.jsonl", N_TRAIN + N_EVAL, num_options=(4, 3, 5, 2), seed=1)
    cfg = tiny_config(tiny_model_dir, root, datasets=[{"path": str(data), "type": "axolotl_calib_plugin.mcq"}],
                      calib_mode="cft", calib_bins=5, calib_lambda=2.0, num_epochs=2, logging_steps=1,
                      calib_bin_accuracy="train",  # Algorithm 1's bins (auto would read the eval split)
                      save_strategy="steps", save_steps=4, seed=42, calib_estep_batch_size=4,
                      val_set_size=N_EVAL, eval_strategy="steps", eval_steps=4, use_tensorboard=True,
                      calib_eval_plots=True)
    return cfg, run_train(cfg, root)


# ---------------------------------------------------------------------- tests
def test_cft_run_logs_ece_and_refreshes_targets_each_epoch(cft_run, tiny_model_dir):
    from axolotl_calib_plugin.train.em import EMState

    n_bins = 5
    cfg, out = cft_run
    assert "calib E-step" in out  # the progress bar
    history = log_history(cfg.output_dir)
    losses = loss_logs(history)
    assert len(losses) == 16
    for h in losses:
        assert h["calib/ece_loss"] > 0
        assert h["loss"] == pytest.approx(h["calib/sft_loss"] + 2.0 * h["calib/ece_loss"], rel=2e-3, abs=2e-4)

    refreshes = refresh_logs(history)
    assert [(r["calib/refresh"], r["step"]) for r in refreshes] == [(1, 0), (2, 8)]  # each epoch, not once
    ds = prepared_train_dataset(cfg.dataset_prepared_path)  # training rows first, then the eval split
    assert len(ds) == N_TRAIN + N_EVAL
    train_rows = ds.select(range(N_TRAIN))
    states = {4: EMState.load(os.path.join(cfg.output_dir, "checkpoint-4")),
              16: EMState.load(os.path.join(cfg.output_dir, "checkpoint-16"))}
    assert (states[4].refresh_count, states[16].refresh_count) == (1, 2)
    # refresh 1 ran on the base model, refresh 2 on the model of checkpoint-8 (saved just before it)
    records = refresh_records(cfg.output_dir)
    assert len(records) == 2
    for log, record, model_dir, state in ((refreshes[0], records[0], tiny_model_dir, states[4]),
                                          (refreshes[1], records[1], os.path.join(cfg.output_dir, "checkpoint-8"),
                                           states[16])):
        probs, labels, ids, ks = hand_estep(model_dir, train_rows, cfg)
        assert len(ids) == int(state.bin_count.sum()) == N_TRAIN  # the E-step never reads the eval split
        q = check_refresh_against_hand(log, record, probs, labels, n_bins)
        want = expected_targets(probs, q, ks, n_bins)
        torch.testing.assert_close(state.lookup(ids)[:, : want.shape[1]], want, atol=2e-4, rtol=1e-3)
    assert not torch.allclose(states[4].targets, states[16].targets, atol=1e-3)  # really recomputed

    # CFT: SFT on the answer only (letter + EOS after t*)
    for row in ds:
        t = int(np.argmax(np.asarray(row["calib_sample_id"]) >= 0))
        assert set(row["labels"][: t + 1]) == {-100}
        assert row["labels"][t + 1:] == row["input_ids"][t + 1:]


def test_rcft_run_with_sample_packing_and_lora_on_lm_head(tmp_path, tiny_cfg, tiny_model_dir, mcq_rows):
    """RCFT trains prompt + answer; with sample packing several answer positions share a row in
    training, while the E-step still sees one sample per dataset row (packing is in the sampler).
    LoRA also adapts lm_head (and every linear layer, with no lora_*_kernel key: the plugin turns Axolotl's
    auto-enabled GPU kernels off on a CPU), so the option logits must include the adapter's rows. With the online
    E-step and learning rate 0 the second refresh, built from the PACKED training forwards without a
    forward of its own, must reproduce the first (exact) one."""
    from axolotl_calib_plugin.train.callbacks import DEBUG_DUMP_ENV
    from axolotl_calib_plugin.train.em import EMState

    n_bins = 4
    cfg = tiny_cfg(
        datasets=[{"path": str(mcq_rows(8, num_options=(4, 2), seed=2)), "type": "axolotl_calib_plugin.mcq"}],
        calib_mode="rcft", calib_bins=n_bins, num_epochs=2, logging_steps=1, save_strategy="epoch", seed=42,
        sample_packing=True, pad_to_sequence_len=True, calib_estep="online", calib_first_estep_fraction=1.0,
        learning_rate=0.0,
        attn_implementation="sdpa",
        adapter="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_linear=True,
        lora_target_modules=["lm_head"],  # no lora_*_kernel keys: Axolotl would auto-enable its GPU-only kernels
    )
    dump = tmp_path / "dump"
    out = run_train(cfg, tmp_path, env_extra={DEBUG_DUMP_ENV: str(dump)})
    assert "no CUDA device: turning off Axolotl's fused LoRA kernels" in out
    assert "disagree with the model's logits" not in out  # hidden x K head rows (+ LoRA) == model logits
    assert os.path.exists(os.path.join(cfg.output_dir, "adapter_model.safetensors"))
    history = log_history(cfg.output_dir)
    losses = loss_logs(history)
    assert losses and all(h["calib/ece_loss"] > 0 for h in losses)
    assert len(losses) < 8  # 8 samples, micro-batch 2, 2 epochs: fewer steps than unpacked, i.e. really packed
    refreshes = refresh_logs(history)
    assert [(r["calib/n"], r["calib/estep_online"]) for r in refreshes] == [(8, 0), (8, 1)]
    assert refreshes[1]["calib/online_seen"] == 8
    ds = prepared_train_dataset(cfg.dataset_prepared_path)
    assert "position_ids" in ds.column_names  # the packing path prepared this dataset
    probs, labels, _, _ = hand_estep(tiny_model_dir, ds, cfg)
    check_refresh_against_hand(refreshes[0], refresh_records(cfg.output_dir)[0], probs, labels, n_bins)
    first, second = EMState.load(dump / "refresh1_rank0.pt"), EMState.load(dump / "refresh2_rank0.pt")
    assert torch.equal(first.bin_count, second.bin_count)
    torch.testing.assert_close(second.targets, first.targets, rtol=0, atol=2e-6)
    for row in ds:  # RCFT: every token is an SFT target
        assert row["labels"] == row["input_ids"]


def _overconfident_setup(tmp_path, tiny_model_dir, mcq_rows, scale=20.0):
    """A tiny model whose option-letter rows of ``lm_head`` are scaled up: it answers every question
    with ~0.96 confidence at chance accuracy (random gold letters) -- grossly over-confident."""
    from transformers import AutoModelForCausalLM, AutoTokenizer


    model_dir = str(tmp_path / "overconfident")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    letters = letter_ids(tok, {"calib_option_letters": LETTERS})
    with torch.no_grad():
        model.lm_head.weight[letters[:4]] *= scale
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir, mcq_rows(24, num_options=4, seed=11, name="overconfident.jsonl")


def test_cft_calibrates_overconfident_model_better_than_sft(tmp_path, tiny_cfg, tiny_model_dir, mcq_rows):
    """Same data, steps, lr and seed; only calib_lambda differs (1 vs 0).

    Cross-entropy is a proper scoring rule, so on its own training set plain SFT also pulls an
    artificially over-confident model towards calibration (measured here: 0.57-0.63 -> 0.12-0.29);
    CFT gets lower (0.09-0.12). We assert the robust part: CFT at least halves the ECE and beats SFT.
    """
    from axolotl_calib_plugin import metrics

    model_dir, data = _overconfident_setup(tmp_path, tiny_model_dir, mcq_rows)
    common = dict(base_model=model_dir, datasets=[{"path": str(data), "type": "axolotl_calib_plugin.mcq"}],
                  micro_batch_size=4, num_epochs=2, learning_rate=1e-4, lr_scheduler="constant", seed=42,
                  save_strategy="no", calib_mode="cft", calib_bins=10)
    results = {}
    for name, lam in (("sft", 0.0), ("cft", 1.0)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        cfg = tiny_cfg(**common, calib_lambda=lam, output_dir=str(run_dir / "out"),
                       dataset_prepared_path=str(run_dir / "prepared"))
        run_train(cfg, run_dir)
        ds = prepared_train_dataset(cfg.dataset_prepared_path)
        if "before" not in results:
            p0, y0, _, _ = hand_estep(model_dir, ds, cfg)
            results["before"] = metrics.conf_ece(p0, y0, 10)
        p, y, _, _ = hand_estep(cfg.output_dir, ds, cfg)
        results[name] = metrics.conf_ece(p, y, 10)
    assert results["before"] > 0.4, results  # really over-confident to start with
    assert results["cft"] < min(0.2, 0.5 * results["before"]), results  # CFT calibrates ...
    assert results["cft"] < results["sft"], results  # ... better than plain SFT with the same settings


def test_eval_split_logs_held_out_calibration_to_tensorboard(cft_run):
    """With val_set_size, every evaluation logs eval_calib/conf_ece, cw_ece, acc and n over the WHOLE eval
    split (equal to a direct forward of the checkpoint over those rows), never NaN; TensorBoard gets the
    scalars and, with calib_eval_plots, the reliability diagram as an image (read back from the event file)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from axolotl_calib_plugin import metrics

    cfg, _ = cft_run
    history = log_history(cfg.output_dir)
    evals = [h for h in history if "eval_loss" in h]
    assert {4, 8, 12, 16} <= {h["step"] for h in evals}
    keys = {"eval_calib/conf_ece", "eval_calib/cw_ece", "eval_calib/acc", "eval_calib/n"}
    assert all(keys <= set(h) for h in evals) and all(h["eval_calib/n"] == N_EVAL for h in evals)
    assert not any(isinstance(v, float) and v != v for h in evals for v in h.values())  # no NaN
    # direct: the checkpoint of step 4 over the eval split (Axolotl's split: the last 5 prepared rows)
    ds = prepared_train_dataset(cfg.dataset_prepared_path)
    eval_rows = ds.select(range(len(ds) - N_EVAL, len(ds)))
    probs, labels, _, ks = hand_estep(os.path.join(cfg.output_dir, "checkpoint-4"), eval_rows, cfg)
    want = metrics.calibration_metrics(probs, labels, 10, num_options=ks)
    at4 = next(h for h in evals if h["step"] == 4)
    assert at4["eval_calib/conf_ece"] == pytest.approx(want["conf_ece"], abs=1e-5)
    assert at4["eval_calib/cw_ece"] == pytest.approx(want["cw_ece"], abs=1e-5)
    assert at4["eval_calib/acc"] == pytest.approx(want["accuracy"], abs=1e-12)
    assert os.path.exists(os.path.join(cfg.output_dir, "calibration_eval", "reliability_eval_step4.png"))
    events = glob.glob(os.path.join(cfg.output_dir, "**", "events.out.tfevents*"), recursive=True)
    assert events
    acc = EventAccumulator(os.path.dirname(events[0]), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"eval/calib/conf_ece", "eval/calib/cw_ece", "eval/calib/acc"} <= set(scalars), scalars
    tb = {e.step: e.value for e in acc.Scalars("eval/calib/conf_ece")}
    assert tb[4] == pytest.approx(at4["eval_calib/conf_ece"], abs=1e-6)
    # one naming scheme: the image sits next to its scalars (eval/calib/...); each EM refresh's bins are one
    # figure (train/calib/bins), not a dozen scalars per bin; nothing repeats "train" or "calib"
    assert {"eval/calib/reliability", "train/calib/bins"} <= set(acc.Tags()["images"]), acc.Tags()["images"]
    assert len(acc.Images("train/calib/bins")) == len(refresh_logs(history)) >= 1
    assert {"train/calib/conf_ece", "train/calib/acc", "train/calib/n", "train/calib/sft_loss"} <= set(scalars)
    assert not [t for t in scalars if "bin_" in t or "train/calib/train" in t or "calib/calib" in t], scalars
