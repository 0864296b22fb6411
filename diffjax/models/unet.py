"""DDPM++ / NCSN++-family U-Net (Song et al., 2021), without SDE knowledge.

Called as `net(x, noise_cond, labels, train=...)`; `noise_cond` is whatever scalar the score
module chose (999 t or log sigma). Every parameter carries logical axis names so that the mesh
rules in `diffjax.parallel.sharding` can shard it (convolution output channels over `fsdp`).

Differences from score_sde's `ncsnpp.py` are deliberate: no FIR resampling (DDPM++ setting;
NCSN++'s FIR kernels cost much and gain little at the resolutions users train here), one
attention implementation (`jax.nn.dot_product_attention`, which GPUs fuse), and class conditioning
through the time embedding.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.embeddings import LabelEmbedding, NoiseLevelEmbedding

CONV_AXES = (None, None, "conv_in", "conv_out")
DENSE_AXES = ("conv_in", "conv_out")


def scaled_init(scale: float):
    """score_sde's default_init: fan-average uniform, with scale 0 meaning 'start near zero'."""
    return nn.initializers.variance_scaling(max(scale, 1e-10), "fan_avg", "uniform")


def conv(features: int, kernel: int = 3, *, stride: int = 1, init_scale: float = 1.0, dtype=None):
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding="SAME" if stride == 1 else ((1, 1), (1, 1)),
        kernel_init=nn.with_logical_partitioning(scaled_init(init_scale), CONV_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
        dtype=dtype,
        param_dtype=jnp.float32,
    )


def dense(features: int, *, init_scale: float = 1.0, dtype=None):
    return nn.Dense(
        features,
        kernel_init=nn.with_logical_partitioning(scaled_init(init_scale), DENSE_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
        dtype=dtype,
        param_dtype=jnp.float32,
    )


def group_norm(channels: int, dtype=None):
    return nn.GroupNorm(
        num_groups=min(channels // 4, 32),
        epsilon=1e-6,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        dtype=dtype,
        param_dtype=jnp.float32,
    )


def resample(x: jax.Array, factor: float) -> jax.Array:
    """Nearest-neighbour upsampling (factor 2) or 2x2 average pooling (factor 0.5)."""
    if factor > 1:
        b, h, w, c = x.shape
        return jax.image.resize(x, (b, h * 2, w * 2, c), "nearest")
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class ResnetBlock(nn.Module):
    """BigGAN-style residual block ('biggan') or the plain DDPM block ('ddpm')."""

    out_channels: int
    dropout: float
    skip_rescale: bool
    init_scale: float
    resample_factor: float = 1.0  # 2 = up, 0.5 = down (biggan resampling inside the block)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb, train: bool):  # positional: nn.remat needs it static
        in_channels = x.shape[-1]
        h = nn.silu(group_norm(in_channels, self.dtype)(x))
        if self.resample_factor != 1.0:
            h = resample(h, self.resample_factor)
            x = resample(x, self.resample_factor)
        h = conv(self.out_channels, dtype=self.dtype)(h)
        h = h + dense(self.out_channels, dtype=self.dtype)(nn.silu(temb))[:, None, None, :]
        h = nn.silu(group_norm(self.out_channels, self.dtype)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv(self.out_channels, init_scale=self.init_scale, dtype=self.dtype)(h)
        if in_channels != self.out_channels:
            x = conv(self.out_channels, kernel=1, dtype=self.dtype)(x)
        out = x + h
        return out / math.sqrt(2.0) if self.skip_rescale else out


class AttentionBlock(nn.Module):
    """Single-head spatial self-attention, as in DDPM++."""

    skip_rescale: bool
    init_scale: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, height, width, c = x.shape
        h = group_norm(c, self.dtype)(x)
        qkv = conv(3 * c, kernel=1, dtype=self.dtype)(h).reshape(b, height * width, 3, 1, c)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        h = jax.nn.dot_product_attention(q, k, v).reshape(b, height, width, c)
        h = conv(c, kernel=1, init_scale=self.init_scale, dtype=self.dtype)(h)
        out = x + h
        return out / math.sqrt(2.0) if self.skip_rescale else out


class UNet(nn.Module):
    """The DDPM++ U-Net. `resblock_type` 'biggan' resamples inside residual blocks."""

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resblock_type: str = "biggan"
    skip_rescale: bool = True
    init_scale: float = 0.0
    noise_embedding: str = "positional"
    fourier_scale: float = 16.0
    num_classes: int = 0
    label_dropout: float = 0.1
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x, noise_cond, labels=None, *, train: bool):
        if self.resblock_type not in ("biggan", "ddpm"):
            raise ValueError(
                f"model.unet.resblock_type={self.resblock_type!r}; use 'biggan' or 'ddpm'."
            )
        levels = len(self.ch_mult)
        if x.shape[1] % 2 ** (levels - 1) or x.shape[2] % 2 ** (levels - 1):
            raise ValueError(
                f"Image size {x.shape[1]}x{x.shape[2]} is not divisible by 2^{levels - 1} for "
                f"ch_mult={tuple(self.ch_mult)}; use fewer levels or another data.image_size."
            )
        block_cls = nn.remat(ResnetBlock, static_argnums=(3,)) if self.remat else ResnetBlock

        # Explicit names keep parameter paths (and checkpoints) the same with and without remat.
        counts = {"res": 0, "attn": 0}

        def res_block(out_channels, resample_factor=1.0):
            counts["res"] += 1
            return block_cls(out_channels, self.dropout, self.skip_rescale, self.init_scale,
                             resample_factor, self.dtype, name=f"ResnetBlock_{counts['res'] - 1}")

        def attention():
            counts["attn"] += 1
            return AttentionBlock(self.skip_rescale, self.init_scale, self.dtype,
                                  name=f"AttentionBlock_{counts['attn'] - 1}")

        temb = NoiseLevelEmbedding(dim=4 * self.nf, frequency_dim=self.nf,
                                   kind=self.noise_embedding,
                                   fourier_scale=self.fourier_scale)(noise_cond)
        if self.num_classes > 0:
            temb = temb + LabelEmbedding(self.num_classes, 4 * self.nf,
                                         self.label_dropout)(labels, train=train,
                                                             batch_size=x.shape[0])
        temb = temb.astype(self.dtype)
        out_channels = x.shape[-1]
        h = conv(self.nf, dtype=self.dtype)(x.astype(self.dtype))

        skips = [h]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = res_block(self.nf * mult)(h, temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attention()(h)
                skips.append(h)
            if level != levels - 1:
                if self.resblock_type == "biggan":
                    h = res_block(h.shape[-1], 0.5)(h, temb, train)
                else:
                    h = conv(h.shape[-1], stride=2, dtype=self.dtype)(h)
                skips.append(h)

        h = res_block(h.shape[-1])(h, temb, train)
        h = attention()(h)
        h = res_block(h.shape[-1])(h, temb, train)

        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = res_block(self.nf * mult)(jnp.concatenate([h, skips.pop()], -1), temb, train)
            if h.shape[1] in self.attn_resolutions:
                h = attention()(h)
            if level != 0:
                if self.resblock_type == "biggan":
                    h = res_block(h.shape[-1], 2.0)(h, temb, train)
                else:
                    h = conv(h.shape[-1], dtype=self.dtype)(resample(h, 2.0))
        assert not skips, "every down-path activation must feed the up path"

        h = nn.silu(group_norm(h.shape[-1], self.dtype)(h))
        h = conv(out_channels, init_scale=self.init_scale, dtype=self.dtype)(h)
        return h.astype(jnp.float32)
