"""The few collectives the plugin needs, as no-ops in a single process.

Every function here is called by EVERY rank at the same point of the training loop (the E-step,
the end of an evaluation), so the collectives line up; none of them may be called from one rank.
"""

from __future__ import annotations

import torch


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (same shape on every rank) over the ranks along dim 0, in rank order."""
    _, world = dist_info()
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    torch.distributed.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(t: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """``t`` summed over the ranks (a copy; ``t`` itself untouched). ``device`` is where the collective runs (the
    accelerator for NCCL); the result comes back on ``t``'s device."""
    _, world = dist_info()
    if world == 1:
        return t.clone()
    out = t.to(device if device is not None else t.device, copy=True)
    torch.distributed.all_reduce(out)
    return out.to(t.device)


def all_gather_rows(t: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Concatenate ``t`` (n_r, ...) over the ranks when each rank holds a different number of rows.

    The row counts are gathered first, every rank pads to the largest, and the padding is dropped
    again, so the result is exactly ``cat([t_rank0, t_rank1, ...])`` on every rank. ``device`` is where
    the collective runs (the accelerator for NCCL); the result comes back on ``t``'s device.
    """
    _, world = dist_info()
    if world == 1:
        return t
    home = t.device
    dev = torch.device(device) if device is not None else home
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=dev)
    counts = all_gather_cat(n).tolist()
    width = max(counts)
    padded = torch.zeros((width, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t.to(dev)
    gathered = all_gather_cat(padded)
    return torch.cat([gathered[r * width: r * width + c] for r, c in enumerate(counts)], dim=0).to(home)
