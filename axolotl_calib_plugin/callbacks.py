"""``EMRefreshCallback``: the E-step / M-step of Algorithm 1, run from the training loop.

When: at the start of every epoch (``calib_refresh: epoch``) or every N optimizer steps
(``calib_refresh: N``; also once before the first step). Never just once.

How (the E-step): the model in eval mode under ``torch.inference_mode()`` (``no_grad`` under
FSDP / DeepSpeed, whose parameter buffers must not become inference tensors), ``use_cache=False``,
over every answer position of ``trainer.train_dataset``. Each sample is cut right after its
answer position t* (the answer and anything after it is never run), samples are sorted by
length and batched by ``calib_estep_batch_size`` so padding stays small, and only the logits
at t* are computed (``logits_to_keep``). With sample packing the dataset rows are still single
samples (packing happens in the sampler/collator), so this pass is the same with or without it.

Distributed: the sorted samples are dealt round-robin to the ranks and each rank's shard is
padded to the same length, so every rank runs the SAME number of forwards (required by FSDP and
DeepSpeed ZeRO-3, whose forwards are collectives; never run the E-step on rank 0 alone). The
option probabilities are then ``all_gather``-ed, so every rank runs the M-step on identical
inputs and holds identical bins and targets (the single-process result, up to float noise).

Checkpoints: ``on_save`` writes ``calib_state.pt`` into ``checkpoint-N/`` (main process) and
``on_train_begin`` restores it when training resumes, so a resumed run keeps the targets of the
refresh it was in instead of recomputing them with a different model.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .em import STATE_FILE, EMState
from .loss import option_probs

#: set to a directory to make every rank save each refresh's EMState there (tests / debugging)
DEBUG_DUMP_ENV = "AXOLOTL_CALIB_DEBUG_DUMP_DIR"

try:  # axolotl's logger when available (the callback is only used inside axolotl anyway)
    from axolotl.utils.logging import get_logger

    LOG = get_logger(__name__)
except Exception:  # pragma: no cover
    import logging

    LOG = logging.getLogger(__name__)


# ---------------------------------------------------------------------- data extraction
class EStepData:
    """The answer positions of a tokenized dataset as flat numpy arrays (no per-row Python loop).

    ``token_values`` / ``row_offsets`` are the flattened ``input_ids`` column; for each answer
    position e: ``row[e]``, ``pos[e]`` (t*), ``sample_id[e]``, ``answer_idx[e]``, ``num_options[e]``.
    """

    def __init__(self, dataset):
        tokens, offsets, sid, ans, nopt = _flat_columns(dataset)
        flat = np.nonzero(sid >= 0)[0]
        row = np.searchsorted(offsets, flat, side="right") - 1
        self.token_values = tokens
        self.row_offsets = offsets
        self.row = row.astype(np.int64)
        self.pos = (flat - offsets[row]).astype(np.int64)
        self.sample_id = sid[flat].astype(np.int64)
        self.answer_idx = ans[flat].astype(np.int64)
        self.num_options = nopt[flat].astype(np.int64)
        self.n_rows = len(offsets) - 1

    def __len__(self) -> int:
        return int(self.row.shape[0])

    def prompts(self, entries: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Right-padded ``input_ids`` / ``attention_mask`` of the prompts (tokens 0..t*) of
        ``entries``, and each prompt's last index t*. Vectorized gather."""
        starts = self.row_offsets[self.row[entries]]
        lengths = self.pos[entries] + 1
        width = int(lengths.max())
        cols = np.arange(width)[None, :]
        mask = cols < lengths[:, None]
        idx = np.where(mask, starts[:, None] + cols, 0)
        ids = np.where(mask, self.token_values[idx], pad_id)
        return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64)), lengths - 1


def _flat_columns(dataset):
    cols = ["input_ids", "calib_sample_id", "calib_answer_idx", "calib_num_options"]
    try:
        import datasets as hf_datasets

        is_hf = isinstance(dataset, hf_datasets.Dataset)
    except ImportError:  # pragma: no cover
        is_hf = False
    if is_hf:
        missing = [c for c in cols if c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"the training set has no {missing} column(s): it was not tokenized by "
                "`type: axolotl_calib_plugin.mcq` (or a cached prepared dataset from another config was reused; "
                "use a fresh dataset_prepared_path)"
            )
        table = dataset.select_columns(cols).with_format("arrow")[:]  # respects shuffles/selects
        out = []
        offsets = None
        for c in cols:
            arr = table.column(c).combine_chunks()
            if offsets is None:
                offsets = np.asarray(arr.offsets, dtype=np.int64)
            elif not np.array_equal(offsets, np.asarray(arr.offsets, dtype=np.int64)):
                raise ValueError(f"column {c} is not per-token: its row lengths differ from input_ids")
            out.append(np.asarray(arr.values.to_numpy(zero_copy_only=False), dtype=np.int64))
        return out[0], offsets, out[1], out[2], out[3]
    # Generic map-style dataset of dict rows (slow path; HF datasets are the normal case).
    rows = [dataset[i] for i in range(len(dataset))]
    lens = np.array([len(r["input_ids"]) for r in rows], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    flat = [np.concatenate([np.asarray(r[c], dtype=np.int64).reshape(-1) for r in rows]) for c in cols]
    return flat[0], offsets, flat[1], flat[2], flat[3]


# ---------------------------------------------------------------------- distributed helpers
def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard_entries(order: np.ndarray, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank ``rank``'s share of the length-sorted entries (round-robin, so shards have similar
    lengths) padded to ``ceil(n / world)`` by repeating its last entry; returns (entries, valid)."""
    n = len(order)
    size = max(1, math.ceil(n / world))
    mine = order[rank::world]
    valid = np.ones(size, dtype=bool)
    if len(mine) < size:
        fill = mine[-1] if len(mine) else order[-1]
        valid[len(mine):] = False
        mine = np.concatenate([mine, np.full(size - len(mine), fill, dtype=order.dtype)])
    return mine, valid


def _all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    _, world = _dist_info()
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    torch.distributed.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


def _forward_accepts(model, name: str) -> bool:
    import inspect

    m = model
    for _ in range(4):
        if hasattr(m, "get_base_model"):
            m = m.get_base_model()
        elif hasattr(m, "module") and isinstance(m.module, torch.nn.Module):
            m = m.module
        else:
            break
    try:
        return name in inspect.signature(m.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


# ---------------------------------------------------------------------- the E-step
@torch.no_grad()
def run_estep(model, data: EStepData, option_ids, *, batch_size: int, device, pad_id: int,
              use_inference_mode: bool = True, show_progress: bool = True) -> dict[str, torch.Tensor]:
    """E-step forward over every answer position of ``data``; returns CPU tensors ``probs``
    (n, L) over the L configured letters (zero past each sample's K), ``labels``, ``num_options``
    and ``sample_ids``, in ``data`` order, identical on every rank."""
    n = len(data)
    if n == 0:
        raise ValueError("the E-step found no answer positions (calib_sample_id >= 0) in the training set")
    n_letters = len(option_ids)
    if int(data.num_options.max()) > n_letters:
        raise ValueError(f"a sample has K={int(data.num_options.max())} options but only {n_letters} option "
                         "letters are configured (calib_option_letters)")
    rank, world = _dist_info()
    order = np.argsort(data.pos, kind="stable")
    mine, valid = shard_entries(order, rank, world)
    keep_arg = _forward_accepts(model, "logits_to_keep")
    ids_t = torch.as_tensor(option_ids, dtype=torch.long, device=device)
    out_probs = torch.zeros(len(mine), n_letters, dtype=torch.float32)
    ctx = torch.inference_mode() if use_inference_mode else torch.no_grad()
    n_batches = math.ceil(len(mine) / batch_size)
    pbar = None
    if show_progress and rank == 0:
        from tqdm.auto import tqdm

        pbar = tqdm(total=n_batches, desc="calib E-step", unit="batch", leave=False)
    with ctx:
        for start in range(0, len(mine), batch_size):
            chunk = mine[start:start + batch_size]
            input_ids, attn, last = data.prompts(chunk, pad_id)
            kwargs: dict[str, Any] = dict(input_ids=input_ids.to(device), attention_mask=attn.to(device),
                                          use_cache=False)
            last_t = torch.from_numpy(last).to(device)
            if keep_arg:
                keep = torch.unique(last_t)  # sorted: few distinct lengths per length-sorted batch
                kwargs["logits_to_keep"] = keep
                col = torch.searchsorted(keep, last_t)
            else:
                col = last_t
            logits = model(**kwargs).logits
            rows = torch.arange(len(chunk), device=logits.device)
            opt = logits[rows, col.to(logits.device)][:, ids_t.to(logits.device)].float()
            k = torch.from_numpy(data.num_options[chunk]).to(opt.device)
            out_probs[start:start + len(chunk)] = option_probs(opt, k).cpu()
            if pbar is not None:
                pbar.update(1)
    if pbar is not None:
        pbar.close()
    # Gather (index, valid, probs) from all ranks and put them back in data order.
    gdev = device if world > 1 else torch.device("cpu")
    g_idx = _all_gather_cat(torch.from_numpy(mine).to(gdev)).cpu()
    g_valid = _all_gather_cat(torch.from_numpy(valid).to(gdev)).cpu()
    g_probs = _all_gather_cat(out_probs.to(gdev)).cpu()
    probs = torch.zeros(n, n_letters, dtype=torch.float32)
    probs[g_idx[g_valid]] = g_probs[g_valid]
    bad = ~torch.isfinite(probs).all(dim=1)
    if bool(bad.any()):
        which = torch.from_numpy(data.sample_id)[bad][:5].tolist()
        raise FloatingPointError(
            f"E-step: non-finite option probabilities for {int(bad.sum())} sample(s) (calib_sample_id {which}): "
            "the model produces NaN/inf logits (diverged weights, fp16 overflow?)"
        )
    return {
        "probs": probs,
        "labels": torch.from_numpy(data.answer_idx),
        "num_options": torch.from_numpy(data.num_options),
        "sample_ids": torch.from_numpy(data.sample_id),
    }


# ---------------------------------------------------------------------- the callback
class EMRefreshCallback(TrainerCallback):
    """Runs the E-step + M-step on schedule and keeps ``trainer.calib_state`` up to date.

    Logs after each refresh (``trainer.log``): ``calib/train_conf_ece``, ``calib/train_acc``,
    ``calib/refresh``, ``calib/n_samples`` and per bin m ``calib/bin_count_m``,
    ``calib/bin_acc_m`` (q_m), ``calib/bin_conf_m`` (non-empty bins only).
    """

    def __init__(self, cfg, trainer):
        from .args import CalibrationArgs

        self.cfg = cfg
        self.trainer = trainer
        self.settings = CalibrationArgs.from_cfg(cfg)
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
        """Run E-step + M-step now, install the result on the trainer, log it."""
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
            option_ids = tr.set_calib_num_options(int(self._data.num_options.max()))
            out = run_estep(model, self._data, option_ids,
                            batch_size=self.settings.calib_estep_batch_size, device=tr.args.device,
                            pad_id=int(pad_id), use_inference_mode=not self._sharded_params(),
                            show_progress=not getattr(tr.args, "disable_tqdm", False))
        finally:
            unwrapped.train(was_training)
        prev = tr.calib_state
        em_state = EMState.from_estep(
            out["sample_ids"], out["probs"], out["labels"], out["num_options"], n_bins=self.settings.calib_bins,
            split=self.settings.calib_nonmax_split, refresh_count=(prev.refresh_count + 1) if prev else 1,
            epoch_refreshed=epoch, global_step=int(state.global_step),
        )
        tr.calib_state = em_state
        dump_dir = os.environ.get(DEBUG_DUMP_ENV)
        if dump_dir:  # per-rank copies, to check that every rank holds the same state
            os.makedirs(dump_dir, exist_ok=True)
            em_state.save(os.path.join(dump_dir, f"refresh{em_state.refresh_count}_rank{_dist_info()[0]}.pt"))
        summary = em_state.summary()
        self.history.append({**summary, "global_step": int(state.global_step), "epoch": epoch})
        LOG.info("calib EM refresh %d (epoch %d, step %d): train conf-ECE %.4f, acc %.4f",
                 em_state.refresh_count, epoch, state.global_step, summary["calib/train_conf_ece"],
                 summary["calib/train_acc"])
        tr.log(dict(summary))
        return em_state

    # ---- schedule ------------------------------------------------------------------------------
    @staticmethod
    def _epoch_index(state) -> int:
        return int(math.floor((state.epoch or 0.0) + 1e-6))

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0 and self.trainer.calib_state is None:
            self._restore(args, state)
        return control

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = self._epoch_index(state)
        cur = self.trainer.calib_state
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
        em_state = self.trainer.calib_state
        if em_state is None or not state.is_world_process_zero:
            return control
        ckpt = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(ckpt):
            em_state.save(os.path.join(ckpt, STATE_FILE))
        else:
            LOG.warning("calib: checkpoint dir %s not found; calib_state.pt not written", ckpt)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        em_state = self.trainer.calib_state
        if em_state is not None and state.is_world_process_zero and os.path.isdir(args.output_dir):
            em_state.save(os.path.join(args.output_dir, STATE_FILE))
        return control

    def _resume_candidates(self, args, state) -> list[str]:
        out = []
        src = getattr(self.trainer, "calib_resume_from", None)
        if src is True:
            src = get_last_checkpoint(args.output_dir)
        for c in (src, (self.cfg or {}).get("resume_from_checkpoint") if hasattr(self.cfg, "get") else None,
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
                self.trainer.calib_state = em_state
                LOG.info("calib: restored EM state (refresh %d, epoch %d, step %d) from %s",
                         em_state.refresh_count, em_state.epoch_refreshed, em_state.global_step, path)
                return
        LOG.warning("calib: resuming at step %d without a calib_state.pt; the targets will be recomputed "
                    "with the resumed model", state.global_step)


__all__ = ["EMRefreshCallback", "EStepData", "run_estep", "shard_entries"]
