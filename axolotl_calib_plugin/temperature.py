"""Temperature scaling (Guo et al., 2017): the post-hoc baseline of the paper's Table 2.

One scalar ``T > 0`` is fitted by minimising the negative log-likelihood of the held-out labels under
``softmax(logits / T)`` over the K option logits, then applied at evaluation time. Dividing by one
positive scalar never changes the argmax, so accuracy is unchanged by construction.

Differences from the authors' reference code (its ``inference_temperature.py``):
there the closure computes the NLL under ``no_grad`` and wraps it in a fresh ``requires_grad`` tensor,
so ``T`` receives no gradient and stays at its initial 1.5. Here the NLL is a differentiable function
of ``log T`` (optimised in log space, so ``T`` stays positive), LBFGS uses a strong-Wolfe line search,
and the fit is in float64. Log-probabilities work as well as logits: they differ by a per-row
constant, which the softmax ignores.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .metrics import ArrayLike

__all__ = ["fit_temperature", "apply_temperature", "probs_to_logits", "nll"]


def _logits_tensor(logits: ArrayLike) -> torch.Tensor:
    t = logits.detach().cpu() if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
    t = t.to(torch.float64)
    if t.ndim != 2 or t.shape[1] < 2 or t.shape[0] == 0:
        raise ValueError(f"logits must have shape (n, K) with n >= 1 and K >= 2, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("logits contain NaN or inf (use probs_to_logits for probabilities with zeros)")
    return t


def _labels_tensor(labels: ArrayLike, n: int, k: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels)).to(torch.int64)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {tuple(y.shape)}")
    if bool(((y < 0) | (y >= k)).any()):
        raise ValueError(f"labels must lie in [0, {k})")
    return y


def probs_to_logits(probs: ArrayLike, eps: float = 1e-12) -> np.ndarray:
    """log(probs) clipped at ``eps``: logits up to a per-row constant."""
    p = np.asarray(probs, dtype=np.float64)
    return np.log(np.clip(p, eps, 1.0))


def nll(logits: ArrayLike, labels: ArrayLike, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = _logits_tensor(logits)
    y = _labels_tensor(labels, *z.shape)
    return float(torch.nn.functional.cross_entropy(z / temperature, y))


def fit_temperature(logits: ArrayLike, labels: ArrayLike, init: float = 1.5, max_iter: int = 200,
                    bounds: tuple[float, float] = (1e-2, 1e2)) -> float:
    """The temperature minimising the held-out NLL of ``softmax(logits / T)``.

    ``logits``: (n, K) option logits or log-probabilities; ``labels``: (n,) gold indices.
    Returns a float in ``bounds`` (a model that is right on every sample wants T -> 0, one whose
    logits are pure noise wants T -> inf; the bounds keep those cases finite).
    """
    z = _logits_tensor(logits)
    y = _labels_tensor(labels, *z.shape)
    log_lo, log_hi = math.log(bounds[0]), math.log(bounds[1])
    log_t = torch.tensor([math.log(init)], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z * torch.exp(-log_t), y)
        loss.backward()
        return loss

    opt.step(closure)
    value = float(log_t.detach().clamp(log_lo, log_hi))
    if not math.isfinite(value):  # pragma: no cover - strong-Wolfe LBFGS on a 1-D convex problem
        value = math.log(init)
    return math.exp(value)


def apply_temperature(logits: ArrayLike, temperature: float) -> np.ndarray:
    """``softmax(logits / T)`` as a float64 numpy array (rows sum to 1; argmax unchanged)."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    z = _logits_tensor(logits)
    return torch.softmax(z / temperature, dim=1).numpy()
