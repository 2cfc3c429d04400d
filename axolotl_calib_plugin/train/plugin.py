"""``CalibrationPlugin``: wires CFT / RCFT into Axolotl.

Enable with ``plugins: [axolotl_calib_plugin.CalibrationPlugin]`` and ``type: axolotl_calib_plugin.mcq``
datasets. What each hook contributes:

* ``register`` (the raw config, before Axolotl validates it): the plugin listed once, and on a machine without
  CUDA Axolotl's GPU-only fused LoRA kernels off (:func:`lora_kernels_off_without_cuda`);
* ``get_input_args``: the ``calib_*`` keys and their checks (:mod:`.args`);
* ``get_trainer_cls``: :class:`~axolotl_calib_plugin.train.trainer.AxolotlCalibTrainer` (SFT + lambda * ECE);
* ``get_collator_cls_and_kwargs``: collators that pad the per-token ``calib_*`` columns, packing included
  (:mod:`.collator`);
* ``add_callbacks_post_trainer``: resolves the settings ONCE (:class:`~axolotl_calib_plugin.train.context.CalibrationContext`:
  presets, option-letter token ids), hands that one object to the trainer and to
  :class:`~axolotl_calib_plugin.train.callbacks.EMRefreshCallback` (E-step / M-step);
* ``get_training_args``: ``calib_label_smoothing`` -> HF's ``label_smoothing_factor`` (the LS baseline);
* ``post_trainer_create`` / ``post_train`` / ``post_train_unload``: the post-training calibration report
  of ``calib_eval_tasks`` (:class:`~axolotl_calib_plugin.train.report_hook.PostTrainingReport`).

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

#: Axolotl's fused LoRA kernels (Triton, CUDA only). Its config validation turns every one of them on for a LoRA /
#: QLoRA config that sets none of them, whatever the device.
LORA_KERNEL_KEYS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")


def is_active(cfg: Any) -> bool:
    """True when this config lists the calibration plugin under ``plugins:``."""
    return cfg is not None and is_plugin_listed(cfg.get("plugins"))


def lora_kernels_off_without_cuda(cfg: Any, cuda: bool | None = None) -> list[str]:
    """A LoRA / QLoRA config on a machine without CUDA (``cuda``: default ``torch.cuda.is_available()``): its unset
    :data:`LORA_KERNEL_KEYS` become ``false``, since Axolotl would turn them on and the first forward would fail in
    Triton ("Torch not compiled with CUDA enabled"); returns the keys set. One the config turns on is refused here,
    before the model loads (ValueError naming it). Any other config is left as it is."""
    if cfg.get("adapter") not in ("lora", "qlora"):
        return []
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return []
    on = [k for k in LORA_KERNEL_KEYS if cfg.get(k)]
    if on:
        raise ValueError(f"{', '.join(on)}: true, but this machine has no CUDA device and Axolotl's fused LoRA kernels "
                         "need one (Triton): set them to false (or remove them) to train here")
    unset = [k for k in LORA_KERNEL_KEYS if cfg.get(k) is None]
    for k in unset:
        cfg[k] = False
    return unset


class CalibrationPlugin(BasePlugin):
    """Calibration-aware fine-tuning (CFT / RCFT, Xiao et al., ICML 2025) for Axolotl."""

    def register(self, cfg):
        # Axolotl registers one instance per listed name and merges every instance's args class into one
        # config class, so the two documented spellings together end in "TypeError: duplicate base class".
        names = [p for p in (cfg.get("plugins") or []) if is_plugin_listed([p])]
        if len(set(names)) > 1:
            raise ValueError(
                f"plugins: lists the calibration plugin {len(set(names))} times ({', '.join(dict.fromkeys(names))}); "
                "list it once, e.g. - axolotl_calib_plugin.CalibrationPlugin"
            )
        from axolotl.integrations.base import PluginManager

        registered = PluginManager.get_instance().plugins
        for name in [n for n in registered if is_plugin_listed([n]) and n not in names]:
            del registered[name]  # left over from an earlier config of this process, under the other spelling
        if names:
            turned_off = lora_kernels_off_without_cuda(cfg)
            if turned_off:
                LOG.warning("calib: no CUDA device: turning off Axolotl's fused LoRA kernels (%s: false); they need a "
                            "GPU", ", ".join(turned_off))

    def get_input_args(self) -> str:
        return "axolotl_calib_plugin.train.args.CalibrationArgs"

    def get_trainer_cls(self, cfg):
        if not is_active(cfg):
            return None
        from .trainer import AxolotlCalibTrainer

        return AxolotlCalibTrainer

    def load_datasets(self, cfg, preprocess: bool = False):
        # Before Axolotl hashes and loads the prepared data: the calib keys and the data files' contents join
        # that hash, so a changed key or an edited file never reloads rows prepared from the old ones.
        if is_active(cfg):
            from .resume_check import install_dataset_hash

            install_dataset_hash(cfg)
        return None

    def pre_model_load(self, cfg):
        # torch seeds its default generator randomly per process, and Axolotl seeds only in the Trainer's
        # __init__, AFTER the model and adapter exist: without this, two LoRA runs with the same `seed` start
        # from different adapter weights (and differ from the first step on).
        if is_active(cfg):
            from transformers import set_seed

            from .resume_check import check_resume_state_early

            set_seed(int(cfg.get("seed") if cfg.get("seed") is not None else 42))
            check_resume_state_early(cfg)  # a corrupted state / changed data: say so before the model loads

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
        from .mcq import check_rows_left  # no rows left (all longer than sequence_len): say so with numbers

        check_rows_left(cfg, trainer.processing_class, trainer.train_dataset)
        calib = CalibrationContext.from_cfg(cfg, trainer.processing_class, (trainer.train_dataset, trainer.eval_dataset))
        trainer.attach_calibration(calib)
        return [EMRefreshCallback(calib, trainer)]

    # -- label smoothing baseline and the post-training calibration report (report_hook.PostTrainingReport)
    def get_training_args(self, cfg):
        if is_active(cfg) and cfg.get("calib_label_smoothing"):
            return {"label_smoothing_factor": float(cfg["calib_label_smoothing"])}
        return None

    def _report(self):
        from .report_hook import PostTrainingReport

        if getattr(self, "_post_training_report", None) is None:
            self._post_training_report = PostTrainingReport()
        return self._post_training_report

    def post_trainer_create(self, cfg, trainer):
        if is_active(cfg) and cfg.get("calib_eval_tasks"):
            self._report().trainer_created(cfg, trainer)

    def post_train(self, cfg, model):
        if is_active(cfg) and cfg.get("calib_eval_tasks"):
            self._report().post_train(cfg, model)

    def post_train_unload(self, cfg):
        if is_active(cfg) and cfg.get("calib_eval_tasks"):
            self._report().post_train_unload(cfg)
