"""The Axolotl YAML configs of the demo (written into ``<out>/configs/`` so every step can be re-run by hand).

Every training step is a plain Axolotl config run with ``python -m axolotl.cli.train <cfg>.yml``:

* base SFT of the fresh tiny Llama on its own in-domain questions (plain Axolotl: a user-defined prompt
  format that produces exactly the MCQ prompt ``axolotl_calib_plugin.prompts.format_mcq_prompt`` +
  ``" <letter>"`` + EOS, loss on the answer);
* DPO: ``rl: dpo`` (TRL's DPOTrainer) from the base model on preference pairs; ``type: passthrough``
  reads ``prompt`` / ``chosen`` / ``rejected`` from the JSONL as they are;
* over-fine-tuning: plain SFT (answer only) on the fixes' training set for many epochs;
* label smoothing: the calibration plugin with ``calib_lambda: 0`` (plain SFT on the answer) and
  ``calib_label_smoothing`` (the paper's LS baseline on the same data);
* CFT / RCFT: the calibration plugin (``plugins: [axolotl_calib_plugin.CalibrationPlugin]``,
  ``type: axolotl_calib_plugin.mcq``) with ``calib_mode``, ``calib_lambda`` and ``calib_estep``.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

CPU_KEYS: dict[str, Any] = {
    # On CPU, Axolotl's `bf16: auto` silently resolves to fp16; force float32.
    "bf16": False,
    "fp16": False,
    "tf32": False,
    "optimizer": "adamw_torch",
    "dataset_num_proc": 1,
    "sample_packing": False,
    "save_strategy": "no",
    "val_set_size": 0,
    "logging_steps": 10,
    "gradient_accumulation_steps": 1,
    "lr_scheduler": "cosine",
    "warmup_ratio": 0.05,
    "save_safetensors": True,
}

PLAIN_SFT_TYPE = {
    "field_instruction": "prompt",
    "field_output": "completion",
    "format": "{instruction}",
    "no_input_format": "{instruction}",
}


def _base(model: str, out_dir: str, prepared: str, *, seq_len: int, batch: int, epochs: float, lr: float,
          seed: int) -> dict:
    cfg = dict(CPU_KEYS)
    cfg.update({
        "base_model": os.path.abspath(model),
        "output_dir": os.path.abspath(out_dir),
        "dataset_prepared_path": os.path.abspath(prepared),
        "sequence_len": seq_len,
        "micro_batch_size": batch,
        "num_epochs": epochs,
        "learning_rate": lr,
        "seed": seed,
    })
    return cfg


def sft_config(model, data, out_dir, prepared, *, train_on_inputs: bool = False, **kw) -> dict:
    cfg = _base(model, out_dir, prepared, **kw)
    cfg["datasets"] = [{"path": os.path.abspath(data), "type": dict(PLAIN_SFT_TYPE)}]
    cfg["train_on_inputs"] = bool(train_on_inputs)
    return cfg


def dpo_config(model, data, out_dir, prepared, *, beta: float, **kw) -> dict:
    cfg = _base(model, out_dir, prepared, **kw)
    cfg.update({
        "rl": "dpo",
        "dpo_beta": beta,
        "datasets": [{"path": os.path.abspath(data), "type": "passthrough", "split": "train"}],
        "plugins": ["axolotl_calib_plugin.demo.support.DemoSupportPlugin"],
        "demo_gc_freeze": True,
    })
    return cfg


def calib_config(model, data, out_dir, prepared, *, mode: str, lam: float, bins: int = 10, estep: str = "exact",
                 label_smoothing: float = 0.0, bin_accuracy: str = "train", targets: str = "bin", ece_loss: str = "mse",
                 heldout: str | None = None, **kw) -> dict:
    cfg = _base(model, out_dir, prepared, **kw)
    cfg.update({
        "plugins": ["axolotl_calib_plugin.CalibrationPlugin"],
        "calib_mode": mode,
        "calib_lambda": lam,
        "calib_bins": bins,
        "calib_refresh": "epoch",
        "calib_option_letters": ["A", "B", "C", "D"],
        "calib_estep_batch_size": 64,
        "datasets": [{"path": os.path.abspath(data), "type": "axolotl_calib_plugin.mcq"}],
    })
    if estep != "exact":
        cfg["calib_estep"] = estep
    if label_smoothing:
        cfg["calib_label_smoothing"] = float(label_smoothing)
    if heldout:  # the eval split: held-out calibration each epoch, and the rows of the held-out M-step variants
        cfg["test_datasets"] = [{"path": os.path.abspath(heldout), "type": "axolotl_calib_plugin.mcq", "split": "train"}]
        cfg["eval_strategy"] = "epoch"
        cfg["per_device_eval_batch_size"] = 64
    # the bin-accuracy source is always written: the plugin's default (auto) reads held-out rows whenever the
    # config has an eval split, which would silently turn a training-row (Algorithm 1) run into a held-out one
    cfg["calib_bin_accuracy"] = bin_accuracy
    for key, value, default in (("calib_targets", targets, "bin"), ("calib_ece_loss", ece_loss, "mse")):
        if value != default:
            cfg[key] = value
    if bin_accuracy == "heldout" or targets == "temperature":
        # the study reports held-out calibration on its own evaluation files (eval_in / eval_out), never on the
        # TS-fit split: every row of that split sets targets, as in the study's design
        cfg["calib_target_fraction"] = 1.0
    # train_on_inputs is set by the plugin from calib_mode (cft: false, rcft: true).
    return cfg


def write_config(cfg: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path
