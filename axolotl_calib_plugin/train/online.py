"""The online E-step's record: option probabilities the TRAINING forward already computed.

With ``calib_estep: online`` the E-step after the first one runs no forward at all. Every training
step already computes each answer position's K option logits (for the ECE term); the trainer hands
their softmax, detached, to :meth:`OnlineRecord.record`. At the next refresh the callback collects the
record (gathered over ranks; the last value seen of a sample wins) and runs the M-step on it.

What differs from the exact E-step (the paper's Algorithm 1 evaluates pi_l on every sample at the start of
epoch l): the probabilities come from the model as it was when each sample's batch was trained (it moved
during the epoch), in train mode (dropout on, if the model has any), and samples not seen since the last
refresh keep their previous target. The first refresh, before any training step, has no record to read: it runs
a forward over ``calib_first_estep_fraction`` of the prompts (10 % by default with training-row bins; the others get
live targets in epoch 0, see :meth:`~axolotl_calib_plugin.train.em_state.EMState.fill_live`), so such an online run never
pays a full pass.

Nothing here syncs the host per step: :meth:`record` appends device tensors; :meth:`collect` moves them
once per refresh.

Between refreshes the EM state carries the online table (``EMState.extra``): the latest probabilities of
every distinct prompt (:meth:`OnlineRecord.table_probs` merges the record into it, :meth:`OnlineRecord.keep_table`
stores the new one) and, in a checkpoint, the record of the interval so far (:meth:`OnlineRecord.save_into`,
:meth:`OnlineRecord.restore_from`), so a resume mid-interval keeps what was recorded before it.
"""

from __future__ import annotations

from typing import Optional

import torch

from .distributed import all_gather_rows, dist_info

__all__ = ["OnlineRecord", "TABLE_IDS", "TABLE_PROBS", "RECORD_IDS", "RECORD_PROBS"]

#: ``EMState.extra`` keys: the online table (every prompt's latest probabilities) and a checkpoint's record.
TABLE_IDS, TABLE_PROBS = "online_table_ids", "online_table_probs"
RECORD_IDS, RECORD_PROBS = "online_record_ids", "online_record_probs"


class OnlineRecord:
    """Per-sample option probabilities recorded since the last refresh (detached, on the training device)."""

    def __init__(self):
        self._ids: list[torch.Tensor] = []
        self._probs: list[torch.Tensor] = []
        self._order = 0
        self._orders: list[torch.Tensor] = []
        #: probabilities restored from a checkpoint, merged in before the ones recorded after the resume
        self._restored: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def __len__(self) -> int:
        n = sum(int(t.numel()) for t in self._ids)
        return n + (0 if self._restored is None else int(self._restored[0].numel()))

    def record(self, sample_ids: torch.Tensor, probs: torch.Tensor) -> None:
        """Remember ``probs`` (P, L) of the answer positions ``sample_ids`` (P,) of one micro-batch."""
        if sample_ids.numel() == 0:
            return
        n = sample_ids.numel()
        self._ids.append(sample_ids.detach().to(torch.int64))
        self._probs.append(probs.detach().to(torch.float32))
        self._orders.append(torch.arange(self._order, self._order + n, dtype=torch.int64, device=sample_ids.device))
        self._order += n

    def clear(self) -> None:
        self._ids, self._probs, self._orders = [], [], []
        self._order = 0
        self._restored = None

    def collect(self, device: torch.device | str | None = None, width: Optional[int] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(unique sample ids (U,) sorted, their latest probabilities (U, L)) over ALL ranks, on CPU.

        A collective: every rank must call it at the same point (the refresh, a checkpoint save). Within a
        rank the last value recorded wins; across ranks a sample id seen on several ranks (identical prompts
        only) takes the value of the highest rank. ``width`` pads the probabilities to L columns.
        """
        ids, probs, order = self._local(width)
        rank, world = dist_info()
        if world > 1:
            rank_col = torch.full_like(order, rank)
            ids = all_gather_rows(ids, device).cpu()
            probs = all_gather_rows(probs, device).cpu()
            key = all_gather_rows(torch.stack([rank_col, order], dim=1), device).cpu()
            order = key[:, 0] * (1 << 40) + key[:, 1]
        if ids.numel() == 0:
            return ids, probs
        # last value wins: in recording order (rank, then position in the rank's record), each id keeps its last row
        perm = torch.argsort(order, stable=True)
        ids, probs = ids[perm], probs[perm]
        uniq, inverse = torch.unique(ids, sorted=True, return_inverse=True)
        last = torch.full((uniq.numel(),), -1, dtype=torch.int64)
        last = last.scatter_reduce(0, inverse, torch.arange(ids.numel()), reduce="amax")
        return uniq, probs[last]

    def _local(self, width: Optional[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts_ids, parts_probs, parts_order = [], [], []
        if self._restored is not None:
            rid, rprob = self._restored
            parts_ids.append(rid)
            parts_probs.append(rprob)
            parts_order.append(torch.arange(-rid.numel(), 0, dtype=torch.int64))
        parts_ids += [t.cpu() for t in self._ids]
        parts_probs += [t.cpu() for t in self._probs]
        parts_order += [t.cpu() for t in self._orders]
        if not parts_ids:
            return (torch.zeros(0, dtype=torch.int64), torch.zeros(0, width or 0, dtype=torch.float32),
                    torch.zeros(0, dtype=torch.int64))
        cols = max([int(p.shape[1]) for p in parts_probs] + [width or 0])
        probs = torch.cat([torch.nn.functional.pad(p, (0, cols - p.shape[1])) for p in parts_probs])
        return torch.cat(parts_ids), probs, torch.cat(parts_order)

    # ---- the online table in the EM state ------------------------------------------------------
    def table_probs(self, extra: dict, entry_ids: torch.Tensor, device, width: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The online E-step: merge the record (gathered over ranks, a collective) into the previous refresh's
        table ``extra``; returns (n, L) probabilities of the entries ``entry_ids`` and the sample ids seen."""
        ids, probs = self.collect(device, width)
        table_ids, table = extra[TABLE_IDS], extra[TABLE_PROBS].clone()
        if ids.numel():
            pos = torch.searchsorted(table_ids, ids).clamp(max=table_ids.numel() - 1)
            hit = table_ids[pos] == ids
            table[pos[hit]] = probs[hit][:, : table.shape[1]]
            ids = ids[hit]
        return table[torch.searchsorted(table_ids, entry_ids)], ids

    def keep_table(self, extra: dict, state_ids: torch.Tensor, entry_ids: torch.Tensor, probs: torch.Tensor) -> None:
        """Store the latest probabilities of every distinct prompt (one row per id of ``state_ids``, as the
        targets; ``probs`` has one row per entry of ``entry_ids``) in ``extra`` and start a new interval."""
        first = torch.searchsorted(entry_ids.sort().values, state_ids)
        order = entry_ids.argsort(stable=True)
        extra[TABLE_IDS] = state_ids.clone()
        extra[TABLE_PROBS] = probs[order[first]].to(torch.float32).clone()
        self.clear()

    # ---- checkpoints ---------------------------------------------------------------------------
    def save_into(self, extra: dict, device, width: int) -> None:
        """Every rank (a collective): the record of the interval so far into ``extra``, saved with the checkpoint."""
        extra[RECORD_IDS], extra[RECORD_PROBS] = self.collect(device, width)

    def restore_from(self, extra: dict) -> None:
        """Start from a checkpoint's record (the part of the interval trained before the interruption), if any."""
        if RECORD_IDS not in extra:
            return
        sample_ids, probs = extra.pop(RECORD_IDS), extra.pop(RECORD_PROBS)
        self.clear()
        if sample_ids.numel():
            self._restored = (sample_ids.to(torch.int64).cpu(), probs.to(torch.float32).cpu())
