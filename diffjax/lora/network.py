"""LoRA on any diffjax network, for training: Google's qwix (`LoraProvider`,
`apply_lora_to_model`) on the Flax linen module.

qwix intercepts `jax.lax.dot_general`, `jax.lax.conv_general_dilated` and `jnp.einsum` inside
the module's `__call__`; where the calling module's path matches the target expression
(`diffjax.lora.targets`) and the operand is one of its weights, it adds
`(x @ A) @ B * alpha / rank`, with A = `<weight>_lora_a` and B = `<weight>_lora_b` created next
to the weight (B starts at zero, A he-uniform): a Dense kernel (in, out) gets A (in, r) and
B (r, out), a Conv kernel (kh, kw, in, out) gets A (kh, kw, in, r) and B (r, out), DiT's
DenseGeneral (in..., out...) gets A (prod in, r) and B (r, prod out). Their logical axis names
derive from the weight's (A keeps the input axes, B the output axes), so they shard like it.
This is PEFT's LoRA exactly: scale alpha / r, and A, B are PEFT's lora_A / lora_B transposed
(`diffjax.lora.files` writes them as such).

What was checked (qwix 0.1.8, flax 0.12.8): nn.Dense, nn.Conv (SD U-Net, NCSN++), DiT's
DenseGeneral (`lax.dot_general` on a rank-3/4 kernel), CLIP's Dense, `nn.remat`-wrapped blocks,
attention through `jax.nn.dot_product_attention` (its einsums have no weight operand, so they
pass through). qwix's einsum path stores an attribute on the linen module and fails on a frozen
one (`SetAttributeFrozenModuleError`, what `nn.Einsum` hits); NCSN++'s NIN layers therefore use
`lax.dot_general` (the same contraction, bit for bit).

Two small changes to qwix's behaviour, both in `_Provider` below: (1) LoRA dropout applies only
when the call has a "dropout" RNG stream (training); qwix would apply it at every call and fail
without the stream at sampling; (2) a convolution whose kernel is not a weight of the module
(NCSN++'s FIR filters) passes through unchanged instead of failing qwix's assertion.

The training state holds only the adapter (`split` / `merge`): gradients, optimizer moments,
EMA and checkpoints scale with the LoRA, not the network.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import qwix
from qwix._src.providers import ptq
from qwix._src.utils import flax_util

from diffjax.lora.targets import target_regex

ADAPTER_SUFFIXES = ("_lora_a", "_lora_b")


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float
    targets: str = "attention"
    dropout: float = 0.0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_config(cls, lora_config) -> "LoraSettings":
        rank = int(lora_config.rank)
        if rank <= 0:
            raise ValueError(f"model.lora.rank={rank}: LoRA needs a rank >= 1 (0 turns it off).")
        alpha = float(lora_config.alpha) or float(rank)
        dropout = float(lora_config.dropout)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.lora.dropout={dropout} must be in [0, 1).")
        return cls(rank, alpha, str(lora_config.targets), dropout)


class _Provider(qwix.LoraProvider):
    """qwix's LoraProvider with dropout only in training and non-weight convolutions passed."""

    def _get_current_rule_and_op_id(self, op_name, **kwargs):
        rule, op_id = super()._get_current_rule_and_op_id(op_name, **kwargs)
        if isinstance(rule, qwix.LoraRule) and rule.dropout > 0:
            module = flax_util.get_current_module()
            if isinstance(module, nn.Module) and not module.has_rng("dropout"):
                rule = dataclasses.replace(rule, dropout=0.0)
        return rule, op_id

    def conv_general_dilated(self, lhs, rhs, *args, **kwargs):
        if flax_util.find_param(rhs, ptq.WithAux) is None:
            return ptq.PtqProvider.conv_general_dilated(self, lhs, rhs, *args, **kwargs)
        return super().conv_general_dilated(lhs, rhs, *args, **kwargs)


def lora_network(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """`model` with LoRA on the layers `settings.targets` matches (same call signature; its
    parameters are the model's plus `*_lora_a` / `*_lora_b`)."""
    provider = _Provider(module_path=target_regex(settings.targets), rank=settings.rank,
                         alpha=settings.alpha, dropout=settings.dropout)
    return qwix.apply_lora_to_model(model, provider)


def is_adapter(path: tuple) -> bool:
    """True for a LoRA leaf (`kernel_lora_a`, `kernel_lora_b`) of a parameter tree."""
    last = path[-1]
    name = getattr(last, "key", last)
    return isinstance(name, str) and name.endswith(ADAPTER_SUFFIXES)


def _partition(params: Any, keep) -> dict:
    if not isinstance(params, dict) and not hasattr(params, "items"):
        return params
    out = {}
    for key, value in params.items():
        if hasattr(value, "items"):
            sub = _partition(value, keep)
            if sub:
                out[key] = sub
        elif keep(key):
            out[key] = value
    return out


def split(params: Any) -> tuple[dict, dict]:
    """(base, adapter): the network's own parameters and the LoRA leaves, same nesting."""
    adapter = _partition(params, lambda k: k.endswith(ADAPTER_SUFFIXES))
    base = _partition(params, lambda k: not k.endswith(ADAPTER_SUFFIXES))
    return base, adapter


def merge(base: Any, adapter: Any) -> dict:
    """The full parameter tree of the LoRA network: `base` with the adapter leaves added.

    numpy leaves become jax arrays: qwix recognises a weight only as a jax.Array among the
    module's parameters, and silently skips the adapter of a numpy one."""
    out = {k: _as_jax(v) for k, v in base.items()}
    for key, value in adapter.items():
        out[key] = merge(base.get(key, {}), value) if hasattr(value, "items") else value
    return out


def _as_jax(value):
    if hasattr(value, "items"):
        return {k: _as_jax(v) for k, v in value.items()}
    return jnp.asarray(value) if isinstance(value, np.ndarray) else value


def adapter_of(params: Any) -> dict:
    return split(params)[1]


def check_matches(adapter: Any, settings: LoraSettings, base: Any) -> None:
    """A target expression that matches no layer is a one-line error naming some paths."""
    if jax.tree.leaves(adapter):
        return
    paths = ["/".join(str(getattr(k, "key", k)) for k in p[:-1])
             for p, _ in jax.tree_util.tree_flatten_with_path(base)[0]
             if str(getattr(p[-1], "key", "")) == "kernel"]
    raise ValueError(f"model.lora.targets={settings.targets!r} matches no layer of this network; "
                     f"its layers are e.g. {', '.join(sorted(set(paths))[:4])} (see "
                     f"diffjax.lora.targets.PRESETS).")


def count(adapter: Any) -> int:
    return sum(int(leaf.size) for leaf in jax.tree.leaves(adapter))
