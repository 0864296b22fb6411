"""The Flax pieces both text encoders are built from, named and laid out like transformers' own.

Linear, LayerNorm and Embedding layers carry logical axis names (`embed`, `heads`, `mlp`,
`norm`, `vocab`, `length`) so that the mesh rules of `diffjax.parallel.sharding` place them like
the other networks' (`vocab` and the projection's output have no rule: they stay replicated
unless FSDP picks that dimension). Parameters are float32; `dtype` is the compute dtype.
LayerNorm reduces in float32 whatever the compute dtype, and `jax.nn.dot_product_attention`
takes its softmax in float32 — also for float64 inputs, which bounds a float64 run's agreement
with a float64 reference at about 1e-7 relative instead of 1e-15.

Activations go by transformers' names (`ACT2FN`): `gelu` is the exact erf GELU, `quick_gelu` is
OpenAI CLIP's x * sigmoid(1.702 x).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

TOKEN_AXES = ("batch", "length", "embed")
_INIT_STD = 0.02  # transformers' initializer_range; only fresh (never loaded) weights use it


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


def gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": gelu,
}


def activation(name: str, source: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"{source}: hidden_act {name!r} is not supported; diffjax implements "
                         f"{sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def dense(features: int, axes: tuple, dtype: Any, name: str, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(_INIT_STD), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]), name=name)


def layer_norm(epsilon: float, dtype: Any, name: str) -> nn.LayerNorm:
    # use_fast_variance=False: E[(x - mean)^2] as torch computes it, not E[x^2] - mean^2.
    return nn.LayerNorm(
        epsilon=epsilon, use_fast_variance=False, dtype=dtype, param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), name=name)


def embedding(num: int, features: int, axes: tuple, dtype: Any, name: str) -> nn.Embed:
    return nn.Embed(
        num, features, dtype=dtype, param_dtype=jnp.float32,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(_INIT_STD), axes),
        name=name)


def multi_head_attention(query: jax.Array, key: jax.Array, value: jax.Array, num_heads: int,
                         key_mask: jax.Array | None, is_causal: bool) -> jax.Array:
    """softmax(q k^T / sqrt(head_dim) + masks) v over `num_heads` heads; (B, T, D) in and out.

    `key_mask` (B, S), nonzero for tokens that may be attended to; `is_causal` adds the
    lower-triangular mask (both together, as transformers' `create_causal_mask` combines them).
    """
    b, t, d = query.shape
    head_dim = d // num_heads

    def split(x):
        return x.reshape(b, x.shape[1], num_heads, head_dim)

    mask = None if key_mask is None else (key_mask != 0)[:, None, None, :]
    # implementation=None is XLA's attention in JAX 0.10 (cuDNN only when asked for by name).
    out = jax.nn.dot_product_attention(split(query), split(key), split(value), mask=mask,
                                       scale=head_dim ** -0.5, is_causal=is_causal,
                                       implementation=None)
    return out.reshape(b, t, d)


def output_dtype(dtype: Any) -> Any:
    """Outputs leave in float32 (float64 under x64 when computing in float64)."""
    return jnp.promote_types(dtype, jnp.float32)
