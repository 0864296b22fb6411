"""Conversions between stored uint8 pixels and the continuous range the SDE models.

The conversion runs on device inside the jitted step, with the step's RNG, so that the host
loader stays a deterministic, checkpointable stream of uint8 records.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def to_model_range(images: jax.Array, rng: jax.Array, *, centered: bool, dequantize: bool,
                   random_flip: bool) -> jax.Array:
    """uint8 [B, H, W, C] -> float32 in [0, 1] (or [-1, 1] when centered).

    Uniform dequantisation maps level k to (k + u) / 256, u ~ U[0, 1): the continuous density
    whose bits/dim are comparable with published numbers.
    """
    flip_rng, noise_rng = jax.random.split(rng)
    x = images.astype(jnp.float32)
    if dequantize:
        x = (x + jax.random.uniform(noise_rng, x.shape)) / 256.0
    else:
        x = x / 255.0
    if random_flip:
        flip = jax.random.bernoulli(flip_rng, 0.5, (x.shape[0], 1, 1, 1))
        x = jnp.where(flip, x[:, :, ::-1, :], x)
    return 2.0 * x - 1.0 if centered else x


def from_model_range(x: jax.Array | np.ndarray, *, centered: bool, dequantize: bool) -> np.ndarray:
    """float samples -> uint8 images, the inverse of `to_model_range` (values clipped)."""
    x = np.asarray(x, dtype=np.float32)
    if centered:
        x = (x + 1.0) / 2.0
    levels = np.floor(x * 256.0) if dequantize else np.round(x * 255.0)
    return np.clip(levels, 0, 255).astype(np.uint8)


def log_density_offset_bits(*, centered: bool) -> float:
    """Bits/dim to add to the continuous NLL of model-range data to get the discrete NLL.

    Model-range data are u / 256 (or 2 u / 256 - 1); the density of the 256-level data is the
    model density times the Jacobian of that map, 256^-D (128^-D when centred): 8 or 7 bits.
    """
    return 7.0 if centered else 8.0
