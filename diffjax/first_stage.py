"""Latent diffusion as every mode sees it: where the first stage and the latents live.

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

from diffjax import filesystem as fs

from diffjax.latents.first_stage import LATENT_SPACE_FILE, is_diffjax_run

AUTOENCODER_SUBDIR = "autoencoder"


def is_latent(config) -> bool:
    return bool(config.data.get("latent_dir", ""))


def _inside(workdir: str, path: str) -> str:
    if not path or not fs.is_local(path) or path.startswith(("/", "~")):
        return fs.absolute(path) if path else path
    return fs.join(fs.absolute(workdir), path)


def resolve_paths(config, workdir: str):
    """A copy of `config` whose latent paths are absolute (relative ones inside `workdir`); in
    latent mode an empty autoencoder.pretrained becomes WORKDIR/autoencoder."""
    if not is_latent(config) and not config.autoencoder.pretrained:
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


def load_first_stage(config, *, mesh=None):
    """The configured first stage as a `diffjax.latents.VAE` (config paths resolved)."""
    from diffjax import latents

    path = config.autoencoder.pretrained
    if not is_diffjax_run(path):
        if not path or not fs.exists(path):
            hint = (" (train it first: --mode=train_autoencoder with the same --workdir)"
                    if path.rstrip("/").endswith(AUTOENCODER_SUBDIR) else
                    " (a diffusers AutoencoderKL folder, e.g. huggingface-cli download "
                    "stabilityai/sd-vae-ft-ema --local-dir DIR on a machine with internet)")
            raise FileNotFoundError(f"No first stage at autoencoder.pretrained={path!r}{hint}.")
        return latents.vae_from_config(config, mesh=mesh)
    return _load_diffjax_run(config, path, mesh)


def _load_diffjax_run(config, run: str, mesh):
    from diffjax.checkpointing import Checkpointer
    from diffjax.experiment import build_experiment
    from diffjax.latents import VAE, latent_scale_shift

    ae_config = autoencoder_training_config(config)
    experiment = build_experiment(ae_config, task="autoencoder")
    checkpointer = Checkpointer(run, async_save=False, max_to_keep=None, create=False)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(f"The first-stage run {run} has no checkpoint; train it "
                                    f"with --mode=train_autoencoder.")
        state, _ = checkpointer.restore(experiment.spec, step)
    finally:
        checkpointer.close()
    scale, shift = latent_scale_shift(config)
    return VAE(experiment.model, jax.device_get(state.ema_params), scale=scale, shift=shift,
               mesh=mesh, batch_size=config.autoencoder.batch_size,
               name=f"diffjax first stage {run} (step {step})")


def model_input_shape(config) -> tuple[int, int, int]:
    """(h, w, c) of what the diffusion network sees: latents in latent mode, else images."""
    if is_latent(config):
        from diffjax.latents import latent_shape

        return tuple(latent_shape(config))
    d = config.data
    return (d.image_size, d.image_size, d.num_channels)
