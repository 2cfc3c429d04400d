"""``EMRefreshCallback``: WHEN the E-step / M-step of Algorithm 1 run, and the EM state in checkpoints.

Schedule: at the start of every epoch (``calib_refresh: epoch``, the paper's Algorithm 1, Sec. 4) or
every N optimizer steps (``calib_refresh: N``; also once before the first step). Never just once.

A refresh runs the E-step (:func:`~axolotl_calib_plugin.estep.run_estep`: every training sample's
option probabilities under the current model, identical on every rank), then the M-step
(:meth:`~axolotl_calib_plugin.em.EMState.from_estep`: bins, per-bin accuracy, targets), and stores the
result in the run's :class:`~axolotl_calib_plugin.context.CalibrationContext`, where the trainer's loss
reads it.

Checkpoints: ``on_save`` writes ``calib_state.pt`` into ``checkpoint-N/`` (main process) and
``on_train_begin`` restores it when training resumes, so a resumed run keeps the targets of the
refresh it was in instead of recomputing them with a different model.
"""

from __future__ import annotations

import math
import os
from typing import Optional

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .context import CalibrationContext
from .distributed import dist_info
from .em import STATE_FILE, EMState
from .estep import EStepData, run_estep

#: set to a directory to make every rank save each refresh's EMState there (tests / debugging)
DEBUG_DUMP_ENV = "AXOLOTL_CALIB_DEBUG_DUMP_DIR"

try:  # axolotl's logger when available (the callback is only used inside axolotl anyway)
    from axolotl.utils.logging import get_logger

    LOG = get_logger(__name__)
except Exception:  # pragma: no cover
    import logging

    LOG = logging.getLogger(__name__)


# ---------------------------------------------------------------------- the callback
class EMRefreshCallback(TrainerCallback):
    """Runs the E-step + M-step on schedule and keeps ``calib.em_state`` (the shared context) up to date.

    Logs after each refresh (``trainer.log``): ``calib/train_conf_ece``, ``calib/train_acc``,
    ``calib/refresh``, ``calib/n_samples`` and per bin m ``calib/bin_count_m``,
    ``calib/bin_acc_m`` (q_m), ``calib/bin_conf_m`` (non-empty bins only).
    """

    def __init__(self, calib: CalibrationContext, trainer):
        self.calib = calib
        self.trainer = trainer
        self.settings = calib.settings
        self.refresh = self.settings.calib_refresh
        self._data: Optional[EStepData] = None
        self.history: list[dict] = []  # summaries of every refresh of this process (tests, debugging)

    # ---- the refresh itself --------------------------------------------------------------------
    def _estep_model(self):
        tr = self.trainer
        wrapped = getattr(tr, "model_wrapped", None)
        try:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP1

            if isinstance(wrapped, FSDP1):
                return wrapped  # FSDP1 gathers parameters only in the wrapper's forward
        except ImportError:  # pragma: no cover
            pass
        return tr.model  # DDP: the bare module (no grad sync, no buffer broadcast needed)

    def _sharded_params(self) -> bool:
        tr = self.trainer
        return bool(getattr(tr, "is_fsdp_enabled", False) or getattr(tr, "is_deepspeed_enabled", False))

    def refresh_now(self, state, epoch: int) -> EMState:
        """Run E-step + M-step now, install the result in the shared context, log it."""
        tr = self.trainer
        if self._data is None:
            self._data = EStepData(tr.train_dataset)
            if len(self._data) != self._data.n_rows:
                LOG.info("calib E-step: %d answer positions in %d training rows", len(self._data), self._data.n_rows)
        model = self._estep_model()
        unwrapped = tr.model
        was_training = unwrapped.training
        tok = tr.processing_class
        pad_id = getattr(tok, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(tok, "eos_token_id", None) or 0
        unwrapped.eval()
        try:
            out = run_estep(model, self._data, list(self.calib.option_ids),
                            batch_size=self.settings.calib_estep_batch_size, device=tr.args.device,
                            pad_id=int(pad_id), use_inference_mode=not self._sharded_params(),
                            show_progress=not getattr(tr.args, "disable_tqdm", False))
        finally:
            unwrapped.train(was_training)
        prev = self.calib.em_state
        em_state = EMState.from_estep(
            out["sample_ids"], out["probs"], out["labels"], out["num_options"], n_bins=self.settings.calib_bins,
            split=self.settings.calib_nonmax_split, refresh_count=(prev.refresh_count + 1) if prev else 1,
            epoch_refreshed=epoch, global_step=int(state.global_step),
        )
        self.calib.em_state = em_state
        dump_dir = os.environ.get(DEBUG_DUMP_ENV)
        if dump_dir:  # per-rank copies, to check that every rank holds the same state
            os.makedirs(dump_dir, exist_ok=True)
            em_state.save(os.path.join(dump_dir, f"refresh{em_state.refresh_count}_rank{dist_info()[0]}.pt"))
        summary = em_state.summary()
        self.history.append({**summary, "global_step": int(state.global_step), "epoch": epoch})
        LOG.info("calib EM refresh %d (epoch %d, step %d): train conf-ECE %.4f, acc %.4f",
                 em_state.refresh_count, epoch, state.global_step, summary["calib/train_conf_ece"],
                 summary["calib/train_acc"])
        # Trainer.log fires on_log, which clears control.should_log; a refresh inside on_step_end would
        # otherwise swallow that step's loss log (a gap in the loss curve), so keep the flag as it was.
        should_log = tr.control.should_log
        tr.log(dict(summary))
        tr.control.should_log = should_log
        return em_state

    # ---- schedule ------------------------------------------------------------------------------
    @staticmethod
    def _epoch_index(state) -> int:
        return int(math.floor((state.epoch or 0.0) + 1e-6))

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0 and self.calib.em_state is None:
            self._restore(args, state)
        return control

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = self._epoch_index(state)
        cur = self.calib.em_state
        if self.refresh == "epoch":
            if cur is None or cur.epoch_refreshed != epoch:
                self.refresh_now(state, epoch)
        elif cur is None:
            self.refresh_now(state, epoch)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.refresh != "epoch" and state.global_step % int(self.refresh) == 0 \
                and state.global_step < state.max_steps:
            self.refresh_now(state, self._epoch_index(state))
        return control

    # ---- checkpoints ---------------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        em_state = self.calib.em_state
        if em_state is None or not state.is_world_process_zero:
            return control
        ckpt = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(ckpt):
            em_state.save(os.path.join(ckpt, STATE_FILE))
        else:
            LOG.warning("calib: checkpoint dir %s not found; calib_state.pt not written", ckpt)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        em_state = self.calib.em_state
        if em_state is not None and state.is_world_process_zero and os.path.isdir(args.output_dir):
            em_state.save(os.path.join(args.output_dir, STATE_FILE))
        return control

    def _resume_candidates(self, args, state) -> list[str]:
        out = []
        src = self.calib.resume_from
        if src is True:
            src = get_last_checkpoint(args.output_dir)
        for c in (src, self.calib.cfg_resume_from,
                  os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")):
            if isinstance(c, (str, os.PathLike)) and c:
                out.append(os.path.join(os.fspath(c), STATE_FILE))
        return out

    def _restore(self, args, state) -> None:
        for path in self._resume_candidates(args, state):
            if os.path.isfile(path):
                em_state = EMState.load(path)
                if em_state.global_step > state.global_step:
                    LOG.warning("calib: %s is newer (step %d) than the resumed step %d; ignored",
                                path, em_state.global_step, state.global_step)
                    continue
                self.calib.em_state = em_state
                LOG.info("calib: restored EM state (refresh %d, epoch %d, step %d) from %s",
                         em_state.refresh_count, em_state.epoch_refreshed, em_state.global_step, path)
                return
        LOG.warning("calib: resuming at step %d without a calib_state.pt; the targets will be recomputed "
                    "with the resumed model", state.global_step)


__all__ = ["DEBUG_DUMP_ENV", "EMRefreshCallback"]
