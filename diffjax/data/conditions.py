"""Conditioning images for ControlNets, computed from the images themselves (in-graph, jittable).

Each transform maps float images in [0, 1] (NHWC) to a conditioning image in [0, 1] of the same
shape, the range diffusers' ControlNet pipelines feed (their control images are not
normalised to [-1, 1]):

    outline      the shape's outline: morphological gradient, max - min over 3x3 neighbourhoods
    edges        Canny-like edges: Sobel gradient magnitude, each image divided by its maximum,
                 then kept only above 0.25 of it (no non-maximum suppression at 8x8)
    downsampled  a coarse copy: average pooling to a 4x4 grid, then nearest-neighbour back to
                 full size
    blurred      a Gaussian blur (sigma 1 pixel, 5x5 kernel, edge-replicating padding)
    mask         the silhouette: 1 where the image is brighter than 0.5, else 0

The same function scores a sample (`condition_error`): the mean squared error between the
conditioning image and the transform of what the model drew — how well samples follow it.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

COARSE_GRID = 4  # "downsampled": a 4x4 copy


def _neighbourhood(images: jax.Array, reducer, init) -> jax.Array:
    pad = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return jax.lax.reduce_window(pad, init, reducer, (1, 3, 3, 1), (1, 1, 1, 1), "VALID")


def outline(images: jax.Array) -> jax.Array:
    dilated = _neighbourhood(images, jax.lax.max, -jnp.inf)
    eroded = _neighbourhood(images, jax.lax.min, jnp.inf)
    return jnp.clip(dilated - eroded, 0.0, 1.0)


def _filter(images: jax.Array, kernel: np.ndarray) -> jax.Array:
    k = kernel.shape[0] // 2
    channels = images.shape[-1]
    padded = jnp.pad(images, ((0, 0), (k, k), (k, k), (0, 0)), mode="edge")
    weights = jnp.asarray(np.tile(kernel[:, :, None, None], (1, 1, 1, channels)), images.dtype)
    return jax.lax.conv_general_dilated(padded, weights, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=channels)


def edges(images: jax.Array) -> jax.Array:
    sobel = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], np.float32)
    gx, gy = _filter(images, sobel), _filter(images, sobel.T)
    magnitude = jnp.sqrt(gx ** 2 + gy ** 2)
    peak = jnp.max(magnitude, axis=(1, 2, 3), keepdims=True)
    scaled = magnitude / jnp.maximum(peak, 1e-6)
    return jnp.where(scaled > 0.25, scaled, 0.0)


def downsampled(images: jax.Array) -> jax.Array:
    batch, height, width, channels = images.shape
    if height % COARSE_GRID or width % COARSE_GRID:
        raise ValueError(f"The 'downsampled' conditioning needs image sizes divisible by "
                         f"{COARSE_GRID}, got {height}x{width}.")
    fh, fw = height // COARSE_GRID, width // COARSE_GRID
    coarse = images.reshape(batch, COARSE_GRID, fh, COARSE_GRID, fw, channels).mean(axis=(2, 4))
    return jnp.repeat(jnp.repeat(coarse, fh, axis=1), fw, axis=2)


def blurred(images: jax.Array) -> jax.Array:
    x = np.arange(-2, 3, dtype=np.float64)
    g = np.exp(-0.5 * x ** 2)
    kernel = np.outer(g, g)
    return _filter(images, (kernel / kernel.sum()).astype(np.float32))


def mask(images: jax.Array) -> jax.Array:
    return (images > 0.5).astype(images.dtype)


CONDITIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "outline": outline, "edges": edges, "downsampled": downsampled, "blurred": blurred,
    "mask": mask,
}


def get_condition(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in CONDITIONS:
        raise ValueError(f"model.controlnet={name!r} is not a conditioning; choose one of "
                         f"{sorted(CONDITIONS)}.")
    return CONDITIONS[name]


def from_uint8(images) -> jax.Array:
    """uint8 images (a loader batch) -> float32 in [0, 1]."""
    return jnp.asarray(images, jnp.float32) / 255.0


def condition_error(name: str, conditions: jax.Array, samples01: jax.Array) -> jax.Array:
    """Per-image MSE between the conditioning images and the transform of the samples (both in
    [0, 1])."""
    made = get_condition(name)(samples01)
    return jnp.mean((made - conditions) ** 2, axis=(1, 2, 3))
