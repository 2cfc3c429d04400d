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
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Optional

import torch

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .context import CalibrationContext
from .distributed import dist_info
from .em import STATE_FILE, EMState
from .estep import EStepData, run_estep
from .loss import install_head_capture
from .resume_check import check_resume, record, resume_problems

#: one JSON line per refresh (per-bin training vs held-out statistics), in output_dir
REFRESH_LOG = "calib_refresh.jsonl"
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
        self._heldout_data: Optional[EStepData] = None
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

    def _estep_data(self) -> EStepData:
        if self._data is None:
            self._data = EStepData(self.trainer.train_dataset)
            if len(self._data) != self._data.n_rows:
                LOG.info("calib E-step: %d answer positions in %d training rows", len(self._data), self._data.n_rows)
        return self._data

    def _exact_probs(self, data: Optional[EStepData] = None, desc: str = "calib E-step") -> torch.Tensor:
        """The exact E-step: (n, L) option probabilities of every answer position of ``data`` (default: the
        training set) under the current model."""
        tr = self.trainer
        model = self._estep_model()
        unwrapped = tr.model
        was_training = unwrapped.training
        tok = tr.processing_class
        pad_id = getattr(tok, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(tok, "eos_token_id", None) or 0
        unwrapped.eval()
        try:
            out = run_estep(model, data if data is not None else self._estep_data(), list(self.calib.option_ids),
                            batch_size=self.settings.calib_estep_batch_size, device=tr.args.device,
                            pad_id=int(pad_id), use_inference_mode=not self._sharded_params(),
                            show_progress=not getattr(tr.args, "disable_tqdm", False), desc=desc)
        finally:
            unwrapped.train(was_training)
        return out["probs"]

    def _online_probs(self, prev: EMState) -> tuple[torch.Tensor, torch.Tensor]:
        """The online E-step: merge the record of the training forwards (gathered over ranks) into the
        latest probabilities of every sample; returns (n, L) entry probabilities and the sample ids seen."""
        data = self._estep_data()
        width = len(self.calib.option_ids)
        ids, probs = self.calib.online.collect(self.trainer.args.device, width)
        table_ids, table = prev.extra["online_table_ids"], prev.extra["online_table_probs"].clone()
        if ids.numel():
            pos = torch.searchsorted(table_ids, ids).clamp(max=table_ids.numel() - 1)
            hit = table_ids[pos] == ids
            table[pos[hit]] = probs[hit][:, : table.shape[1]]
            ids = ids[hit]
        entry_pos = torch.searchsorted(table_ids, torch.from_numpy(data.sample_id))
        return table[entry_pos], ids

    def _heldout_rows(self, state) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(probs, labels, num_options) of the eval split under the current model, for the held-out M-step: the
        latest evaluation's when it ran at this very step (no extra forward), else one E-step forward over it."""
        if not self.calib.needs_heldout:
            return None
        cached = self.calib.last_eval
        if cached is not None and cached[0] == int(state.global_step):
            return cached[1], cached[2], cached[3]
        if self._heldout_data is None:
            self._heldout_data = _heldout_estep_data(self.trainer.eval_dataset)
        probs = self._exact_probs(self._heldout_data, desc="calib held-out")
        return probs, torch.from_numpy(self._heldout_data.answer_idx), torch.from_numpy(self._heldout_data.num_options)

    def _write_bin_table(self, em_state: EMState, epoch: int, step: int) -> None:
        """One JSON line per refresh in ``output_dir/calib_refresh.jsonl``: per bin the training-row count, accuracy
        and confidence, the held-out count and accuracy, and the q the targets used (main process only)."""
        if not self.trainer.is_world_process_zero() or not os.path.isdir(self.trainer.args.output_dir):
            return
        rec = {"refresh": em_state.refresh_count, "epoch": epoch, "global_step": step, "bins": em_state.bin_table()}
        if "temperature" in em_state.extra:
            rec["temperature"] = float(em_state.extra["temperature"])
        with open(os.path.join(self.trainer.args.output_dir, REFRESH_LOG), "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, allow_nan=False) + "\n")

    def refresh_now(self, state, epoch: int) -> EMState:
        """Run E-step + M-step now, install the result in the shared context, log it."""
        tr = self.trainer
        data = self._estep_data()
        prev = self.calib.em_state
        online = (self.calib.online is not None and prev is not None and "online_table_ids" in prev.extra)
        t0 = time.perf_counter()
        seen = None
        if online:
            probs, seen = self._online_probs(prev)
        else:
            probs = self._exact_probs()
        heldout = self._heldout_rows(state)
        em_state = EMState.from_estep(
            torch.from_numpy(data.sample_id), probs, torch.from_numpy(data.answer_idx),
            torch.from_numpy(data.num_options), n_bins=self.settings.calib_bins,
            split=self.settings.calib_nonmax_split, refresh_count=(prev.refresh_count + 1) if prev else 1,
            epoch_refreshed=epoch, global_step=int(state.global_step), heldout=heldout,
            bin_accuracy=self.settings.calib_bin_accuracy, targets_kind=self.settings.calib_targets,
            prior=self.settings.calib_heldout_prior,
        )
        record(em_state.extra, self.settings, torch.from_numpy(data.sample_id), torch.from_numpy(data.answer_idx),
               torch.from_numpy(data.num_options))
        if seen is not None:  # samples not seen since the last refresh keep their previous target
            unseen = ~torch.isin(em_state.sample_ids, seen)
            if bool(unseen.any()):
                em_state.targets[unseen] = prev.lookup(em_state.sample_ids[unseen]).to(em_state.targets.dtype)
        if self.calib.online is not None:
            # the latest probabilities of every distinct prompt (one row per sample id, as the targets)
            first = torch.searchsorted(torch.from_numpy(data.sample_id).sort().values, em_state.sample_ids)
            order = torch.from_numpy(data.sample_id).argsort(stable=True)
            em_state.extra["online_table_ids"] = em_state.sample_ids.clone()
            em_state.extra["online_table_probs"] = probs[order[first]].to(torch.float32).clone()
            self.calib.online.clear()
        self.calib.em_state = em_state
        self._write_bin_table(em_state, epoch, int(state.global_step))
        dump_dir = os.environ.get(DEBUG_DUMP_ENV)
        if dump_dir:  # per-rank copies, to check that every rank holds the same state
            os.makedirs(dump_dir, exist_ok=True)
            em_state.save(os.path.join(dump_dir, f"refresh{em_state.refresh_count}_rank{dist_info()[0]}.pt"))
        summary = em_state.summary()
        summary["calib/estep_online"] = int(online)
        summary["calib/refresh_seconds"] = round(time.perf_counter() - t0, 4)
        if seen is not None:
            summary["calib/online_seen"] = int(seen.numel())
        self.history.append({**summary, "global_step": int(state.global_step), "epoch": epoch})
        LOG.info("calib EM refresh %d (%s E-step, epoch %d, step %d): train conf-ECE %.4f, acc %.4f",
                 em_state.refresh_count, "online" if online else "exact", epoch, state.global_step,
                 summary["calib/train_conf_ece"], summary["calib/train_acc"])
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
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.refresh != "epoch" and state.global_step % int(self.refresh) == 0 \
                and state.global_step < state.max_steps:
            self.refresh_now(state, self._epoch_index(state))
        return control

    # ---- checkpoints ---------------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        em_state = self.calib.em_state
        if em_state is None:
            return control
        if self.calib.online is not None:
            # every rank: the record of the interval so far (a collective), so a resume mid-interval keeps it
            ids, probs = self.calib.online.collect(args.device, len(self.calib.option_ids))
            em_state.extra["online_record_ids"], em_state.extra["online_record_probs"] = ids, probs
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
        em_state = self.calib.em_state
        if em_state is not None and state.is_world_process_zero and os.path.isdir(args.output_dir):
            em_state.save(os.path.join(args.output_dir, STATE_FILE))
            self._write_settings(args.output_dir)
        return control

    def _write_settings(self, folder: str) -> None:
        """The row settings ``axolotl-calib eval`` reads to score this model with its training letters / format."""
        import json

        from ..eval.report import SETTINGS_FILE, training_settings

        with open(os.path.join(folder, SETTINGS_FILE), "w", encoding="utf-8") as fh:
            json.dump(training_settings(self.settings), fh, indent=1)

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
                self._check_same_data(em_state, path)
                self.calib.em_state = em_state
                if self.calib.online is not None and "online_record_ids" in em_state.extra:
                    self.calib.online.restore(em_state.extra.pop("online_record_ids"),
                                              em_state.extra.pop("online_record_probs"))
                LOG.info("calib: restored EM state (refresh %d, epoch %d, step %d) from %s",
                         em_state.refresh_count, em_state.epoch_refreshed, em_state.global_step, path)
                return
        LOG.warning("calib: resuming at step %d without a calib_state.pt; the targets will be recomputed "
                    "with the resumed model", state.global_step)

    def _check_same_data(self, em_state: EMState, path: str) -> None:
        """Stop before the first step when the training data is not the data the checkpoint was trained on."""
        ids = torch.unique(torch.from_numpy(self._estep_data().sample_id))
        missing = ids[~torch.isin(ids, em_state.sample_ids)]
        stale = em_state.sample_ids[~torch.isin(em_state.sample_ids, ids)]
        if missing.numel() or stale.numel():
            raise ValueError(
                f"the training data changed since {path} was written: {missing.numel()} of {ids.numel()} training "
                f"prompts have no target in it and {stale.numel()} of its {em_state.sample_ids.numel()} targets belong "
                "to prompts no longer in the data. Either resume with the data that checkpoint was trained on (the "
                "same files and dataset_prepared_path), or delete that calib_state.pt to recompute the targets for the "
                "new data with the resumed model, or start a fresh run (a new output_dir, no resume)."
            )
        check_resume(path, resume_problems(em_state.extra, self.settings, em_state.sample_ids, self._estep_data()))


def _heldout_estep_data(eval_dataset) -> EStepData:
    """The answer positions of the eval split(s) (a dict of eval sets is pooled), or a clear error without them."""
    sets = list(eval_dataset.values()) if isinstance(eval_dataset, dict) else [eval_dataset]
    sets = [d for d in sets if d is not None and "calib_sample_id" in getattr(d, "column_names", ())]
    if not sets:
        raise ValueError(
            "calib_bin_accuracy: heldout / calib_targets: temperature need the eval split's MCQ rows, but the trainer "
            "has no eval dataset with calib_* columns: add test_datasets (type: axolotl_calib_plugin.mcq) or "
            "val_set_size > 0."
        )
    if len(sets) > 1:
        from datasets import concatenate_datasets

        sets = [concatenate_datasets(sets)]
    data = EStepData(sets[0])
    if len(data) == 0:
        raise ValueError("the eval split has no answer positions (calib_sample_id >= 0) for the held-out M-step")
    return data


def _resume_checkpoint(cfg) -> Optional[str]:
    """The checkpoint Axolotl will resume from (``resume_from_checkpoint``, else with
    ``auto_resume_from_checkpoints`` the highest ``output_dir/checkpoint-N``), without changing ``cfg``."""
    ckpt = cfg.get("resume_from_checkpoint")
    if ckpt:
        return str(ckpt)
    if cfg.get("auto_resume_from_checkpoints") and cfg.get("output_dir") and os.path.isdir(cfg["output_dir"]):
        return get_last_checkpoint(cfg["output_dir"])
    return None


def _prepared_sample_ids(cfg) -> Optional[torch.Tensor]:
    """Sample ids of the prepared (tokenized) training data Axolotl saved for this config, or None when it
    cannot be found (no prepared-data folder, streaming data, another Axolotl layout)."""
    try:
        from axolotl.utils.data.shared import generate_dataset_hash_from_config, get_prepared_dataset_path
        from datasets import load_from_disk

        tokenizer = cfg.get("tokenizer_config") or cfg.get("base_model_config") or cfg.get("base_model")
        path = get_prepared_dataset_path(cfg, generate_dataset_hash_from_config(cfg, cfg.get("datasets"), tokenizer))
        if not os.path.isdir(path):
            return None
        ds = load_from_disk(str(path))
        return torch.unique(torch.from_numpy(EStepData(ds).sample_id)) if "calib_sample_id" in ds.column_names else None
    except Exception as e:  # the early check is a convenience: the same check runs when training starts
        LOG.debug("calib: prepared data not found for the early resume check (%s)", e)
        return None


def check_resume_state_early(cfg) -> None:
    """Before the model loads: read the resumed checkpoint's ``calib_state.pt`` (a corrupted file fails here,
    naming it) and check that every prompt it has a target for is still in the prepared training data (an
    edit of the data shows here; rows only ADDED, and data Axolotl did not save, show at the first step)."""
    ckpt = _resume_checkpoint(cfg)
    path = os.path.join(ckpt, STATE_FILE) if ckpt else None
    if not path or not os.path.isfile(path):
        return
    state = EMState.load(path)
    from .args import CalibrationArgs

    check_resume(path, resume_problems(state.extra, CalibrationArgs.from_cfg(cfg)))  # settings: before the model loads
    ids = _prepared_sample_ids(cfg)
    if ids is None:
        return
    stale = state.sample_ids[~torch.isin(state.sample_ids, ids)]
    if stale.numel():
        raise ValueError(
            f"the training data changed since {path} was written: {stale.numel()} of its "
            f"{state.sample_ids.numel()} targets belong to prompts that are no longer in the data. Either resume with "
            "the data that checkpoint was trained on (the same files and dataset_prepared_path), or delete that "
            "calib_state.pt to recompute the targets for the new data with the resumed model, or start a fresh run "
            "(a new output_dir, no resume)."
        )


__all__ = ["DEBUG_DUMP_ENV", "EMRefreshCallback", "REFRESH_LOG", "check_resume_state_early"]
