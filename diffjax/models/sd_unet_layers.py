"""The layers of diffusers' UNet2DConditionModel in NHWC: ResnetBlock2D, Downsample2D,
Upsample2D, Attention, the GEGLU FeedForward, BasicTransformerBlock and Transformer2DModel.

Module names are diffusers' (`norm1`, `conv1`, `time_emb_proj`, `attn1.to_q`, `to_out_0`,
`ff.net_0.proj`, `proj_in`, `transformer_blocks_0`, ...) so that a Flax path maps back to the
state-dict name one to one (`diffjax.models.sd_unet_weights`). What each layer does, exactly as
diffusers 0.42 (read in diffusers/models/{resnet,attention,attention_processor,activations}.py
and transformers/transformer_2d.py):

* ResnetBlock2D: GroupNorm -> act -> conv3x3 -> + Linear(act(temb)) -> GroupNorm -> act ->
  (dropout) -> conv3x3, plus a 1x1 conv shortcut when the width changes; the sum is divided by
  `output_scale_factor`. GroupNorm eps is the config's norm_eps.
* Transformer2DModel: GroupNorm (eps 1e-6, whatever norm_eps says: diffusers hard-codes it),
  proj_in (1x1 conv, or a Linear after flattening when use_linear_projection), the transformer
  blocks, proj_out, plus the input. Its width is heads * (channels // heads).
* BasicTransformerBlock: pre-LayerNorm (eps 1e-5) self-attention (cross-attention on the text
  when only_cross_attention), cross-attention on the text, GEGLU feed-forward (4x inner width,
  exact erf GELU on the gate half), each added to the residual stream. q/k/v have no bias,
  to_out.0 has one; scale 1/sqrt(head_dim).

Attention runs through `jax.nn.dot_product_attention` (`implementation` None/"xla"/"cudnn"),
whose scores and softmax are float32 for bfloat16 inputs: that is what diffusers'
`upcast_attention` asks for, so both values of that key compute the same here. "einsum" is the
same math written out with the softmax in the compute dtype promoted to float32, for float64
checks (jax's kernel always rounds the softmax to float32).

Parameters are float32 with logical axis names: convolutions (None, None, "conv_in",
"conv_out"), attention projections ("embed", "heads") / ("heads", "embed"), feed-forward
("embed", "mlp") / ("mlp", "embed"), the time-embedding projection ("cond", "conv_out"),
norms ("norm",). Deliberate difference when training from scratch: kernels start as torch's
default (kaiming-uniform, a = sqrt(5)) but biases start at zero.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

CONV_AXES = (None, None, "conv_in", "conv_out")
IMAGE_AXES = ("batch", None, None, None)
TOKEN_AXES = ("batch", "length", None)
ATTENTION_IMPLEMENTATIONS = (None, "xla", "cudnn", "einsum")
TRANSFORMER_GROUPNORM_EPS = 1e-6  # Transformer2DModel's GroupNorm, fixed in diffusers
LAYERNORM_EPS = 1e-5  # BasicTransformerBlock's LayerNorms (Transformer2DModel's default)

# torch's default Conv2d/Linear init: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
_TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": nn.silu, "swish": nn.silu, "relu": nn.relu,
    "gelu": partial(nn.gelu, approximate=False),
    "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
}


def conv(features: int, kernel: int, dtype, name: str, *, stride: int = 1,
         padding: Any = None) -> nn.Conv:
    if padding is None:
        padding = (kernel - 1) // 2
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=padding,
        kernel_init=nn.with_logical_partitioning(_TORCH_KERNEL_INIT, CONV_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
        dtype=dtype, param_dtype=jnp.float32, name=name)


def dense(features: int, dtype, name: str, axes: tuple, *, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(
        features, use_bias=use_bias,
        kernel_init=nn.with_logical_partitioning(_TORCH_KERNEL_INIT, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[-1],)),
        dtype=dtype, param_dtype=jnp.float32, name=name)


def group_norm(groups: int, eps: float, dtype, name: str) -> nn.GroupNorm:
    return nn.GroupNorm(
        num_groups=groups, epsilon=eps, use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        dtype=dtype, param_dtype=jnp.float32, name=name)


def layer_norm(dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=LAYERNORM_EPS, use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        dtype=dtype, param_dtype=jnp.float32, name=name)


def attend(query, key, value, implementation: str | None) -> jax.Array:
    """Softmax attention of [B, T, heads, D] queries on [B, S, heads, D] keys/values."""
    if implementation == "einsum":
        logits_dtype = jnp.promote_types(query.dtype, jnp.float32)
        logits = jnp.einsum("btnh,bsnh->bnts", query, key, preferred_element_type=logits_dtype)
        probs = jax.nn.softmax(logits / np.sqrt(query.shape[-1]), axis=-1)
        return jnp.einsum("bnts,bsnh->btnh", probs.astype(value.dtype), value)
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention_implementation={implementation!r}; choose one of "
                         f"{list(ATTENTION_IMPLEMENTATIONS)}.")
    return jax.nn.dot_product_attention(query, key, value, implementation=implementation)


class ResnetBlock2D(nn.Module):
    out_channels: int
    groups: int
    eps: float
    act_fn: str = "silu"
    output_scale_factor: float = 1.0
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb, train: bool = False):
        act = ACTIVATIONS[self.act_fn]
        h = act(group_norm(self.groups, self.eps, self.dtype, "norm1")(x))
        h = conv(self.out_channels, 3, self.dtype, "conv1")(h)
        t = dense(self.out_channels, self.dtype, "time_emb_proj", ("cond", "conv_out"))(act(temb))
        h = h + t[:, None, None, :]
        h = act(group_norm(self.groups, self.eps, self.dtype, "norm2")(h))
        if self.dropout > 0:
            h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv(self.out_channels, 3, self.dtype, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
        return (x + h) / jnp.asarray(self.output_scale_factor, h.dtype)


class Downsample2D(nn.Module):
    """A 3x3 convolution of stride 2, padded `padding` on every side (0: right and bottom by one,
    as diffusers pads when padding is 0)."""

    padding: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        padding = ((0, 1), (0, 1)) if self.padding == 0 else self.padding
        return conv(x.shape[-1], 3, self.dtype, "conv", stride=2, padding=padding)(x)


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """torch's `interpolate(mode="nearest", size=...)` source rows: floor(i * (in / out)) in float32
    arithmetic (as ATen computes it), clipped to the input."""
    if size_out == 2 * size_in:
        return np.arange(size_out) // 2
    scale = np.float32(size_in) / np.float32(size_out)
    rows = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(rows, size_in - 1)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 (or to `size`, when diffusers forwards the skip's size), a conv3x3."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, size: tuple[int, int] | None = None):
        height, width = (2 * x.shape[1], 2 * x.shape[2]) if size is None else size
        x = jnp.take(x, nearest_indices(x.shape[1], height), axis=1)
        x = jnp.take(x, nearest_indices(x.shape[2], width), axis=2)
        return conv(x.shape[-1], 3, self.dtype, "conv")(x)


class Attention(nn.Module):
    """diffusers' Attention with AttnProcessor2_0: q from x, k/v from `context` (x if None)."""

    heads: int
    head_dim: int
    implementation: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context=None):
        context = x if context is None else context
        inner = self.heads * self.head_dim
        q, k, v = (dense(inner, self.dtype, name, ("embed", "heads"), use_bias=False)(source)
                   for name, source in (("to_q", x), ("to_k", context), ("to_v", context)))
        split = lambda t: t.reshape(*t.shape[:2], self.heads, self.head_dim)  # noqa: E731
        h = attend(split(q), split(k), split(v), self.implementation)
        h = h.reshape(*h.shape[:2], inner)
        return dense(x.shape[-1], self.dtype, "to_out_0", ("heads", "embed"))(h)


class GEGLU(nn.Module):
    inner_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = dense(2 * self.inner_dim, self.dtype, "proj", ("embed", "mlp"))(x)
        h, gate = jnp.split(h, 2, axis=-1)
        return h * ACTIVATIONS["gelu"](gate)


class FeedForward(nn.Module):
    """net.0 = GEGLU (Linear to 2 x inner), net.1 = dropout (0 in every U-Net), net.2 = Linear."""

    mult: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        h = GEGLU(self.mult * dim, self.dtype, name="net_0")(x)
        return dense(dim, self.dtype, "net_2", ("mlp", "embed"))(h)


class BasicTransformerBlock(nn.Module):
    heads: int
    head_dim: int
    only_cross_attention: bool = False
    implementation: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        attention = partial(Attention, self.heads, self.head_dim, self.implementation, self.dtype)
        h = layer_norm(self.dtype, "norm1")(x)
        x = x + attention(name="attn1")(h, context if self.only_cross_attention else None)
        h = layer_norm(self.dtype, "norm2")(x)
        x = x + attention(name="attn2")(h, context)
        h = layer_norm(self.dtype, "norm3")(x)
        x = x + FeedForward(dtype=self.dtype, name="ff")(h)
        return nn.with_logical_constraint(x, TOKEN_AXES)


class Transformer2DModel(nn.Module):
    """GroupNorm, proj_in, `depth` BasicTransformerBlocks on the H*W tokens, proj_out, residual."""

    heads: int
    depth: int
    groups: int
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    implementation: str | None = None
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        batch, height, width, channels = x.shape
        head_dim = channels // self.heads
        inner = self.heads * head_dim
        h = group_norm(self.groups, TRANSFORMER_GROUPNORM_EPS, self.dtype, "norm")(x)
        if self.use_linear_projection:
            tokens = h.reshape(batch, height * width, channels)
            tokens = dense(inner, self.dtype, "proj_in", ("embed", "heads"))(tokens)
        else:
            h = conv(inner, 1, self.dtype, "proj_in")(h)
            tokens = h.reshape(batch, height * width, inner)
        block = nn.remat(BasicTransformerBlock) if self.remat else BasicTransformerBlock
        for k in range(self.depth):
            tokens = block(self.heads, head_dim, self.only_cross_attention, self.implementation,
                           self.dtype, name=f"transformer_blocks_{k}")(tokens, context)
        if self.use_linear_projection:
            tokens = dense(channels, self.dtype, "proj_out", ("heads", "embed"))(tokens)
            h = tokens.reshape(batch, height, width, channels)
        else:
            h = conv(channels, 1, self.dtype, "proj_out")(tokens.reshape(batch, height, width,
                                                                         inner))
        return h + x
