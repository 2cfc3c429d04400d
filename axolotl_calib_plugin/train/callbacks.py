"""``EMRefreshCallback``: WHEN the E-step / M-step of Algorithm 1 run, and the EM state in checkpoints.

Schedule: at the start of every epoch (``calib_refresh: epoch``, the paper's Algorithm 1, Sec. 4) or
every N optimizer steps (``calib_refresh: N``; also once before the first step). Never just once.

A refresh runs the E-step (:func:`~axolotl_calib_plugin.train.estep.run_estep`: every training sample's
option probabilities under the current model, identical on every rank), then the M-step
(:meth:`~axolotl_calib_plugin.train.em.EMState.from_estep`: bins, per-bin accuracy, targets), and stores the
result in the run's :class:`~axolotl_calib_plugin.train.context.CalibrationContext`, where the trainer's loss
reads it.

Checkpoints: ``on_save`` writes ``calib_state.pt`` into ``checkpoint-N/`` (main process) and
``on_train_begin`` restores it when training resumes, so a resumed run keeps the targets of the
refresh it was in instead of recomputing them with a different model.

What each step does lives elsewhere: the exact E-step in :mod:`.estep`, the online table in :mod:`.online`,
the M-step in :mod:`.em`, the resume checks in :mod:`.resume_check`; this module decides when.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Optional

import numpy as np
import torch

from axolotl.utils.logging import get_logger
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..eval.report import SETTINGS_FILE, training_settings
from .context import CalibrationContext
from .distributed import all_reduce_sum, dist_info
from .em import STATE_FILE, EMState
from .estep import EStepData, eval_split_data, first_estep_entries, trainer_estep_probs
from .head import install_head_capture, remove_head_capture
from .online import TABLE_IDS
from .resume_check import check_same_data, record

#: one JSON line per refresh (per-bin training vs held-out statistics), in output_dir
REFRESH_LOG = "calib_refresh.jsonl"
#: below this many prompts measured by a subsampled first E-step, its bin accuracies are too noisy to trust: warn
FEW_MEASURED = 100
#: set to a directory to make every rank save each refresh's EMState there (tests / debugging)
DEBUG_DUMP_ENV = "AXOLOTL_CALIB_DEBUG_DUMP_DIR"

LOG = get_logger(__name__)


# ---------------------------------------------------------------------- the callback
def _debug_dump(em_state: EMState, tag: str) -> None:
    """With ``DEBUG_DUMP_ENV`` set, this rank's copy of ``em_state`` as ``<tag>_rank<r>.pt`` there, so a test can check
    that every rank holds the same state."""
    dump_dir = os.environ.get(DEBUG_DUMP_ENV)
    if dump_dir:
        os.makedirs(dump_dir, exist_ok=True)
        em_state.save(os.path.join(dump_dir, f"{tag}_rank{dist_info()[0]}.pt"))


class EMRefreshCallback(TrainerCallback):
    """Runs the E-step + M-step on schedule and keeps ``calib.em_state`` (the shared context) up to date.

    Logs after each refresh (``trainer.log``, shown as ``train/calib/...``): ``calib/conf_ece``, ``calib/acc``,
    ``calib/n`` (training rows), ``calib/refresh``, ``calib/estep_online``, ``calib/refresh_seconds`` (+ the
    held-out ones, see :meth:`EMState.summary`); the per-bin numbers go to ``calib_refresh.jsonl`` and, when
    TensorBoard / W&B is on, to one figure ``calib/bins`` per refresh.
    """

    def __init__(self, calib: CalibrationContext, trainer):
        self.calib = calib
        self.trainer = trainer
        self.settings = calib.settings
        self.refresh = self.settings.calib_refresh
        self._data: Optional[EStepData] = None
        self._heldout_data: Optional[EStepData] = None
        self.history: list[dict] = []  # summaries of every refresh of this process (tests, debugging)

    # ---- the refresh itself --------------------------------------------------------------------
    def _estep_data(self) -> EStepData:
        if self._data is None:
            self._data = EStepData(self.trainer.train_dataset)
            if len(self._data) != self._data.n_rows:
                LOG.info("calib E-step: %d answer positions in %d training rows", len(self._data), self._data.n_rows)
        return self._data

    def _exact_probs(self, data: Optional[EStepData] = None, desc: str = "calib E-step") -> torch.Tensor:
        """The exact E-step over ``data`` (default: the training set) under the current model."""
        return trainer_estep_probs(self.trainer, data if data is not None else self._estep_data(), self.calib.option_ids,
                                   self.settings.calib_estep_batch_size, desc=desc)

    def _measured_probs(self, prev: Optional[EMState], state) -> torch.Tensor:
        """The exact E-step, or, for the first refresh of a run with ``calib_first_estep_fraction`` < 1, the exact
        E-step over that fraction of the prompts and NaN rows for the rest (their epoch-0 targets are live)."""
        fraction = self.calib.first_estep_fraction(getattr(self.trainer, "eval_dataset", None))
        data = self._estep_data()
        if prev is not None or fraction >= 1.0 or int(state.global_step) > 0:
            return self._exact_probs()
        entries = first_estep_entries(data.sample_id, fraction, int(getattr(self.trainer.args, "seed", 0) or 0))
        if len(entries) == len(data):
            return self._exact_probs()
        n_prompts = int(np.unique(data.sample_id[entries]).size)
        if n_prompts < FEW_MEASURED:
            LOG.warning("calib first E-step: calib_first_estep_fraction %s measures only %d prompts, so each bin's "
                        "accuracy in epoch 0 rests on a handful of them; raise calib_first_estep_fraction (1 measures "
                        "all %d)", fraction, n_prompts, int(np.unique(data.sample_id).size))
        probs = torch.full((len(data), len(self.calib.option_ids)), float("nan"))
        probs[torch.from_numpy(entries)] = self._exact_probs(data.subset(entries), desc="calib first E-step (subset)")
        return probs

    def _heldout_rows(self, state) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(probs, labels, num_options) of the eval split under the current model, for the held-out M-step: the
        latest evaluation's when it ran at this very step (no extra forward), else one E-step forward over it."""
        if not self.calib.needs_heldout(getattr(self.trainer, "eval_dataset", None)):
            return None
        cached = self.calib.last_eval
        if cached is not None and cached[0] == int(state.global_step):
            return cached[1], cached[2], cached[3]
        if self._heldout_data is None:
            self._heldout_data = eval_split_data(self.trainer.eval_dataset)
        probs = self._exact_probs(self._heldout_data, desc="calib held-out")
        return probs, torch.from_numpy(self._heldout_data.answer_idx), torch.from_numpy(self._heldout_data.num_options)

    def _write_bin_table(self, em_state: EMState, epoch: int, step: int) -> None:
        """One JSON line per refresh in ``output_dir/calib_refresh.jsonl``: per bin the training-row count, accuracy
        and confidence, the held-out count and accuracy, and the q the targets used (main process only)."""
        out_dir = getattr(self.trainer.args, "output_dir", None)
        if dist_info()[0] != 0 or not out_dir or not os.path.isdir(out_dir):
            return
        rec = {"refresh": em_state.refresh_count, "epoch": epoch, "global_step": step, "bins": em_state.bin_table()}
        if "temperature" in em_state.extra:
            rec["temperature"] = float(em_state.extra["temperature"])
        with open(os.path.join(out_dir, REFRESH_LOG), "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, allow_nan=False) + "\n")

    def refresh_now(self, state, epoch: int) -> EMState:
        """Run E-step + M-step now, install the result in the shared context, log it."""
        tr = self.trainer
        data = self._estep_data()
        prev = self.calib.em_state
        online = (self.calib.online is not None and prev is not None and TABLE_IDS in prev.extra)
        t0 = time.perf_counter()
        seen = None
        if online:
            probs, seen = self.calib.online.table_probs(prev.extra, torch.from_numpy(data.sample_id), tr.args.device,
                                                        len(self.calib.option_ids))
        else:
            probs = self._measured_probs(prev, state)
        heldout = self._heldout_rows(state)
        em_state = EMState.from_estep(
            torch.from_numpy(data.sample_id), probs, torch.from_numpy(data.answer_idx),
            torch.from_numpy(data.num_options), n_bins=self.settings.calib_bins,
            split=self.settings.calib_nonmax_split, refresh_count=(prev.refresh_count + 1) if prev else 1,
            epoch_refreshed=epoch, global_step=int(state.global_step), heldout=heldout,
            bin_accuracy=self.calib.bin_accuracy(getattr(self.trainer, "eval_dataset", None)),
            targets_kind=self.settings.calib_targets,
            prior=self.settings.calib_heldout_prior,
        )
        record(em_state.extra, self.settings, torch.from_numpy(data.sample_id), torch.from_numpy(data.answer_idx),
               torch.from_numpy(data.num_options))
        if seen is not None:  # samples not seen since the last refresh keep their previous target
            unseen = ~torch.isin(em_state.sample_ids, seen)
            if bool(unseen.any()):
                em_state.targets[unseen] = prev.lookup(em_state.sample_ids[unseen]).to(em_state.targets.dtype)
        if self.calib.online is not None:
            self.calib.online.keep_table(em_state.extra, em_state.sample_ids, torch.from_numpy(data.sample_id), probs)
        self.calib.em_state = em_state
        self._write_bin_table(em_state, epoch, int(state.global_step))
        _debug_dump(em_state, f"refresh{em_state.refresh_count}")
        summary = em_state.summary()
        summary["calib/estep_online"] = int(online)
        summary["calib/refresh_seconds"] = round(time.perf_counter() - t0, 4)
        if seen is not None:
            summary["calib/online_seen"] = int(seen.numel())
        if em_state.has_live:
            summary["calib/live_targets"] = int(torch.isnan(em_state.targets).all(dim=1).sum())
        self.history.append({**summary, "global_step": int(state.global_step), "epoch": epoch})
        LOG.info("calib EM refresh %d (%s E-step, epoch %d, step %d): train conf-ECE %.4f, acc %.4f",
                 em_state.refresh_count, "online" if online else "exact", epoch, state.global_step,
                 summary["calib/conf_ece"], summary["calib/acc"])
        # Trainer.log fires on_log, which clears control.should_log; a refresh inside on_step_end would
        # otherwise swallow that step's loss log (a gap in the loss curve), so keep the flag as it was.
        should_log = tr.control.should_log
        tr.log(dict(summary))
        tr.control.should_log = should_log
        self._log_bins_figure(em_state)
        return em_state

    def _log_bins_figure(self, em_state: EMState) -> None:
        """One reliability figure of this refresh's bins (training rows, and held-out rows when read) to
        TensorBoard / W&B as ``calib/bins`` (PNG in ``output_dir/calib_refresh/``); main process, only when
        such a logger is on. Replaces a dozen scalars per bin."""
        from ..eval.plots import plot_bins, stats_view
        from .heldout import has_image_logger, log_figure

        callbacks = getattr(getattr(self.trainer, "callback_handler", None), "callbacks", ())  # () in script use
        out_dir = getattr(self.trainer.args, "output_dir", None)
        if dist_info()[0] != 0 or not out_dir or not has_image_logger(callbacks):
            return
        views = {"training rows": stats_view(em_state.bin_count, em_state.bin_accuracy, em_state.bin_confidence)}
        held = em_state.heldout_stats
        if held is not None:
            views["held-out rows"] = stats_view(held.count, held.accuracy, held.confidence)
        step = em_state.global_step
        path = os.path.join(out_dir, "calib_refresh", f"bins_refresh{em_state.refresh_count}.png")
        fig = plot_bins(views, path, title=f"EM refresh {em_state.refresh_count} (step {step}): rows binned by the model's max probability")
        log_figure(callbacks, "calib/bins", fig, path, step)

    # ---- schedule ------------------------------------------------------------------------------
    @staticmethod
    def _epoch_index(state) -> int:
        return int(math.floor((state.epoch or 0.0) + 1e-6))

    def on_train_begin(self, args, state, control, **kwargs):
        # The model is wrapped (FSDP / DeepSpeed) by now: hook its output head before the first training step,
        # so every step takes the option rows inside the head's own forward (idempotent).
        install_head_capture(self.trainer.model, self.calib.option_ids)
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
        self._restart_training_bar()
        return control

    def _restart_training_bar(self) -> None:
        """Restart the clock of the training progress bar while it still stands at 0 steps: the bar starts before
        the first E-step (and the evaluation Axolotl runs at step 0 with eval_steps), which have bars of their own;
        counted in the first step, they made the first ETA several times the real one."""
        for cb in getattr(getattr(self.trainer, "callback_handler", None), "callbacks", ()):
            bar = getattr(cb, "training_bar", None)
            if bar is not None and getattr(bar, "n", None) == 0 and callable(getattr(bar, "reset", None)):
                bar.reset()

    def on_step_end(self, args, state, control, **kwargs):
        cur = self.calib.em_state
        if cur is not None and cur.has_live and dist_info()[1] > 1:  # every rank, every step: a collective
            cur.sync_live(lambda t: all_reduce_sum(t, args.device))
        if self.refresh != "epoch" and state.global_step % int(self.refresh) == 0 \
                and state.global_step < state.max_steps:
            self.refresh_now(state, self._epoch_index(state))
        return control

    # ---- checkpoints ---------------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        em_state = self.calib.em_state
        if em_state is None:
            return control
        if self.calib.online is not None:  # every rank (a collective), so a resume mid-interval keeps the record
            self.calib.online.save_into(em_state.extra, args.device, len(self.calib.option_ids))
        if not state.is_world_process_zero:
            return control
        ckpt = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(ckpt):
            em_state.save(os.path.join(ckpt, STATE_FILE))
            self._write_settings(ckpt)
        else:
            LOG.warning("calib: checkpoint dir %s not found; calib_state.pt not written", ckpt)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        remove_head_capture(self.trainer.model)  # installed at on_train_begin; an evaluation re-installs them
        em_state = self.calib.em_state
        if em_state is not None:
            _debug_dump(em_state, "final")  # live statistics included
        if em_state is not None and state.is_world_process_zero and os.path.isdir(args.output_dir):
            em_state.save(os.path.join(args.output_dir, STATE_FILE))
            self._write_settings(args.output_dir)
        return control

    def _write_settings(self, folder: str) -> None:
        """The row settings ``axolotl-calib eval`` reads to score this model with its training letters / format."""
        with open(os.path.join(folder, SETTINGS_FILE), "w", encoding="utf-8") as fh:
            json.dump(training_settings(self.settings, getattr(self.trainer, "processing_class", None)), fh, indent=1)

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
                em_state = EMState.load(path)  # CalibStateError (file + remedy) if corrupted
                if em_state.global_step > state.global_step:
                    LOG.warning("calib: %s is newer (step %d) than the resumed step %d; ignored",
                                path, em_state.global_step, state.global_step)
                    continue
                check_same_data(em_state, path, self.settings, self._estep_data())
                self.calib.em_state = em_state
                if self.calib.online is not None:
                    self.calib.online.restore_from(em_state.extra)
                LOG.info("calib: restored EM state (refresh %d, epoch %d, step %d) from %s",
                         em_state.refresh_count, em_state.epoch_refreshed, em_state.global_step, path)
                return
        LOG.warning("calib: resuming at step %d without a calib_state.pt; the targets will be recomputed "
                    "with the resumed model", state.global_step)


__all__ = ["DEBUG_DUMP_ENV", "EMRefreshCallback", "REFRESH_LOG"]
