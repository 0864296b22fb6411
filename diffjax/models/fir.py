"""FIR up/down-sampling (StyleGAN2's upfirdn2d), as NCSN++ uses it, on NHWC arrays.

score_sde's `up_or_down_sampling.py` (ported from StyleGAN2) resamples with a separable FIR
kernel k (NCSN++: [1, 3, 3, 1]) normalised to sum 1: upsampling inserts zeros and filters with
k * factor^2, downsampling filters with k and keeps every second pixel. Its fused variants put
one resampling next to a 3x3 convolution with a single padding step; the padding determines the
function at the borders, so every pad below is the reference's, and `tests/test_ncsnpp.py`
checks them against brute-force numpy. A kernel of [1, 1] makes these nearest-neighbour
upsampling and 2x2 average pooling.

Everything is one `lax.conv_general_dilated` per filter: zero insertion is `lhs_dilation`,
decimation is the stride, the filter is depthwise (`feature_group_count` = channels).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def setup_kernel(kernel: Sequence[float]) -> np.ndarray:
    """A 1-D kernel becomes its outer product; the result sums to one."""
    k = np.asarray(kernel, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"FIR kernel must be 1-D or square 2-D, got shape {k.shape}.")
    return k / np.sum(k)


def upfirdn2d(x: jax.Array, kernel: np.ndarray, *, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> jax.Array:
    """Upsample by zero insertion, pad, convolve with `kernel` (2-D), keep every `down`-th pixel.

    As StyleGAN2's reference `upfirdn2d_native`: the zero-inserted image is H * up wide (a
    trailing run of up - 1 zeros), the kernel is flipped (a true convolution), and `pad` is
    (before, after) on both spatial axes; negative pads crop.
    """
    channels = x.shape[-1]
    flipped = np.ascontiguousarray(kernel[::-1, ::-1])
    weights = jnp.asarray(np.tile(flipped[:, :, None, None], (1, 1, 1, channels)), x.dtype)
    padding = ((pad[0], pad[1] + up - 1),) * 2
    return jax.lax.conv_general_dilated(
        x, weights, window_strides=(down, down), padding=padding, lhs_dilation=(up, up),
        dimension_numbers=_DIMENSIONS, feature_group_count=channels)


def upsample_2d(x: jax.Array, kernel: Sequence[float], factor: int = 2) -> jax.Array:
    k = setup_kernel(kernel) * factor**2
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: jax.Array, kernel: Sequence[float], factor: int = 2) -> jax.Array:
    k = setup_kernel(kernel)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x: jax.Array, w: jax.Array, kernel: Sequence[float],
                     factor: int = 2) -> jax.Array:
    """Transposed convolution with `w` (HWIO) at stride `factor`, then the FIR filter.

    score_sde: conv_transpose2d with the spatially flipped weight, which is a stride-1
    convolution of the zero-inserted input with `w` itself under full (K - 1) padding.
    """
    conv_size = w.shape[0]
    k = setup_kernel(kernel) * factor**2
    p = (k.shape[0] - factor) - (conv_size - 1)
    full = conv_size - 1
    x = jax.lax.conv_general_dilated(
        x, w, window_strides=(1, 1), padding=((full, full), (full, full)),
        lhs_dilation=(factor, factor), dimension_numbers=_DIMENSIONS)
    return upfirdn2d(x, k, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: jax.Array, w: jax.Array, kernel: Sequence[float],
                       factor: int = 2) -> jax.Array:
    """The FIR filter with the padding of both operations, then a stride-`factor` conv."""
    conv_size = w.shape[0]
    k = setup_kernel(kernel)
    p = (k.shape[0] - factor) + (conv_size - 1)
    x = upfirdn2d(x, k, pad=((p + 1) // 2, p // 2))
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(factor, factor), padding="VALID", dimension_numbers=_DIMENSIONS)


def naive_upsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour upsampling (each pixel repeated factor x factor times)."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
    """Mean over factor x factor blocks."""
    b, h, w, c = x.shape
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
