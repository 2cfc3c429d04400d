"""``AxolotlCalibTrainer``: Axolotl's trainer plus the ECE term of CFT / RCFT.

total = L_SFT + calib_lambda * L_ECE, from ONE forward pass:

* L_SFT is the model's own cross-entropy over the dataset ``labels``. Which tokens it covers is
  decided at tokenization time by ``train_on_inputs`` (set from ``calib_sft_scope``): answer only
  for CFT, prompt + answer for RCFT.
* L_ECE compares, at every answer position (``calib_sample_id >= 0``; several per row when
  packed), the model's softmax over the K option letters with the fixed target of that sample
  from the current :class:`~axolotl_calib_plugin.train.em_state.EMState` (set by the EM-refresh callback).
  The option logits come from ``hidden_states[-1]`` times the K letter rows of the output head
  (:func:`~axolotl_calib_plugin.train.head.option_logits`), so no extra forward and no full-vocabulary
  logits are needed.

Subclassing :class:`AxolotlTrainer` (not ``transformers.Trainer``) keeps Axolotl's packing,
sampler, scheduler, optimizer and checkpoint mixins.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from typing_extensions import override

from axolotl.core.trainers.base import AxolotlTrainer
from axolotl.utils.logging import get_logger

from .columns import CALIB_COLUMNS, answer_positions
from .context import CalibrationContext
from .distributed import dist_info
from .eval_calibration import calibration_values, held_out_rows
from .head import captured_option_logits, option_logits
from .loss import check_finite, ece_loss, option_probs

LOG = get_logger(__name__)


class AxolotlCalibTrainer(AxolotlTrainer):
    """Axolotl trainer with the calibration (ECE) term and its logging.

    ``calib`` is the run's :class:`~axolotl_calib_plugin.train.context.CalibrationContext` (resolved settings,
    letter ids, the current EM state), attached by the plugin's ``add_callbacks_post_trainer`` hook
    (:meth:`attach_calibration`) and shared with :class:`~axolotl_calib_plugin.train.callbacks.EMRefreshCallback`.
    """

    tag_names = ["axolotl", "calibration"]

    def __init__(self, *args, calib: Optional[CalibrationContext] = None, **kwargs):
        super().__init__(*args, **kwargs)
        # Per-micro-batch means + HF's division by the accumulation steps: a per-batch ECE term is
        # only consistent when the loss is NOT normalised by num_items_in_batch across micro-batches
        # (with model_accepts_loss_kwargs=True HF skips that division and scales by world size).
        self.model_accepts_loss_kwargs = False
        self.calib: Optional[CalibrationContext] = calib
        self._calib_ids_tensor: Optional[torch.Tensor] = None
        self._calib_path_checked: set[str] = set()  # logit sources already checked against the full logits
        self._calib_use_full_logits = False
        self._calib_parts: list = []
        self._calib_eval: list = []

    def attach_calibration(self, calib: CalibrationContext) -> None:
        """Install the run's shared calibration context (done once, by the plugin)."""
        self.calib = calib
        self._calib_ids_tensor = None

    def _require_calib(self) -> CalibrationContext:
        if self.calib is None:
            raise RuntimeError(
                "AxolotlCalibTrainer has no calibration context: it is attached by CalibrationPlugin's "
                "add_callbacks_post_trainer hook (list the plugin under `plugins:`), or call "
                "trainer.attach_calibration(CalibrationContext.from_cfg(cfg, tokenizer, [train_dataset]))"
            )
        return self.calib

    # ------------------------------------------------------------------ data
    @override
    def _set_signature_columns_if_needed(self):
        """Keep the per-token calib_* columns through ``remove_unused_columns`` (as kd does)."""
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None:
            for col in CALIB_COLUMNS:
                if col not in self._signature_columns:
                    self._signature_columns.append(col)

    @override
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        if self.calib is not None:
            self.calib.resume_from = resume_from_checkpoint
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    # ------------------------------------------------------------------ loss
    def _option_id_tensor(self, device) -> torch.Tensor:
        cached = self._calib_ids_tensor
        if cached is None or cached.device != device:
            cached = torch.as_tensor(self._require_calib().option_ids, dtype=torch.long, device=device)
            self._calib_ids_tensor = cached
        return cached

    def _answer_option_logits(self, model, outputs, b_idx, t_idx, seq_shape) -> torch.Tensor:
        """(P, L) logits of the L configured letters at the answer positions.

        First choice: the L head rows taken INSIDE the head's own forward of this step
        (:func:`~axolotl_calib_plugin.train.head.captured_option_logits`): exact when FSDP / ZeRO-3 reshard the
        head after its forward, and for LoRA heads, with no extra all-gather. Else ``hidden_states[-1]``
        x the head rows (a fused loss never calls the head; the first step, before the hooks exist).
        Each source is checked once against the full logits when they exist.
        """
        ids = self._option_id_tensor(b_idx.device)
        full = getattr(outputs, "logits", None)
        # Full (B, T, V) logits exist unless a fused loss or logits_to_keep skipped them.
        have_full = isinstance(full, torch.Tensor) and full.ndim == 3 and tuple(full.shape[:2]) == tuple(seq_shape)
        if self._calib_use_full_logits and have_full:
            return full[b_idx, t_idx][:, ids.to(full.device)].float()
        logits = captured_option_logits(model, b_idx, t_idx, self._require_calib().option_ids, seq_shape)
        source = "the output head's own forward"
        if logits is None:
            hidden_states = getattr(outputs, "hidden_states", None)
            if not hidden_states:
                if have_full:
                    return full[b_idx, t_idx][:, ids.to(full.device)].float()
                raise RuntimeError(
                    f"{type(model).__name__}.forward returned neither hidden_states nor full logits; the "
                    "calibration loss needs one of them at the answer positions"
                )
            logits = option_logits(model, hidden_states[-1][b_idx, t_idx], ids)
            source = "hidden_states[-1]"
        if source not in self._calib_path_checked and have_full:
            # One-time self-check per source (P x K numbers): are these really the model's logits?
            ref = full[b_idx, t_idx][:, ids.to(full.device)].float().detach()
            tol = 1e-3 if ref.dtype == torch.float32 and full.dtype == torch.float32 else 5e-2
            if not torch.allclose(logits.detach(), ref, rtol=tol, atol=tol * max(1.0, float(ref.abs().max()))):
                LOG.warning(
                    "calibration: option logits from %s disagree with the model's logits "
                    "(max abs diff %.4g); this architecture transforms its last hidden state or its head output "
                    "in a way the plugin does not reproduce. Using the full logits at the answer positions "
                    "instead (a fused CE loss would not work).",
                    source, float((logits.detach() - ref).abs().max()),
                )
                self._calib_use_full_logits = True
                logits = full[b_idx, t_idx][:, ids.to(full.device)].float()
        self._calib_path_checked.add(source)
        return logits

    @override
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        sample_id = inputs.pop("calib_sample_id", None)
        answer_idx = inputs.pop("calib_answer_idx", None)
        num_options = inputs.pop("calib_num_options", None)
        inputs.pop("num_items_in_batch", None)
        if sample_id is None:  # not an MCQ batch: nothing to add
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        calib = self._require_calib()
        training = model.training
        use_ece = training and calib.lam > 0.0
        record = training and calib.online is not None  # online E-step: keep this forward's option probabilities
        held_out = not training  # evaluation: held-out calibration metrics from this forward
        if not (use_ece or record or held_out):  # plain SFT (lambda = 0)
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        if use_ece and calib.em_state is None:
            raise RuntimeError(
                "calibration loss: no EM state yet. The E-step runs from EMRefreshCallback at the start of "
                "training; was the trainer built through CalibrationPlugin (add_callbacks_post_trainer)?"
            )
        inputs["output_hidden_states"] = True
        sft_loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
        loss, ece = sft_loss, None
        b_idx, t_idx = answer_positions(sample_id)
        if b_idx.numel():
            ids = sample_id[b_idx, t_idx]
            k = num_options[b_idx, t_idx]
            logits = self._answer_option_logits(model, outputs, b_idx, t_idx, sample_id.shape)
            if use_ece:
                em_state = calib.em_state
                targets = em_state.lookup(ids)
                if em_state.has_live:  # epoch 0 after a subsampled first E-step: unmeasured prompts target live
                    check_finite(logits)
                    targets = em_state.fill_live(targets, option_probs(logits.detach(), k), k, answer_idx[b_idx, t_idx])
                ece = ece_loss(logits, targets, k, kind=calib.settings.calib_ece_loss)
                loss = sft_loss + calib.lam * ece
            if record or held_out:
                probs = option_probs(logits.detach(), k)
                if record:
                    calib.online.record(ids, probs)
                if held_out:
                    self._calib_eval.append((ids, answer_idx[b_idx, t_idx], k, probs))
        if training:
            self._calib_accumulate(sft_loss, ece)
        if return_outputs:
            return loss, outputs
        return loss

    def _calib_accumulate(self, sft_loss: torch.Tensor, ece: Optional[torch.Tensor]) -> None:
        """Keep the detached parts (no kernel, no host sync per step); ``log`` averages them."""
        self._calib_parts.append((sft_loss.detach(), None if ece is None else ece.detach()))

    def _calib_window_sums(self) -> Optional[torch.Tensor]:
        """[sum sft, n sft, sum ece, n ece] of the logging window (and clear it)."""
        parts, self._calib_parts = self._calib_parts, []
        if not parts:
            return None
        sft = torch.stack([p[0].float() for p in parts])
        eces = [p[1].float() for p in parts if p[1] is not None]
        ece_sum = torch.stack(eces).sum() if eces else torch.zeros((), device=sft.device)
        return torch.stack([sft.sum(), torch.tensor(float(len(parts)), device=sft.device), ece_sum,
                            torch.tensor(float(len(eces)), device=sft.device)]).to(torch.float64)

    # ------------------------------------------------------------------ logging / eval
    @override
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add ``calib/sft_loss`` and ``calib/ece_loss`` (mean over the logging window and over ranks) to
        the training logs."""
        if "loss" in logs:
            s = self._calib_window_sums()
            _, world = dist_info()
            if world > 1:
                # Every rank logs from the same training-loop step, so this collective lines up.
                if s is None:
                    s = torch.zeros(4, dtype=torch.float64, device=self.args.device)
                s = s.to(self.args.device)
                torch.distributed.all_reduce(s)
            if s is not None:
                if float(s[1]) > 0:
                    logs["calib/sft_loss"] = round(float(s[0] / s[1]), 6)
                if float(s[3]) > 0:
                    logs["calib/ece_loss"] = round(float(s[2] / s[3]), 6)
        return super().log(logs, start_time)

    @override
    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """Add the held-out calibration of the eval set: ``<prefix>_calib/conf_ece``, ``cw_ece``, ``acc`` and ``n``,
        from the option logits the eval forwards already computed, gathered over ranks; rows the eval sampler left
        out (sample packing drops its last partial pack) get one E-step forward, so every eval row counts.

        With a held-out M-step the eval prompts that set targets (:meth:`CalibrationContext.target_ids`) are scored
        apart, as ``<prefix>_calib_fit/*``: ``<prefix>_calib/*`` holds only rows that never set a target. Nothing
        is added when the eval set has no answer positions."""
        self._calib_eval = []
        output = super().evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                         ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if self.calib is not None:
            dataset = getattr(dataloader, "dataset", None)
            ids, gold, k, probs = held_out_rows(self._calib_eval, len(self.calib.option_ids), self.args.device, dataset)
            self._calib_eval = []
            ids, gold, k, probs = self._calib_add_dropped(dataset, ids, gold, k, probs, metric_key_prefix)
            if ids.numel():
                target = self.calib.target_ids(self.eval_dataset)
                fit = (torch.from_numpy(np.isin(ids.numpy(), target)) if target is not None
                       else torch.zeros(ids.numel(), dtype=torch.bool))
                if metric_key_prefix == "eval":  # the held-out M-step at this step reuses the target rows
                    self.calib.last_eval = (int(self.state.global_step), probs[fit].float(), gold[fit], k[fit], ids[fit])
                for suffix, rows in (("calib", ~fit), ("calib_fit", fit)):
                    if bool(rows.any()):
                        p, y, kk = probs[rows].double().numpy(), gold[rows].numpy(), k[rows].numpy()
                        values = calibration_values(p, y, kk)
                        output.metrics.update({f"{metric_key_prefix}_{suffix}/{n}": v for n, v in values.items()})
                        if suffix == "calib" and self.calib.settings.calib_eval_plots and self.is_world_process_zero():
                            self._calib_eval_plot(p, y, kk, metric_key_prefix)
        return output

    def _calib_add_dropped(self, dataset, ids, gold, k, probs, prefix: str):
        """The eval rows the evaluation did not see (Axolotl's multipack eval sampler drops the last partial pack),
        measured by one E-step forward and appended, with a warning that the loss still misses them. Every rank
        calls it (the E-step is a collective); a dataset without calibration columns is returned as it came."""
        if dataset is None or "calib_sample_id" not in getattr(dataset, "column_names", ()):
            return ids, gold, k, probs
        from .estep import EStepData, trainer_estep_probs
        from .eval_calibration import missing_entries

        data = EStepData(dataset)
        missing = missing_entries(data, ids, gold)
        if len(missing) == 0:
            return ids, gold, k, probs
        sub = data.subset(missing)
        extra = trainer_estep_probs(self, sub, self.calib.option_ids, self.calib.settings.calib_estep_batch_size,
                                    desc="calib eval rows left out")
        if self.is_world_process_zero():
            LOG.warning(
                "calib: the %s evaluation left out %d of its %d rows (sample_packing: Axolotl's eval sampler drops the "
                "last partial pack); %s_calib/* includes them through one extra forward, but %s_loss covers only the "
                "%d rows it saw. Set eval_sample_packing: false to evaluate every row in the loss as well.",
                prefix, len(missing), len(data), prefix, prefix, len(data) - len(missing))
        width = probs.shape[1] if probs.ndim == 2 and probs.numel() else extra.shape[1]
        extra = torch.nn.functional.pad(extra.float(), (0, max(0, width - extra.shape[1])))[:, :width]
        return (torch.cat([ids, torch.from_numpy(sub.sample_id)]), torch.cat([gold, torch.from_numpy(sub.answer_idx)]),
                torch.cat([k, torch.from_numpy(sub.num_options)]), torch.cat([probs.float(), extra]))

    def _calib_eval_plot(self, probs, labels, num_options, prefix: str) -> None:
        """Reliability diagram of this evaluation: a PNG in output_dir and an image in TensorBoard / W&B."""
        from .eval_calibration import log_figure
        from ..eval.plots import plot_reliability

        step = self.state.global_step
        path = os.path.join(self.args.output_dir, "calibration_eval", f"reliability_{prefix}_step{step}.png")
        fig = plot_reliability(probs, labels, path, title=f"{prefix} split, step {step}", num_options=num_options)
        log_figure(self.callback_handler.callbacks, f"{prefix}_calib/reliability", fig, path, step)

    @override
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # compute_loss asks for hidden_states; never gather them as "predictions".
        if ignore_keys is None:
            ignore_keys = list(getattr(getattr(self.model, "config", None), "keys_to_ignore_at_inference", None)
                               or ["past_key_values"])
        ignore_keys = list(ignore_keys) + ["hidden_states"]
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


__all__ = ["AxolotlCalibTrainer"]
