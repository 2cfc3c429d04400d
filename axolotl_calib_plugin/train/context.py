"""``CalibrationContext``: the one object the trainer and the EM-refresh callback share in a run.

The settings are resolved ONCE per training process, when the plugin's ``add_callbacks_post_trainer``
hook sees the finished trainer: presets expanded (:meth:`CalibrationArgs.from_cfg`) and the option
letters' token ids found for this tokenizer and prompt format (only as many letters as the data's
largest K: 4-option data never checks ``E``..``J``). The trainer reads ``settings``, ``option_ids`` and
``em_state`` in its loss; the callback writes ``em_state`` after every E-step / M-step refresh. Nothing
else passes between them.

Data flow of a key: ``calib_lambda`` in the YAML -> :class:`~axolotl_calib_plugin.train.args.CalibrationArgs`
(validated with Axolotl's config) -> ``CalibrationContext.settings`` -> ``AxolotlCalibTrainer.compute_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from .args import CalibrationArgs
from .em_state import EMState
from .online import OnlineRecord

__all__ = ["CalibrationContext"]


def _datasets(items: Iterable[Any]) -> list:
    out = []
    for d in items:
        if d is None:
            continue
        if isinstance(d, Mapping):  # Trainer(eval_dataset={"name": ds, ...})
            out.extend(v for v in d.values() if v is not None)
        else:
            out.append(d)
    return out


@dataclass
class CalibrationContext:
    """Resolved settings + the current EM state of one training run.

    ``settings``: the resolved :class:`CalibrationArgs` (presets applied);
    ``option_ids``: token ids of the option letters right after the answer position (a K-option row
    uses the first K); ``em_state``: the targets and bin statistics of the latest refresh (``None`` before
    the first E-step); ``resume_from``: what ``trainer.train(resume_from_checkpoint=...)`` received, and
    ``cfg_resume_from``: the config's ``resume_from_checkpoint``, where the callback looks for the
    checkpoint's ``calib_state.pt``; ``online``: with ``calib_estep: online``, the option probabilities the
    training forwards recorded since the last refresh (the trainer writes, the callback reads); ``last_eval``: the
    latest evaluation's option probabilities (the trainer writes, the callback's held-out M-step reads).
    """

    settings: CalibrationArgs
    option_ids: tuple[int, ...]
    em_state: Optional[EMState] = None
    resume_from: Any = None
    cfg_resume_from: Optional[str] = None
    online: Optional[OnlineRecord] = None
    #: (global_step, probs, labels, num_options) of the latest evaluation of the eval split (gathered over ranks):
    #: a refresh at the same step takes its held-out rows from it instead of a forward of its own
    last_eval: Optional[tuple] = None
    #: sorted sample ids of the eval prompts that set targets (:meth:`target_ids`), computed once per run
    _target_ids: Any = None

    def target_ids(self, eval_dataset=None):
        """Sorted sample ids (int64 numpy array) of the eval prompts that set the targets, or None when the M-step
        reads no held-out rows (then every eval row is a report row). The split is
        :func:`~axolotl_calib_plugin.train.eval_calibration.target_sample_ids` of the pooled eval split with
        ``calib_target_fraction``; computed on first use and kept (the eval split does not change during a run)."""
        if not self.needs_heldout(eval_dataset):
            return None
        if self._target_ids is None:
            from .estep import eval_split_data
            from .eval_calibration import target_sample_ids

            self._target_ids = target_sample_ids(eval_split_data(eval_dataset).sample_id,
                                                 self.settings.calib_target_fraction)
        return self._target_ids

    def bin_accuracy(self, eval_dataset=None) -> str:
        """``calib_bin_accuracy`` as the M-step uses it: ``auto`` (settings built without a config, e.g. in a script)
        means ``heldout`` when ``eval_dataset`` has calibration rows, else ``train``; configs resolve it at validation."""
        value = self.settings.calib_bin_accuracy
        if value != "auto":
            return value
        sets = list(eval_dataset.values()) if isinstance(eval_dataset, Mapping) else [eval_dataset]
        return "heldout" if any(d is not None and "calib_sample_id" in getattr(d, "column_names", ()) for d in sets) \
            else "train"

    def needs_heldout(self, eval_dataset=None) -> bool:
        """True when the M-step reads held-out rows (held-out bin accuracies or temperature targets)."""
        return self.bin_accuracy(eval_dataset) == "heldout" or self.settings.calib_targets == "temperature"

    def first_estep_fraction(self, eval_dataset=None) -> float:
        """``calib_first_estep_fraction`` as the first refresh uses it. Unset: 0.1 for an online run whose targets come
        from training-row bins (live targets need their running statistics), else 1 (every prompt measured)."""
        from .args import ONLINE_FIRST_ESTEP_FRACTION

        value = self.settings.calib_first_estep_fraction
        plain = not self.needs_heldout(eval_dataset)
        if value is None:
            return ONLINE_FIRST_ESTEP_FRACTION if (self.settings.calib_estep == "online" and plain) else 1.0
        if value < 1.0 and not plain:
            raise ValueError(f"calib_first_estep_fraction: {value} needs calib_bin_accuracy: train and calib_targets: bin "
                             "(held-out variants measure every prompt first); remove it or use training-row bins")
        return float(value)

    def __post_init__(self):
        if self.online is None and self.settings.calib_estep == "online":
            self.online = OnlineRecord()

    @property
    def lam(self) -> float:
        """The weight of the ECE term (``calib_lambda``)."""
        return float(self.settings.calib_lambda or 0.0)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any], tokenizer, datasets: Iterable[Any] = ()) -> "CalibrationContext":
        """Resolve the settings of ``cfg`` and the letter ids for ``tokenizer``, for the largest K of ``datasets``.

        Raises ``ValueError`` naming the letter when a needed option letter is not one token.
        """
        from .estep import max_num_options
        from .mcq import option_token_ids

        settings = CalibrationArgs.from_cfg(cfg)
        ks = [k for k in (max_num_options(d) for d in _datasets(datasets)) if k]
        ids = option_token_ids(tokenizer, settings, max(ks) if ks else None, cfg=cfg)
        resume = cfg.get("resume_from_checkpoint") if hasattr(cfg, "get") else None
        return cls(settings=settings, option_ids=tuple(ids), cfg_resume_from=resume or None)
