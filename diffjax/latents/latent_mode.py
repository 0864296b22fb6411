"""Latent mode: where a config's first stage and latents live, and what shape the network sees.

A config is in latent mode when `data.latent_dir` is set: the diffusion model trains, samples
and is evaluated on latents of `data.image_size` images, and every image a person sees (sample
grids, PNGs, FID) is decoded to pixels by the first stage. The first stage is
`autoencoder.pretrained`:
  - a diffusers AutoencoderKL folder (the SD-VAE, or the 16-channel VAEs of SD3/Flux), or
  - a diffjax first-stage run: a workdir that `--mode=train_autoencoder` trained; empty means
    WORKDIR/autoencoder, the run's own.
Relative paths in `data.latent_dir` and `autoencoder.pretrained` are taken inside --workdir
(`resolve_paths`), so one workdir holds a whole latent experiment:
    WORKDIR/autoencoder/   the first stage (its own checkpoints, logs, reconstructions)
    WORKDIR/latents/       the encoded dataset (--mode=encode_latents)
    WORKDIR/checkpoints/   the diffusion model
A diffjax first stage publishes its latent scale like a diffusers config.json does:
WORKDIR/autoencoder/latent_space.json holds 1 / std(z) over training images (LDM's rule), written
when its training ends.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.latents.first_stage import LATENT_SPACE_FILE
from diffjax.storage import filesystem as fs

AUTOENCODER_SUBDIR = "autoencoder"


def uses_cache(config) -> bool:
    """Training reads a dataset written by --mode=encode_latents (latents, or cached pixels)."""
    return bool(config.data.get("latent_dir", ""))


def is_latent(config) -> bool:
    """The model lives in a first stage's latent space (not a pixel cache)."""
    return uses_cache(config) and not config.data.get("cache_pixels", False)


def _inside(workdir: str, path: str) -> str:
    if not path or not fs.is_local(path) or path.startswith(("/", "~")):
        return fs.absolute(path) if path else path
    return fs.join(fs.absolute(workdir), path)


def resolve_paths(config, workdir: str):
    """A copy of `config` whose latent paths are absolute (relative ones inside `workdir`); in
    latent mode an empty autoencoder.pretrained becomes WORKDIR/autoencoder."""
    if not uses_cache(config) and not config.autoencoder.pretrained:
        return config
    resolved = config.copy_and_resolve_references()
    with resolved.unlocked():
        resolved.data.latent_dir = _inside(workdir, config.data.latent_dir)
        pretrained = config.autoencoder.pretrained or (AUTOENCODER_SUBDIR if is_latent(config)
                                                       else "")
        resolved.autoencoder.pretrained = _inside(workdir, pretrained)
    resolved.lock()
    return resolved


def autoencoder_training_config(config):
    """The config that trains the first stage: training.num_train_steps, batch_size and optim.lr
    from the autoencoder section, pixels (not latents) as data, everything else shared."""
    a = config.autoencoder
    derived = config.copy_and_resolve_references()
    with derived.unlocked():
        derived.training.num_train_steps = int(a.train_steps)
        derived.training.batch_size = int(a.train_batch_size)
        derived.optim.lr = float(a.lr)
        derived.data.latent_dir = ""
        derived.autoencoder.pretrained = ""  # the architecture of this config is being trained
    derived.lock()
    return derived


def publish_latent_space(run: str, vae, images: np.ndarray) -> dict[str, Any]:
    """Measures std(z) of posterior samples of `images` and writes latent_space.json."""
    mean, std = vae.encode(images)
    z = mean + std * jax.random.normal(jax.random.key(0), mean.shape)
    spread = float(jnp.std(z))
    record = {"scaling_factor": 1.0 / spread if spread > 0 else 1.0, "shift_factor": 0.0,
              "std": spread, "num_images": int(len(images)),
              "rule": "1 / std(z) over training images (LDM)"}
    fs.write_atomic(fs.join(run, LATENT_SPACE_FILE), json.dumps(record, indent=2) + "\n")
    return record


def model_input_shape(config) -> tuple[int, int, int]:
    """(h, w, c) of what the diffusion network sees: latents in latent mode, else images."""
    if is_latent(config):
        from diffjax.latents import latent_shape

        return tuple(latent_shape(config))
    d = config.data
    return (d.image_size, d.image_size, d.num_channels)
