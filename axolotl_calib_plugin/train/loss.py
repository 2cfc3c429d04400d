"""The ECE loss term of CFT / RCFT on the K option logits of each answer position (:mod:`.head` takes those
logits from the model's output head): the option distribution pi over the first K letters, and
L_ECE between the fixed targets of the M-step and pi (squared error or KL).
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F

__all__ = ["check_finite", "ece_loss", "option_probs"]


def _masked_log_softmax(logits: torch.Tensor, num_options: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.log_softmax(_mask_padded(logits, num_options), dim=-1)


def _mask_padded(logits: torch.Tensor, num_options: Optional[torch.Tensor]) -> torch.Tensor:
    logits = logits.float()
    if num_options is None:
        return logits
    k = logits.shape[-1]
    valid = torch.arange(k, device=logits.device).view(1, k) < num_options.to(logits.device).view(-1, 1)
    return logits.masked_fill(~valid, float("-inf"))


def option_probs(logits: torch.Tensor, num_options: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax over the first ``num_options[i]`` columns of each row (padded columns -> 0)."""
    return torch.softmax(_mask_padded(logits, num_options), dim=-1)


def check_finite(logits: torch.Tensor, what: str = "option logits") -> None:
    """Raise ``FloatingPointError`` on NaN/inf instead of training on garbage."""
    if not bool(torch.isfinite(logits).all()):
        bad = (~torch.isfinite(logits)).any(dim=-1).nonzero().view(-1)[:5].tolist()
        raise FloatingPointError(
            f"non-finite {what} at answer positions {bad}: the model diverged or its weights contain "
            "NaN/inf (lower the learning rate, check fp16 overflow, or use bf16/fp32)"
        )


def ece_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    num_options: Optional[torch.Tensor] = None,
    kind: Literal["mse", "kl"] = "mse",
) -> torch.Tensor:
    """L_ECE between fixed targets p(x_i) (P, Kmax) and the model's option distribution pi (P, K).

    ``"mse"`` = sum_k (p_k - pi_k)^2 (the paper's code's squared error; bounded, gentle on
    confident rows); ``"kl"`` = KL(p || pi) = sum_k p_k (log p_k - log pi_k) with 0 log 0 = 0.
    Averaged over the P answer positions, so ``calib_lambda`` means the same at any batch size
    (and, with one answer per row, per-micro-batch means compose exactly under gradient
    accumulation). Returns a 0-dim float32 tensor; 0 (still attached to ``logits``) if P = 0.
    """
    if kind not in ("mse", "kl"):
        raise ValueError(f"calib_ece_loss must be 'mse' or 'kl', got {kind!r}")
    if logits.shape[0] == 0:
        return logits.float().sum() * 0.0
    k = logits.shape[-1]
    t = targets.to(device=logits.device, dtype=torch.float32)
    if t.shape[-1] < k:
        t = F.pad(t, (0, k - t.shape[-1]))
    elif t.shape[-1] > k:
        if bool((t[:, k:] != 0).any()):
            raise ValueError(f"targets have mass beyond the {k} option logits of this batch")
        t = t[:, :k]
    check_finite(logits)
    p_count = logits.shape[0]
    if kind == "mse":
        pi = option_probs(logits, num_options)
        return F.mse_loss(pi, t, reduction="sum") / p_count
    logp = _masked_log_softmax(logits, num_options)
    safe_logp = torch.where(t > 0, logp, torch.zeros_like(logp))
    per = torch.where(t > 0, t * (torch.log(t.clamp(min=1e-30)) - safe_logp), torch.zeros_like(t))
    return per.sum() / p_count
