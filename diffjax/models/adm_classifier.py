"""ADM's noise-conditional classifier (Dhariwal & Nichol, 2021): guided-diffusion's
`EncoderUNetModel`, layer for layer, so its published classifiers (`64x64_classifier.pt`,
`128x128_classifier.pt`, `256x256_classifier.pt`, `512x512_classifier.pt`) load by
`python -m diffjax.convert --source=adm_classifier` and give guided-diffusion's logits.

`classifier.name=adm`. Input: ADM's x_t itself (no input scaling) and its timestep index
0..N-1 (diffjax's `ddpm` process conditions on the same), NHWC. The parts, as guided-diffusion
builds them:
- time embedding: [cos, sin] of t * 10000^(-i/half) (cos first, unlike score_sde), Linear(4C),
  SiLU, Linear(4C);
- a 3x3 conv, then per level `num_res_blocks` residual blocks (GroupNorm(32) in float32, SiLU,
  conv; the embedding's SiLU + Linear as scale and shift of the second GroupNorm when
  `use_scale_shift_norm`, else added; a zero-initialised conv; 1x1 conv skip where the width
  changes), an attention block after each where the downsampling factor is in `attention_ds`,
  and between levels a residual block that average-pools (`resblock_updown`) or a stride-2 conv;
- the middle block: residual, attention, residual;
- the head: GroupNorm, SiLU, then CLIP's attention pooling (a mean token prepended, a learned
  position embedding, one multi-head attention; the mean token's output projected to the logits)
  for `pool="attention"`, or global average pooling and a zero-initialised 1x1 conv ("adaptive").
Attention heads: `num_head_channels` per head (the published classifiers: 64), or `num_heads`.
The blocks use guided-diffusion's "legacy" q/k/v order (heads first); the pooling its new order.
Parameter names follow guided-diffusion's state-dict keys with the indices joined by "_"
(`input_blocks.1.0.in_layers.2.weight` -> `input_blocks_1_0/in_layers_2/kernel`), which is all
the converter (`diffjax.convert.adm`) needs to know.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.embeddings import timestep_embedding
from diffjax.models.sd_unet_layers import group_norm

Array = jax.Array


def group_norm32(x, name: str):
    """GroupNorm(32 groups, eps 1e-5) computed in float32, cast back (guided-diffusion's
    GroupNorm32); called inside a compact module."""
    return group_norm(32, 1e-5, jnp.float32, name)(x.astype(jnp.float32)).astype(x.dtype)


def _avg_pool2(x):
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _conv(features, kernel, name, stride=1, dtype=jnp.float32, zero=False):
    pad = kernel // 2
    init = {"kernel_init": nn.initializers.zeros} if zero else {}  # ADM's zero_module
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), dtype=dtype, param_dtype=jnp.float32,
                   name=name, **init)


class ResBlock(nn.Module):
    out_channels: int
    use_scale_shift_norm: bool
    down: bool = False
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb, train: bool):
        h = nn.silu(group_norm32(x, "in_layers_0"))
        if self.down:
            h, x = _avg_pool2(h), _avg_pool2(x)
        h = _conv(self.out_channels, 3, "in_layers_2", dtype=self.dtype)(h)
        width = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
        emb_out = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32,
                           name="emb_layers_1")(nn.silu(emb)).astype(h.dtype)[:, None, None, :]
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(emb_out, 2, axis=-1)
            h = group_norm32(h, "out_layers_0") * (1 + scale) + shift
        else:
            h = group_norm32(h + emb_out, "out_layers_0")
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = _conv(self.out_channels, 3, "out_layers_3", dtype=self.dtype, zero=True)(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, "skip_connection", dtype=self.dtype)(x)
        return x + h


def _attention(q, k, v, heads: int):
    """Softmax attention of [B, L, heads * ch] queries, keys and values, scaled as ADM does
    (q and k each by ch^-1/4), the softmax in float32."""
    b, length, width = q.shape
    ch = width // heads
    split = lambda a: a.reshape(b, -1, heads, ch)  # noqa: E731
    scale = 1.0 / math.sqrt(math.sqrt(ch))
    weight = jnp.einsum("bthc,bshc->bhts", split(q) * scale, split(k) * scale)
    weight = jax.nn.softmax(weight.astype(jnp.float32), axis=-1).astype(weight.dtype)
    return jnp.einsum("bhts,bshc->bthc", weight, split(v)).reshape(b, length, width)


def _legacy_qkv(qkv, heads: int):
    """(q, k, v) of guided-diffusion's QKVAttentionLegacy: channels ordered [head][q, k, v][c]."""
    b, length, width = qkv.shape
    ch = width // (3 * heads)
    per_head = qkv.reshape(b, length, heads, 3, ch)
    return tuple(per_head[:, :, :, i, :].reshape(b, length, heads * ch) for i in range(3))


def _new_qkv(qkv):
    """(q, k, v) of QKVAttention: channels ordered [q, k, v][head][c]."""
    return tuple(jnp.split(qkv, 3, axis=-1))


def _heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    if num_head_channels == -1:
        return num_heads
    if channels % num_head_channels:
        raise ValueError(f"classifier: {channels} channels are not divisible by "
                         f"num_head_channels={num_head_channels}; change the widths or the "
                         f"head size.")
    return channels // num_head_channels


class AttentionBlock(nn.Module):
    num_heads: int
    num_head_channels: int
    new_attention_order: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        heads = _heads(c, self.num_heads, self.num_head_channels)
        qkv = nn.Dense(3 * c, dtype=self.dtype, param_dtype=jnp.float32, name="qkv")(
            group_norm32(x, "norm").reshape(b, hgt * wid, c))
        q, k, v = _new_qkv(qkv) if self.new_attention_order else _legacy_qkv(qkv, heads)
        h = nn.Dense(c, dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=nn.initializers.zeros, name="proj_out")(
            _attention(q, k, v, heads))
        return x + h.reshape(x.shape)


class AttentionPool2d(nn.Module):
    """CLIP's attention pooling as guided-diffusion adapts it (new q/k/v order)."""

    num_head_channels: int
    output_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        tokens = x.reshape(b, hgt * wid, c)
        tokens = jnp.concatenate([jnp.mean(tokens, axis=1, keepdims=True), tokens], axis=1)
        position = self.param("positional_embedding",
                              lambda key, shape: jax.random.normal(key, shape) / c**0.5,
                              (hgt * wid + 1, c))
        tokens = tokens + position.astype(tokens.dtype)
        qkv = nn.Dense(3 * c, dtype=self.dtype, param_dtype=jnp.float32, name="qkv_proj")(tokens)
        out = _attention(*_new_qkv(qkv), c // self.num_head_channels)
        return nn.Dense(self.output_dim, dtype=self.dtype, param_dtype=jnp.float32,
                        name="c_proj")(out)[:, 0]


class ADMClassifier(nn.Module):
    """guided-diffusion's EncoderUNetModel; `classifier(x_t, timesteps) -> logits`."""

    num_classes: int
    model_channels: int = 128
    num_res_blocks: int = 2
    attention_ds: Sequence[int] = (2, 4, 8)  # image_size // ADM's attention resolutions
    channel_mult: Sequence[float] = (1, 2, 3, 4)
    num_heads: int = 1
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    new_attention_order: bool = False
    pool: str = "attention"
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, noise_cond, labels=None, *, train: bool = False) -> Array:
        del labels
        if self.pool not in ("attention", "adaptive"):
            raise ValueError(f"classifier.adm_pool={self.pool!r}: diffjax has ADM's "
                             f"'attention' and 'adaptive' heads (the published classifiers use "
                             f"'attention').")
        mc, dt = self.model_channels, self.dtype
        emb = timestep_embedding(noise_cond, mc)  # ADM/DiT layout
        emb = nn.Dense(4 * mc, dtype=dt, param_dtype=jnp.float32, name="time_embed_0")(emb)
        emb = nn.Dense(4 * mc, dtype=dt, param_dtype=jnp.float32, name="time_embed_2")(
            nn.silu(emb))
        block = lambda **kw: ResBlock(use_scale_shift_norm=self.use_scale_shift_norm,  # noqa
                                      dropout=self.dropout, dtype=dt, **kw)
        attention = lambda name: AttentionBlock(  # noqa: E731
            self.num_heads, self.num_head_channels, self.new_attention_order, dt, name=name)

        h = _conv(int(self.channel_mult[0] * mc), 3, "input_blocks_0_0", dtype=dt)(
            x.astype(dt))
        index, ds = 1, 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = block(out_channels=int(mult * mc), name=f"input_blocks_{index}_0")(
                    h, emb, train)
                if ds in tuple(self.attention_ds):
                    h = attention(f"input_blocks_{index}_1")(h)
                index += 1
            if level != len(self.channel_mult) - 1:
                channels = h.shape[-1]
                if self.resblock_updown:
                    h = block(out_channels=channels, down=True,
                              name=f"input_blocks_{index}_0")(h, emb, train)
                else:
                    h = _DownsampleConv(channels, dt, name=f"input_blocks_{index}_0")(h)
                index += 1
                ds *= 2
        channels = h.shape[-1]
        h = block(out_channels=channels, name="middle_block_0")(h, emb, train)
        h = attention("middle_block_1")(h)
        h = block(out_channels=channels, name="middle_block_2")(h, emb, train)
        h = nn.silu(group_norm32(h, "out_0"))
        if self.pool == "attention":
            logits = AttentionPool2d(self.num_head_channels, self.num_classes, dt,
                                     name="out_2")(h)
        else:
            pooled = jnp.mean(h, axis=(1, 2), keepdims=True)
            logits = nn.Conv(self.num_classes, (1, 1), dtype=dt, param_dtype=jnp.float32,
                             kernel_init=nn.initializers.zeros, name="out_3")(pooled)[:, 0, 0]
        return logits.astype(jnp.float32)


class _DownsampleConv(nn.Module):
    """guided-diffusion's Downsample with a conv: 3x3, stride 2, padding 1 (param `op`)."""

    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return _conv(self.channels, 3, "op", stride=2, dtype=self.dtype)(x)


# guided-diffusion's create_classifier: channel multipliers by image size.
ADM_CHANNEL_MULT = {64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4),
                    512: (0.5, 1, 1, 2, 2, 4, 4)}
