"""Option logits at the answer positions and the ECE loss term of CFT / RCFT.

The option logits are computed from the final (normed) hidden state at each answer position
``t*`` times only the K option-letter rows of the output head: ``h @ W[ids].T (+ b[ids])``, then
the model's own logit post-processing (Gemma's ``final_logit_softcapping``, Cohere's
``logit_scale``, Granite's ``logits_scaling``). It never needs the full-vocabulary logits, so it
also works when a fused loss (Liger FLCE, cut-cross-entropy) never materializes them, and costs
O(P * K * H) for P answer positions -- nothing next to the forward pass.

LoRA on ``lm_head`` is handled exactly (the adapter's delta rows are added, with its dropout);
any other head wrapper (DoRA, ``modules_to_save``) falls back to calling the head module on the P
hidden vectors and picking the K columns, which is exact and still only P rows.
"""

from __future__ import annotations

import weakref
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "ece_loss",
    "get_output_head",
    "option_logits",
    "option_probs",
    "postprocess_logits",
]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP / FSDP1 / DeepSpeed / torch.compile wrappers (not peft: it is the model)."""
    seen = 0
    while hasattr(model, "module") and isinstance(getattr(model, "module"), torch.nn.Module) and seen < 8:
        model = model.module
        seen += 1
    return getattr(model, "_orig_mod", model)


def get_output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The output-embedding module (``lm_head``), through DDP / peft wrappers."""
    m = _unwrap(model)
    head = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
    if head is None and hasattr(m, "get_base_model"):
        head = m.get_base_model().get_output_embeddings()
    if head is None:
        raise AttributeError(f"{type(m).__name__} has no output embeddings (get_output_embeddings() is None)")
    return head


def _model_config(model: torch.nn.Module):
    m = _unwrap(model)
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return getattr(m, "config", None)


def postprocess_logits(logits: torch.Tensor, config) -> torch.Tensor:
    """Apply the logit post-processing HF models do after ``lm_head`` (read off the config)."""
    if config is None:
        return logits
    scale = getattr(config, "logit_scale", None)  # Cohere multiplies
    if isinstance(scale, (int, float)) and scale not in (0, 1):
        logits = logits * scale
    scaling = getattr(config, "logits_scaling", None)  # Granite divides
    if isinstance(scaling, (int, float)) and scaling not in (0, 1):
        logits = logits / scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _rows(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``weight[ids]`` through ``F.embedding``: same values, but its backward scatters into ONE dense
    (V, H) gradient buffer, where advanced indexing's backward allocates a zero (V, H) tensor and then
    an out-of-place ``index_put`` (two buffers; +1 GiB transient peak for a trainable 8B head in bf16,
    measured in ``benchmarks/bench_reference.py``)."""
    return F.embedding(ids, weight)


def _linear_rows(head: torch.nn.Module, hidden: torch.Tensor, ids: torch.Tensor) -> Optional[torch.Tensor]:
    """``head(hidden)[:, ids]`` from the K weight rows only, or None if ``head`` is not a plain
    ``nn.Linear`` or a standard (non-DoRA, unmerged or merged) peft LoRA ``Linear``."""
    if type(head) is torch.nn.Linear:
        bias = head.bias[ids] if head.bias is not None else None
        return F.linear(hidden.to(head.weight.dtype), _rows(head.weight, ids), bias)
    base = getattr(head, "base_layer", None)
    lora_a, lora_b = getattr(head, "lora_A", None), getattr(head, "lora_B", None)
    if type(base) is not torch.nn.Linear or lora_a is None or lora_b is None:
        return None
    if any(getattr(head, "use_dora", {}).get(a, False) for a in getattr(head, "active_adapters", [])):
        return None
    x = hidden.to(base.weight.dtype)
    out = F.linear(x, _rows(base.weight, ids), base.bias[ids] if base.bias is not None else None)
    if getattr(head, "disable_adapters", False) or getattr(head, "merged", False):
        return out  # merged: the delta is already inside base.weight
    for name in head.active_adapters:
        if name not in lora_a:
            continue
        a, b = lora_a[name], lora_b[name]
        drop = head.lora_dropout[name] if name in getattr(head, "lora_dropout", {}) else (lambda z: z)
        xa = a(drop(x.to(a.weight.dtype)))
        out = out + F.linear(xa, _rows(b.weight, ids)) * head.scaling[name]
    return out


_HEADS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _head_and_config(model: torch.nn.Module):
    """(output head, config) of ``model``, cached per model object (looked up every step)."""
    try:
        return _HEADS[model]
    except (KeyError, TypeError):
        pass
    found = (get_output_head(model), _model_config(model))
    try:
        _HEADS[model] = found
    except TypeError:  # pragma: no cover - not weak-referenceable
        pass
    return found


def option_logits(model: torch.nn.Module, hidden: torch.Tensor, option_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Logits (P, K) of the option-letter tokens ``option_ids`` from final hidden states (P, H).

    ``hidden`` must be the normed last hidden state the output head consumes (``hidden_states[-1]``
    of HF models). Computed in the head's dtype, returned as float32.
    """
    head, config = _head_and_config(model)
    ids = torch.as_tensor(option_ids, dtype=torch.long, device=hidden.device)
    logits = _linear_rows(head, hidden, ids)
    if logits is None:  # unknown head wrapper: exact fallback on P rows only
        logits = head(hidden)[..., ids]
    return postprocess_logits(logits, config).float()


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
