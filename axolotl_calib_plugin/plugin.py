"""``CalibrationPlugin``: wires CFT / RCFT into Axolotl.

Enable with ``plugins: [axolotl_calib_plugin.CalibrationPlugin]`` and ``type: axolotl_calib_plugin.mcq``
datasets. What each hook contributes:

* ``get_input_args``: the ``calib_*`` keys and their checks (:mod:`.args`);
* ``get_trainer_cls``: :class:`~axolotl_calib_plugin.trainer.AxolotlCalibTrainer` (SFT + lambda * ECE);
* ``get_collator_cls_and_kwargs``: collators that pad the per-token ``calib_*`` columns, packing included
  (:mod:`.collator`);
* ``add_callbacks_post_trainer``: resolves the settings ONCE (:class:`~axolotl_calib_plugin.context.CalibrationContext`:
  presets, option-letter token ids), hands that one object to the trainer and to
  :class:`~axolotl_calib_plugin.callbacks.EMRefreshCallback` (E-step / M-step).

The ``PluginManager`` is a process-wide singleton that calls every registered plugin, also for
later configs that do not list this one; so every hook first checks that the config lists us
(:func:`is_active`) and returns ``None`` / ``[]`` otherwise. Trainer, collator and callback modules
are imported lazily: importing the plugin must stay cheap and must not import torch-heavy code
before Axolotl has set up its environment.
"""

from __future__ import annotations

from typing import Any

from axolotl.integrations.base import BasePlugin
from axolotl.utils.logging import get_logger

from .args import CalibrationArgs as CalibrationArgs
from .args import is_plugin_listed

LOG = get_logger(__name__)


def is_active(cfg: Any) -> bool:
    """True when this config lists the calibration plugin under ``plugins:``."""
    return cfg is not None and is_plugin_listed(cfg.get("plugins"))


class CalibrationPlugin(BasePlugin):
    """Calibration-aware fine-tuning (CFT / RCFT, Xiao et al., ICML 2025) for Axolotl."""

    def get_input_args(self) -> str:
        return "axolotl_calib_plugin.args.CalibrationArgs"

    def get_trainer_cls(self, cfg):
        if not is_active(cfg):
            return None
        from .trainer import AxolotlCalibTrainer

        return AxolotlCalibTrainer

    def get_collator_cls_and_kwargs(self, cfg, is_eval=False):
        # Bare None when inactive: the manager treats any non-None value, even (None, None), as ours.
        if not is_active(cfg):
            return None
        from .collator import select_collator_cls

        return select_collator_cls(cfg, is_eval=is_eval), {}

    def add_callbacks_post_trainer(self, cfg, trainer) -> list:
        if not is_active(cfg):
            return []
        from .callbacks import EMRefreshCallback
        from .context import CalibrationContext

        if not hasattr(trainer, "attach_calibration"):
            raise ValueError(
                f"the calibration plugin needs its own trainer class, but {type(trainer).__name__} was built "
                "(another plugin's get_trainer_cls, listed before this one, won). List "
                "axolotl_calib_plugin.CalibrationPlugin first under `plugins:` or drop the other trainer plugin."
            )
        calib = CalibrationContext.from_cfg(cfg, trainer.processing_class, (trainer.train_dataset, trainer.eval_dataset))
        trainer.attach_calibration(calib)
        return [EMRefreshCallback(calib, trainer)]
