"""The E-step engine: every training sample's option probabilities under the current model.

Algorithm 1 of the paper (Sec. 4) bins each training sample by the max option probability the current
model gives it; this module computes those probabilities, fast and identically on every rank:

* :class:`EStepData` flattens the per-token ``calib_*`` columns of a tokenized dataset into arrays of
  answer positions (no per-row Python loop);
* :func:`run_estep` runs the model over every sample's prompt, cut right after its answer position
  ``t*`` (the answer and anything after it is never run), sorted by length and batched so padding stays
  small, computing logits only at ``t*`` (``logits_to_keep``). With sample packing the dataset rows are
  still single samples (packing happens in the sampler/collator), so this pass is the same either way.

Distributed: the sorted samples are dealt round-robin to the ranks and each rank's shard is padded to
the same length, so every rank runs the SAME number of forwards (required by FSDP and DeepSpeed ZeRO-3,
whose forwards are collectives; never run the E-step on rank 0 alone). The option probabilities are
then all-gathered, so every rank runs the M-step on identical inputs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .distributed import all_gather_cat, dist_info
from .loss import option_probs

__all__ = ["EStepData", "eval_split_data", "first_estep_entries", "max_num_options", "run_estep", "shard_entries", "trainer_estep_probs"]


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

    def subset(self, entries: np.ndarray) -> "EStepData":
        """The answer positions ``entries`` only, in that order (the token arrays are shared, not copied)."""
        out = object.__new__(EStepData)
        out.token_values, out.row_offsets, out.n_rows = self.token_values, self.row_offsets, self.n_rows
        for name in ("row", "pos", "sample_id", "answer_idx", "num_options"):
            setattr(out, name, getattr(self, name)[entries])
        return out

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
    """(input_ids values, row offsets, sample ids, answers, option counts) as flat int64 arrays."""
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


def first_estep_entries(sample_id: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted answer positions of a random ``ceil(fraction * U)`` of the U distinct prompts (every position of a
    chosen prompt), the same on every rank for the same ``seed``: what a subsampled first E-step measures."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"calib_first_estep_fraction must lie in (0, 1], got {fraction!r}")
    uniq = np.unique(sample_id)
    size = min(len(uniq), max(1, math.ceil(fraction * len(uniq))))
    chosen = np.random.default_rng(int(seed)).choice(uniq, size=size, replace=False)
    return np.nonzero(np.isin(sample_id, chosen))[0].astype(np.int64)


# ---------------------------------------------------------------------- sharding
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
              use_inference_mode: bool = True, show_progress: bool = True, desc: str = "calib E-step"
              ) -> dict[str, torch.Tensor]:
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
    rank, world = dist_info()
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

        pbar = tqdm(total=n_batches, desc=desc, unit="batch", leave=False)
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
    g_idx = all_gather_cat(torch.from_numpy(mine).to(gdev)).cpu()
    g_valid = all_gather_cat(torch.from_numpy(valid).to(gdev)).cpu()
    g_probs = all_gather_cat(out_probs.to(gdev)).cpu()
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


def max_num_options(dataset) -> int | None:
    """The largest option count K of a tokenized calibration dataset (None without the column)."""
    if dataset is None or "calib_num_options" not in getattr(dataset, "column_names", ()):
        return None
    data = EStepData(dataset)
    return int(data.num_options.max()) if len(data) else None


def eval_split_data(eval_dataset) -> EStepData:
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


# ---------------------------------------------------------------------- inside a Trainer
def _estep_model(trainer):
    wrapped = getattr(trainer, "model_wrapped", None)
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP1

        if isinstance(wrapped, FSDP1):
            return wrapped  # FSDP1 gathers parameters only in the wrapper's forward
    except ImportError:  # pragma: no cover
        pass
    return trainer.model  # DDP: the bare module (no grad sync, no buffer broadcast needed)


def _sharded_params(trainer) -> bool:
    return bool(getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False))


def trainer_estep_probs(trainer, data: EStepData, option_ids, batch_size: int, desc: str = "calib E-step"
                        ) -> torch.Tensor:
    """The exact E-step of a training run: (n, L) option probabilities of every answer position of ``data``
    under the trainer's current model (eval mode for the pass, then back to what it was)."""
    unwrapped = trainer.model
    was_training = unwrapped.training
    tok = trainer.processing_class
    pad_id = getattr(tok, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(tok, "eos_token_id", None) or 0
    unwrapped.eval()
    try:
        out = run_estep(_estep_model(trainer), data, list(option_ids), batch_size=batch_size,
                        device=trainer.args.device, pad_id=int(pad_id), use_inference_mode=not _sharded_params(trainer),
                        show_progress=not getattr(trainer.args, "disable_tqdm", False), desc=desc)
    finally:
        unwrapped.train(was_training)
    return out["probs"]
