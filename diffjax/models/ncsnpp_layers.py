"""The layers of score_sde's NCSN++ family (`models/layerspp.py`, `layers.py`), in NHWC.

Each block keeps the reference's submodule names (GroupNorm_0, Conv_0, Dense_0, NIN_0, ...), so a
score_sde state dict maps onto these parameters name by name, and its initialisation:
`default_init(scale)` is variance_scaling(scale, "fan_avg", "uniform") with scale 0 meaning
1e-10 (the "zero" init of output layers), attention projections (NIN) start at scale 0.1.

Parameters carry logical axis names for the mesh rules of `diffjax.parallel.sharding`:
convolution kernels (None, None, "conv_in", "conv_out"), dense and NIN kernels
("conv_in", "conv_out"), biases ("conv_out",), normalisation vectors ("norm",).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models import fir

CONV_AXES = (None, None, "conv_in", "conv_out")
DENSE_AXES = ("conv_in", "conv_out")
BIAS_AXES = ("conv_out",)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "swish": nn.silu,
    "elu": nn.elu,
    "relu": nn.relu,
    "lrelu": lambda x: nn.leaky_relu(x, negative_slope=0.2),
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    try:
        return ACTIVATIONS[name.lower()]
    except KeyError:
        raise ValueError(f"model.unet.nonlinearity={name!r}; choose one of "
                         f"{sorted(ACTIVATIONS)}.") from None


def default_init(scale: float = 1.0, axes=CONV_AXES):
    """score_sde's default_init: fan-average uniform; scale 0 becomes 1e-10 as in score_sde."""
    scale = 1e-10 if scale == 0 else scale
    return nn.with_logical_partitioning(
        nn.initializers.variance_scaling(scale, "fan_avg", "uniform"), axes)


def _zeros(axes=BIAS_AXES):
    return nn.with_logical_partitioning(nn.initializers.zeros, axes)


def conv3x3(features: int, *, init_scale: float = 1.0, dtype=None, name=None) -> nn.Conv:
    return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)),
                   kernel_init=default_init(init_scale), bias_init=_zeros(),
                   dtype=dtype, param_dtype=jnp.float32, name=name)


def conv1x1(features: int, *, init_scale: float = 1.0, dtype=None, name=None) -> nn.Conv:
    return nn.Conv(features, (1, 1), padding="VALID",
                   kernel_init=default_init(init_scale), bias_init=_zeros(),
                   dtype=dtype, param_dtype=jnp.float32, name=name)


def dense(features: int, *, dtype=None, name=None) -> nn.Dense:
    return nn.Dense(features, kernel_init=default_init(1.0, DENSE_AXES), bias_init=_zeros(),
                    dtype=dtype, param_dtype=jnp.float32, name=name)


def group_norm(channels: int, *, dtype=None, name=None) -> nn.GroupNorm:
    # Two-pass variance: with [0, 1] data and VE noise (sigma up to 50 and beyond) activations
    # can have means far above their spread, where E[x^2] - E[x]^2 loses float32 precision.
    return nn.GroupNorm(num_groups=min(channels // 4, 32), epsilon=1e-6, use_fast_variance=False,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                        bias_init=_zeros(("norm",)), dtype=dtype, param_dtype=jnp.float32,
                        name=name)


def _skip_sum(x, h, skip_rescale: bool):
    return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


class NIN(nn.Module):
    """Per-pixel linear map ("network in network"): score_sde's NIN, init_scale 0.1 default."""

    features: int
    init_scale: float = 0.1
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", default_init(self.init_scale, DENSE_AXES),
                            (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", _zeros(), (self.features,), jnp.float32)
        dtype = self.dtype or x.dtype
        # lax.dot_general, not jnp.einsum: the same contraction, and qwix's LoRA intercepts
        # dot_general cleanly, while its einsum path sets an attribute on the (frozen) linen
        # module and fails (SetAttributeFrozenModuleError) -- diffjax.lora.
        y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype),
                                (((x.ndim - 1,), (0,)), ((), ())))
        return y + bias.astype(dtype)


class FIRConv(nn.Module):
    """score_sde's `up_or_down_sampling.Conv2d`: a conv fused with FIR up- or downsampling."""

    features: int
    kernel_size: int = 3
    up: bool = False
    down: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", default_init(1.0), (k, k, x.shape[-1], self.features),
                            jnp.float32)
        bias = self.param("bias", _zeros(), (self.features,), jnp.float32)
        dtype = self.dtype or x.dtype
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        if self.up:
            x = fir.upsample_conv_2d(x, kernel, self.fir_kernel)
        elif self.down:
            x = fir.conv_downsample_2d(x, kernel, self.fir_kernel)
        else:
            x = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((k // 2, k // 2),) * 2,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return x + bias.astype(dtype)


class Upsample(nn.Module):
    """layerspp.Upsample: nearest (+3x3 conv) or FIR (fused with a conv when `with_conv`)."""

    features: int
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        if not self.fir:
            h = fir.naive_upsample_2d(x)
            if self.with_conv:
                h = conv3x3(self.features, dtype=self.dtype, name="Conv_0")(h)
            return h
        if not self.with_conv:
            return fir.upsample_2d(x, self.fir_kernel)
        return FIRConv(self.features, up=True, fir_kernel=self.fir_kernel, dtype=self.dtype,
                       name="Conv2d_0")(x)


class Downsample(nn.Module):
    """layerspp.Downsample: stride-2 conv with (0, 1) padding or 2x2 average, or FIR."""

    features: int
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        if not self.fir:
            if not self.with_conv:
                return fir.naive_downsample_2d(x)
            return nn.Conv(self.features, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)),
                           kernel_init=default_init(1.0), bias_init=_zeros(), dtype=self.dtype,
                           param_dtype=jnp.float32, name="Conv_0")(x)
        if not self.with_conv:
            return fir.downsample_2d(x, self.fir_kernel)
        return FIRConv(self.features, down=True, fir_kernel=self.fir_kernel, dtype=self.dtype,
                       name="Conv2d_0")(x)


class Combine(nn.Module):
    """layerspp.Combine: a 1x1 conv of the input pyramid, concatenated with or added to h."""

    method: str = "sum"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, y):
        h = conv1x1(y.shape[-1], dtype=self.dtype, name="Conv_0")(x)
        if self.method == "cat":
            return jnp.concatenate([h, y], axis=-1)
        if self.method == "sum":
            return h + y
        raise ValueError(f"model.unet.progressive_combine={self.method!r}; use 'sum' or 'cat'.")


class AttnBlockpp(nn.Module):
    """Single-head self-attention over all pixels, softmax(q k / sqrt(C)) v, as layerspp."""

    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        b, height, width, c = x.shape
        h = group_norm(c, dtype=self.dtype, name="GroupNorm_0")(x)
        q, k, v = (NIN(c, dtype=self.dtype, name=f"NIN_{i}")(h).reshape(b, height * width, 1, c)
                   for i in range(3))
        # dot_product_attention scales by 1/sqrt(C) (one head) and picks a fused kernel on GPU.
        h = jax.nn.dot_product_attention(q, k, v).reshape(b, height, width, c)
        h = NIN(c, init_scale=self.init_scale, dtype=self.dtype, name="NIN_3")(h)
        return _skip_sum(x, h, self.skip_rescale)


class ResnetBlockDDPMpp(nn.Module):
    """layerspp.ResnetBlockDDPMpp: the DDPM residual block; a NIN shortcut when widths differ."""

    out_ch: int | None  # None: as wide as the input
    act: Callable
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, temb, train: bool):  # positional: nn.remat needs `train` static
        out_ch = self.out_ch or x.shape[-1]
        h = self.act(group_norm(x.shape[-1], dtype=self.dtype, name="GroupNorm_0")(x))
        h = conv3x3(out_ch, dtype=self.dtype, name="Conv_0")(h)
        if temb is not None:
            h = h + dense(out_ch, dtype=self.dtype, name="Dense_0")(self.act(temb))[:, None, None]
        h = self.act(group_norm(out_ch, dtype=self.dtype, name="GroupNorm_1")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv3x3(out_ch, init_scale=self.init_scale, dtype=self.dtype, name="Conv_1")(h)
        if x.shape[-1] != out_ch:
            x = NIN(out_ch, dtype=self.dtype, name="NIN_0")(x)
        return _skip_sum(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
    """layerspp.ResnetBlockBigGANpp: resamples inside the block; a 1x1 shortcut conv whenever
    the width changes *or* the block resamples."""

    out_ch: int | None  # None: as wide as the input
    act: Callable
    up: bool = False
    down: bool = False
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: jnp.dtype | None = None

    def _resample(self, x):
        if self.up:
            return fir.upsample_2d(x, self.fir_kernel) if self.fir else fir.naive_upsample_2d(x)
        if self.down:
            return fir.downsample_2d(x, self.fir_kernel) if self.fir else fir.naive_downsample_2d(x)
        return x

    @nn.compact
    def __call__(self, x, temb, train: bool):  # positional: nn.remat needs `train` static
        in_ch = x.shape[-1]
        out_ch = self.out_ch or in_ch
        h = self.act(group_norm(in_ch, dtype=self.dtype, name="GroupNorm_0")(x))
        h, x = self._resample(h), self._resample(x)
        h = conv3x3(out_ch, dtype=self.dtype, name="Conv_0")(h)
        if temb is not None:
            h = h + dense(out_ch, dtype=self.dtype, name="Dense_0")(self.act(temb))[:, None, None]
        h = self.act(group_norm(out_ch, dtype=self.dtype, name="GroupNorm_1")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv3x3(out_ch, init_scale=self.init_scale, dtype=self.dtype, name="Conv_1")(h)
        if in_ch != out_ch or self.up or self.down:
            x = conv1x1(out_ch, dtype=self.dtype, name="Conv_2")(x)
        return _skip_sum(x, h, self.skip_rescale)
