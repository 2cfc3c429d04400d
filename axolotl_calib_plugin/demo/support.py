"""A small Axolotl plugin used only by the demo's DPO run (never needed for CFT / RCFT).

``demo_gc_freeze: true`` -> ``gc.freeze()`` once the trainer exists. Axolotl's DPO trainer calls
``gc.collect()`` after every step; with Axolotl's large import graph that costs ~0.5 s per step on a
CPU, far more than the tiny model's step. Freezing the objects that exist after start-up makes those
collections cheap without changing anything the training computes.

Enable with ``plugins: [axolotl_calib_plugin.demo.support.DemoSupportPlugin]``. (The label-smoothing
baseline uses the product key ``calib_label_smoothing``.)
"""

from __future__ import annotations

import gc

from axolotl.integrations.base import BasePlugin
from pydantic import BaseModel

from ..train.config_checks import is_plugin_listed


class DemoSupportArgs(BaseModel):
    demo_gc_freeze: bool | None = None


class DemoSupportPlugin(BasePlugin):
    """Cheap per-step ``gc.collect`` for the demo's DPO run."""

    def get_input_args(self) -> str:
        return "axolotl_calib_plugin.demo.support.DemoSupportArgs"

    def post_trainer_create(self, cfg, trainer):
        if cfg is not None and is_plugin_listed(cfg.get("plugins"), "DemoSupportPlugin") and cfg.get("demo_gc_freeze"):
            gc.collect()
            gc.freeze()
