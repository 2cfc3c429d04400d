"""Option logits at the answer positions, taken from the model's output head (the loss math on them is
:mod:`.loss`).

The option logits are the final (normed) hidden state at each answer position ``t*`` times only the
K option-letter rows of the output head: ``h @ W[ids].T (+ b[ids])``, then the model's own logit
post-processing (Gemma's ``final_logit_softcapping``, Cohere's ``logit_scale``, Granite's
``logits_scaling``). It never needs the full-vocabulary logits, so it also works when a fused loss
(Liger FLCE, cut-cross-entropy) never materializes them, and costs O(P * K * H) for P answer
positions -- nothing next to the forward pass.

Sharded heads (FSDP2 ``fully_shard``, FSDP1, DeepSpeed ZeRO-3) hold the full weight only INSIDE the
forward of the module that owns it; after it, ``W`` is a shard (an FSDP2 ``DTensor``, an empty ZeRO-3
partition), and Axolotl's FSDP2 (explicit ``reshard_after_forward``) reshards even the root unit that
holds ``lm_head``. So the rows are taken where the weight is whole: :func:`install_head_capture` hooks
the head (and, for a LoRA head, its base layer and adapter layers, which Axolotl shards as units of
their own). On every forward the hooks keep the head's input and the K rows (a K x H copy, with its
autograd link to the weight) and nothing else; :func:`captured_option_logits` then multiplies the P
answer rows of that input by them. No extra all-gather, the gradient reaches the weight inside its
own unit (reduced with the rest of it), and a LoRA head gets the exact adapter output of the step
(same dropout draw). When a forward did not call the head (fused losses call none),
:func:`option_logits` works from ``hidden_states[-1]``: an FSDP2 unit holding the head is unsharded
first (the all-gather its backward would do anyway, done early), and any other head wrapper (DoRA,
``modules_to_save``, FSDP1 / ZeRO-3 between forwards) is called on the P hidden vectors, which is
exact and still only P rows.
"""

from __future__ import annotations

import weakref
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "HeadCapture",
    "captured_option_logits",
    "get_output_head",
    "install_head_capture",
    "option_logits",
    "postprocess_logits",
    "remove_head_capture",
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


# ---------------------------------------------------------------------- which weights are whole here
def _inner(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside FSDP1 / activation-checkpoint wrappers: its own forward runs after the
    wrapper's all-gather, so its hooks see the full weight."""
    for _ in range(4):
        inner = getattr(module, "_fsdp_wrapped_module", None) or getattr(module, "_checkpoint_wrapped_module", None)
        if not isinstance(inner, torch.nn.Module):
            break
        module = inner
    return module


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


def _weight_whole(module: torch.nn.Module) -> bool:
    """True when ``module.weight`` is the full (out, in) matrix on this rank right now: not an FSDP2
    ``DTensor`` shard, not a ZeRO-3 partition, not an FSDP1 view whose storage is freed between forwards."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or _is_dtensor(w):
        return False
    shape = (getattr(module, "out_features", None), getattr(module, "in_features", None))
    if None not in shape and tuple(w.shape) != shape:
        return False
    ds_shape = getattr(w, "ds_shape", None)  # DeepSpeed ZeRO-3 keeps the full shape here
    if ds_shape is not None and tuple(w.shape) != tuple(ds_shape):
        return False
    return w.numel() == 0 or w.untyped_storage().nbytes() > 0


def _is_linear(module: torch.nn.Module) -> bool:
    """``nn.Linear`` or FSDP2's class-swapped ``FSDPLinear`` (same forward), not a subclass with its own."""
    return isinstance(module, torch.nn.Linear) and type(module).forward is torch.nn.Linear.forward


def _lora_names(head: torch.nn.Module) -> Optional[list[str]]:
    """Active adapter names of a plain peft LoRA ``Linear`` head ([] when adapters are off or merged),
    or None when ``head`` is not one (DoRA and other variants, mixed-batch adapters, other wrappers)."""
    base = getattr(head, "base_layer", None)
    lora_a, lora_b = getattr(head, "lora_A", None), getattr(head, "lora_B", None)
    if base is None or lora_a is None or lora_b is None or not _is_linear(_inner(base)):
        return None
    if getattr(head, "disable_adapters", False) or getattr(head, "merged", False):
        return []  # merged: the delta is already inside base.weight
    names = [a for a in getattr(head, "active_adapters", []) if a in lora_a]
    if any(getattr(head, "use_dora", {}).get(a, False) or a in getattr(head, "lora_variant", {}) for a in names):
        return None
    if not all(_is_linear(_inner(lora_a[a])) and _is_linear(_inner(lora_b[a])) for a in names):
        return None
    return names


def _linear_rows(head: torch.nn.Module, hidden: torch.Tensor, ids: torch.Tensor) -> Optional[torch.Tensor]:
    """``head(hidden)[:, ids]`` from the K weight rows only, or None if ``head`` is not a plain
    ``nn.Linear`` or a standard (non-DoRA, unmerged or merged) peft LoRA ``Linear``, or if a weight
    it reads is not whole on this rank now."""
    head = _inner(head)
    if _is_linear(head):
        if not _weight_whole(head):
            return None
        bias = head.bias[ids] if head.bias is not None else None
        return F.linear(hidden.to(head.weight.dtype), _rows(head.weight, ids), bias)
    names = _lora_names(head)
    if names is None:
        return None
    base = _inner(head.base_layer)
    if not _weight_whole(base) or not all(_weight_whole(_inner(head.lora_B[a])) for a in names):
        return None
    x = hidden.to(base.weight.dtype)
    out = F.linear(x, _rows(base.weight, ids), base.bias[ids] if base.bias is not None else None)
    for name in names:
        a, b = head.lora_A[name], _inner(head.lora_B[name])
        drop = head.lora_dropout[name] if name in getattr(head, "lora_dropout", {}) else (lambda z: z)
        xa = a(drop(x.to(_inner(a).weight.dtype)))  # a module call: gathers a sharded lora_A itself
        out = out + F.linear(xa, _rows(b.weight, ids), b.bias[ids] if b.bias is not None else None) * head.scaling[name]
    return out


def _fsdp2_owner(root: torch.nn.Module, module: torch.nn.Module):
    """The FSDP2 unit (``fully_shard`` module) whose parameter group holds ``module.weight``, or None."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return None
    weight = getattr(module, "weight", None)
    for unit in root.modules():
        if not isinstance(unit, FSDPModule):
            continue
        for group in getattr(unit._get_fsdp_state(), "_fsdp_param_groups", ()):
            if any(p.sharded_param is weight for p in group.fsdp_params):
                return unit
    return None


def _unshard_fsdp2(model: torch.nn.Module, head: torch.nn.Module) -> list:
    """Unshard the FSDP2 units holding the head weights read by :func:`_linear_rows` (after the
    forward: the all-gather the backward would do anyway, done early; the backward's own unshard is then
    a no-op and its post-backward reduces the gradient and reshards as usual); returns those units."""
    head = _inner(head)
    mods = [head]
    names = _lora_names(head) if not _is_linear(head) else None
    if names is not None:
        mods = [_inner(head.base_layer)] + [_inner(head.lora_B[a]) for a in names]
    root = _unwrap(model)
    units = []
    for m in mods:
        if _is_dtensor(getattr(m, "weight", None)):
            unit = _fsdp2_owner(root, m)
            if unit is not None and unit not in units:
                unit.unshard()
                units.append(unit)
    return units


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
    of HF models). Computed in the head's dtype, returned as float32. Under FSDP2 the units holding the
    head weights are unsharded first; other heads whose rows cannot be read here are called on the P rows.
    """
    head, config = _head_and_config(model)
    ids = torch.as_tensor(option_ids, dtype=torch.long, device=hidden.device)
    logits = _linear_rows(head, hidden, ids)
    if logits is None:
        units = _unshard_fsdp2(model, head)
        logits = _linear_rows(head, hidden, ids)
        if not torch.is_grad_enabled():  # no backward will reshard them
            for unit in units:
                unit.reshard()
    if logits is None:  # DoRA, modules_to_save, FSDP1 / ZeRO-3 between forwards: the module gathers itself
        logits = head(hidden)[..., ids]
    return postprocess_logits(logits, config).float()


# ---------------------------------------------------------------------- rows taken inside the head's forward
class _Take:
    """The K rows (and bias rows) of one weight, taken inside its module's forward."""

    __slots__ = ("rows", "bias")

    def __init__(self, rows: torch.Tensor, bias: Optional[torch.Tensor]):
        self.rows, self.bias = rows, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.rows.dtype), self.rows, self.bias)


class HeadCapture:
    """Forward hooks that keep, on every forward, the output head's input and its K option rows.

    Hooks: a pre-hook on the model (clears the last record, so a forward that never calls the head
    leaves none), a pre-hook on the head, or for a peft LoRA head on its base layer (input + rows) and
    each adapter's ``lora_B`` (rows), and a hook on each ``lora_A`` (its output: the adapter's own
    dropout draw). Pre-hooks registered after ``fully_shard`` / FSDP1 / ZeRO-3 run after their gather.
    """

    def __init__(self, model: torch.nn.Module, head: torch.nn.Module, option_ids: Sequence[int]):
        self.head = _inner(head)
        self.option_ids = tuple(int(i) for i in option_ids)
        self._ids: dict = {}
        self.record: Optional[dict] = None
        # False: a plain linear head; True: a peft LoRA head; None: anything else (not hooked)
        self.lora = False if _is_linear(self.head) else (True if _lora_names(self.head) is not None else None)
        self.handles: list = [_unwrap(model).register_forward_pre_hook(self._clear)]
        if self.lora is None:
            return  # unknown head: option_logits calls it on the P rows
        if not self.lora:
            self.handles.append(self.head.register_forward_pre_hook(self._take_base, with_kwargs=True))
            return
        self.handles.append(self.head.register_forward_pre_hook(self._start, with_kwargs=True))
        self.handles.append(_inner(self.head.base_layer).register_forward_pre_hook(self._take_base, with_kwargs=True))
        for name in self.head.lora_A.keys():
            self.handles.append(_inner(self.head.lora_A[name]).register_forward_hook(self._keep_a(name)))
            self.handles.append(_inner(self.head.lora_B[name]).register_forward_pre_hook(self._take_b(name),
                                                                                       with_kwargs=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    # -- hooks (cheap: a K x H row copy and references) --------------------------------------------
    def _ids_on(self, device) -> torch.Tensor:
        key = (device, self.option_ids)
        ids = self._ids.get(key)
        if ids is None:
            self._ids = {k: v for k, v in self._ids.items() if k[1] == self.option_ids}
            with torch.inference_mode(False):  # the first call may be an E-step forward: still a normal tensor
                ids = self._ids[key] = torch.tensor(self.option_ids, dtype=torch.long, device=device)
        return ids

    def _take(self, module) -> Optional[_Take]:
        if not _weight_whole(module):
            return None
        ids = self._ids_on(module.weight.device)
        return _Take(_rows(module.weight, ids), module.bias[ids] if module.bias is not None else None)

    def _clear(self, module, args):
        self.record = None

    def _start(self, module, args, kwargs):
        self.record = {"ids": self.option_ids, "a": {}, "b": {}}

    def _take_base(self, module, args, kwargs):
        if not self.lora:
            self._start(module, args, kwargs)
        if self.record is not None:
            self.record["x"] = args[0] if args else next(iter(kwargs.values()), None)
            self.record["base"] = self._take(module)

    def _keep_a(self, name):
        def hook(module, args, output):
            if self.record is not None:
                self.record["a"][name] = output
        return hook

    def _take_b(self, name):
        def hook(module, args, kwargs):
            if self.record is not None:
                self.record["b"][name] = self._take(module)
        return hook

    # -- after the forward ---------------------------------------------------------------------------
    def pop(self, b_idx: torch.Tensor, t_idx: torch.Tensor, option_ids: Sequence[int],
            seq_shape: Sequence[int]) -> Optional[torch.Tensor]:
        """(P, K) raw head logits of the answer positions from the last forward's record (then dropped),
        or None when that forward did not call the head on the whole (B, T) sequence with these ids."""
        rec, self.record = self.record, None
        x = None if rec is None else rec.get("x")
        if (rec is None or rec.get("base") is None or rec["ids"] != tuple(int(i) for i in option_ids)
                or not isinstance(x, torch.Tensor) or x.ndim != 3 or tuple(x.shape[:2]) != tuple(seq_shape)):
            return None
        out = rec["base"](x[b_idx.to(x.device), t_idx.to(x.device)])
        if self.lora:
            for name in _lora_names(self.head) or []:
                a, b = rec["a"].get(name), rec["b"].get(name)
                if a is None or b is None or tuple(a.shape[:2]) != tuple(seq_shape):
                    return None
                out = out + b(a[b_idx.to(a.device), t_idx.to(a.device)]) * self.head.scaling[name]
        return out


_CAPTURES: "weakref.WeakKeyDictionary[torch.nn.Module, HeadCapture]" = weakref.WeakKeyDictionary()


def install_head_capture(model: torch.nn.Module, option_ids: Sequence[int]) -> HeadCapture:
    """Hook ``model``'s output head once (idempotent; new ``option_ids`` apply from the next forward).

    Install it after the model is wrapped (FSDP / DeepSpeed), so the hooks run after their gathers.
    """
    head, _ = _head_and_config(model)
    cap = _CAPTURES.get(head)
    if cap is None:
        cap = _CAPTURES[head] = HeadCapture(model, head, option_ids)
    else:
        cap.option_ids = tuple(int(i) for i in option_ids)
    return cap


def remove_head_capture(model: torch.nn.Module) -> bool:
    """Take the hooks of :func:`install_head_capture` off ``model``'s output head (True if there were any).

    Called at the end of training: later forwards in the same process (generation, another trainer on the same
    model) then pay nothing and keep no reference to the head's last input."""
    try:
        head, _ = _head_and_config(model)
    except AttributeError:
        return False
    cap = _CAPTURES.pop(head, None)
    if cap is None:
        return False
    cap.remove()
    cap.record = None
    return True


def captured_option_logits(model: torch.nn.Module, b_idx: torch.Tensor, t_idx: torch.Tensor,
                           option_ids: Sequence[int] | torch.Tensor,
                           seq_shape: Sequence[int]) -> Optional[torch.Tensor]:
    """(P, K) float32 option logits at positions (``b_idx``, ``t_idx``) from the head's own forward in
    the model call that just ran, or None when it was not captured (first call: this installs the hooks;
    a fused loss that never calls the head; another head wrapper), then use :func:`option_logits`."""
    head, config = _head_and_config(model)
    ids = [int(i) for i in (option_ids.tolist() if isinstance(option_ids, torch.Tensor) else option_ids)]
    cap = _CAPTURES.get(head)
    if cap is None:
        install_head_capture(model, ids)
        return None
    logits = cap.pop(b_idx, t_idx, ids, seq_shape)
    if logits is None:
        cap.option_ids = tuple(ids)
        return None
    return postprocess_logits(logits, config).float()
