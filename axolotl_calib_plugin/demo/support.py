"""A small Axolotl plugin used only by the demo's baseline runs (never needed for CFT / RCFT).

* ``demo_label_smoothing: 0.1`` -> HF ``TrainingArguments.label_smoothing_factor`` (Axolotl 0.19 has no
  config key for it; ``get_training_args`` is the documented way to set extra TrainingArguments).
  HF's ``Trainer.compute_loss`` then uses its ``LabelSmoother`` (``shift_labels=True`` for causal LMs),
  which ``AxolotlTrainer.compute_loss`` reaches through ``super().compute_loss``.
* ``demo_gc_freeze: true`` -> ``gc.freeze()`` once the trainer exists. Axolotl's DPO trainer calls
  ``gc.collect()`` after every step; with Axolotl's large import graph that costs ~0.5 s per step on a
  CPU, far more than the tiny model's step. Freezing the objects that exist after start-up makes those
  collections cheap without changing anything the training computes.

Enable with ``plugins: [axolotl_calib_plugin.demo.support.DemoSupportPlugin]``.
"""

from __future__ import annotations

import gc

from axolotl.integrations.base import BasePlugin
from pydantic import BaseModel, Field


class DemoSupportArgs(BaseModel):
    demo_label_smoothing: float | None = Field(default=None, ge=0.0, lt=1.0)
    demo_gc_freeze: bool | None = None


def _listed(cfg) -> bool:
    plugins = (cfg.get("plugins") if cfg is not None else None) or []
    return any(str(p).endswith("DemoSupportPlugin") for p in plugins)


class DemoSupportPlugin(BasePlugin):
    """Label smoothing factor + cheap per-step ``gc.collect`` for the demo's baseline runs."""

    def get_input_args(self) -> str:
        return "axolotl_calib_plugin.demo.support.DemoSupportArgs"

    def get_training_args(self, cfg):
        if _listed(cfg) and cfg.get("demo_label_smoothing"):
            return {"label_smoothing_factor": float(cfg["demo_label_smoothing"])}
        return None

    def post_trainer_create(self, cfg, trainer):
        if _listed(cfg) and cfg.get("demo_gc_freeze"):
            gc.collect()
            gc.freeze()
