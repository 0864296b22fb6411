"""A KL autoencoder bound to its parameters and a mesh: jitted, sharded encode and decode.

    vae = diffjax.latents.load_vae("/data/sd-vae-ft-ema")      # a diffusers folder
    mean, std = vae.encode(images)          # float NHWC in [-1, 1] -> posterior, VAE space
    z = vae.to_model_space(mean, std, rng)  # (mean + std * noise - shift) * scale
    images = vae.decode(z)                  # model-space latents -> float NHWC, about [-1, 1]

`encode` returns the posterior in the VAE's own latent space (what latent datasets store, so that
a different scale needs no re-encoding); `decode` takes model-space latents (what a diffusion
model samples). Both run any batch size: the batch is cut into chunks of `batch_size`, each
padded to a multiple of the data-parallel devices (the padding is computed and dropped, as in
`diffjax.sampling.generate`), laid out over ('data', 'fsdp') and run by one compiled function per shape.
Parameters are sharded by the mesh rules (FSDP splits convolution output channels).

With `mesh=None` the VAE uses this process's devices only, so every process of a multi-host job
can encode its own files independently. To decode global arrays of a multi-host training mesh,
pass that mesh and global jax.Arrays.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from diffjax.latents import diffusers_weights, posterior
from diffjax.latents.autoencoder import AutoencoderKL
from diffjax.parallel.mesh import MESH_AXES, batch_axis_size
from diffjax.parallel.sharding import DEFAULT_RULES, batch_sharding, tree_shardings
from diffjax.storage import torch_layout

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def local_mesh() -> Mesh:
    """All of this process's devices along 'data'."""
    devices = np.asarray(jax.local_devices()).reshape(-1, 1, 1)
    return Mesh(devices, MESH_AXES)


def compute_dtype(name: Any):
    if not isinstance(name, str):
        return name
    try:
        return COMPUTE_DTYPES[name]
    except KeyError:
        raise ValueError(f"autoencoder.dtype={name!r}; choose one of "
                         f"{sorted(COMPUTE_DTYPES)}.") from None


def params_fingerprint(params: Any) -> str:
    """sha256 (16 hex digits) of the float32 parameters in diffusers-name order: which VAE made a
    latent dataset, independent of the file it was read from."""
    if any(not getattr(leaf, "is_fully_addressable", True) for leaf in jax.tree.leaves(params)):
        params = multihost_utils.process_allgather(params, tiled=True)
    digest = hashlib.sha256()
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
    named = sorted((torch_layout.torch_name(tuple(k.key for k in path)), leaf)
                   for path, leaf in flat)
    for name, leaf in named:
        array = np.ascontiguousarray(leaf, np.float32)
        digest.update(f"{name}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


class VAE:
    """An AutoencoderKL with parameters placed on `mesh`, and its latent scale and shift."""

    def __init__(self, module: AutoencoderKL, params: Any, *, scale: float = 1.0,
                 shift: float = 0.0, mesh: Mesh | None = None, rules=DEFAULT_RULES,
                 batch_size: int = 64, name: str = "", fingerprint: str | None = None):
        self.module = module
        self.mesh = mesh if mesh is not None else local_mesh()
        self._scale, self._shift = float(scale), float(shift)  # fixed: compiled into decode
        self.batch_size = int(batch_size)
        self.name = name or "AutoencoderKL"
        self._fingerprint = fingerprint
        abstract = jax.eval_shape(module.init, jax.random.key(0), self._example_images())
        specs = nn.get_partition_spec(abstract)["params"]
        self.param_shardings = tree_shardings(specs, nn.unbox(abstract["params"]), self.mesh,
                                              tuple(rules))
        self.params = jax.device_put(nn.unbox(params), self.param_shardings)
        batch = batch_sharding(self.mesh)

        def encode(params, images):
            mean, logvar = module.apply({"params": params}, images, method=module.encode)
            return mean, posterior.std_from_logvar(logvar)

        decode = self.decode_in_graph

        self._encode = jax.jit(encode, in_shardings=(self.param_shardings, batch),
                               out_shardings=(batch, batch))
        self._decode = jax.jit(decode, in_shardings=(self.param_shardings, batch),
                               out_shardings=batch)

    def decode_in_graph(self, params: Any, latents: jax.Array) -> jax.Array:
        """Pure decode of model-space latents, to call inside a caller's jitted program (the
        sampler's, so that samples are decoded where they are drawn)."""
        z = posterior.from_model_space(latents.astype(jnp.float32), scale=self._scale,
                                       shift=self._shift)
        return self.module.apply({"params": params}, z, method=self.module.decode)

    def _example_images(self) -> jax.ShapeDtypeStruct:
        f = self.module.downsampling_factor
        return jax.ShapeDtypeStruct((1, f, f, self.module.in_channels), jnp.float32)

    @property
    def scale(self) -> float:
        return self._scale

    @property
    def shift(self) -> float:
        return self._shift

    @property
    def downsampling_factor(self) -> int:
        return self.module.downsampling_factor

    @property
    def latent_channels(self) -> int:
        return self.module.latent_channels

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = params_fingerprint(self.params)
        return self._fingerprint

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(h, w, c) of the latents of `image_size` x `image_size` images."""
        f = self.downsampling_factor
        if image_size % f:
            raise ValueError(f"data.image_size={image_size} is not divisible by the "
                             f"autoencoder's downsampling factor {f}; set --config.data."
                             f"image_size to a multiple of {f}.")
        return (image_size // f, image_size // f, self.latent_channels)

    def encode(self, images, batch_size: int | None = None) -> tuple[jax.Array, jax.Array]:
        """Posterior (mean, std), VAE space, float32, of float NHWC images in [-1, 1]."""
        return self._batched(self._encode, images, batch_size)

    def decode(self, latents, batch_size: int | None = None) -> jax.Array:
        """float32 NHWC images (about [-1, 1]) of model-space latents (z - shift) * scale."""
        return self._batched(self._decode, latents, batch_size)

    def to_model_space(self, mean, std=None, rng: jax.Array | None = None) -> jax.Array:
        """(mean + std * noise - shift) * scale; without `rng` the posterior mean."""
        if rng is None or std is None:
            return posterior.to_model_space(jnp.asarray(mean, jnp.float32), scale=self.scale,
                                            shift=self.shift)
        return posterior.sample_model_latents(rng, mean, std, scale=self.scale, shift=self.shift)

    def _batched(self, fn: Callable, x, batch_size: int | None):
        n = int(x.shape[0])
        parallel = batch_axis_size(self.mesh)
        chunk = min(n, int(batch_size or self.batch_size))
        chunk = -(-chunk // parallel) * parallel
        sharding = batch_sharding(self.mesh)
        outputs = []
        for start in range(0, n, chunk):
            part = x[start:start + chunk]
            size = int(part.shape[0])
            if size != chunk:
                pad = [(0, chunk - size)] + [(0, 0)] * (part.ndim - 1)
                part = (jnp.pad(part, pad) if isinstance(part, jax.Array)
                        else np.pad(np.asarray(part), pad))
            if not isinstance(part, jax.Array):
                part = np.asarray(part, np.float32)
            part = jax.device_put(part, sharding)  # also lays out arrays of another mesh
            out = fn(self.params, part)
            outputs.append(out if size == chunk else jax.tree.map(lambda a: a[:size], out))
        if len(outputs) == 1:
            return outputs[0]
        return jax.tree.map(lambda *parts: jnp.concatenate(parts), *outputs)


def load_vae(folder: str, mesh: Mesh | None = None, *, scale: float | None = None,
             shift: float | None = None, dtype: Any = "float32", rules=DEFAULT_RULES,
             batch_size: int = 64) -> VAE:
    """The diffusers AutoencoderKL in `folder` (config.json + diffusion_pytorch_model.safetensors,
    or a pipeline root with them in vae/). `scale` / `shift` default to config.json's
    scaling_factor (0.18215 when absent) and shift_factor (0 when absent)."""
    module, params, config = diffusers_weights.read_folder(folder, compute_dtype(dtype))
    default_scale, default_shift = diffusers_weights.latent_space(config)
    return VAE(module, params, scale=default_scale if scale is None else scale,
               shift=default_shift if shift is None else shift, mesh=mesh, rules=rules,
               batch_size=batch_size, name=str(folder), fingerprint=params_fingerprint(params))
