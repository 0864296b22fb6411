"""`--mode=train_autoencoder`: trains the first stage of latent diffusion into WORKDIR/autoencoder.

The configured `autoencoder` architecture is trained with LDM's objective (reconstruction + KL;
`diffjax.latents.objective`) by the same loop as the diffusion model: sharded, checkpointed,
resumable, with reconstruction grids in WORKDIR/autoencoder/samples and TensorBoard. The
autoencoder section's train_steps, train_batch_size and lr replace the training ones. When it
ends, the run publishes its latent scale (1 / std of posterior samples over training images,
LDM's rule) in latent_space.json, which `--mode=encode_latents` and training then use.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from diffjax import data as data_lib
from diffjax.experiment import load_first_stage
from diffjax.latents.latent_mode import (AUTOENCODER_SUBDIR, autoencoder_training_config,
                                         publish_latent_space, resolve_paths)
from diffjax.storage import filesystem as fs

SCALE_IMAGES = 1000  # images over which the latent std is measured


def train_autoencoder(config, workdir: str) -> dict[str, Any]:
    from diffjax.training.loop import train

    run = fs.join(fs.absolute(workdir), AUTOENCODER_SUBDIR)
    summary = train(autoencoder_training_config(config), run, task="autoencoder")
    if summary["preempted"] or jax.process_index() != 0:
        return summary
    resolved = resolve_paths(config, workdir)
    with resolved.unlocked():
        resolved.autoencoder.pretrained = run
        resolved.autoencoder.scale, resolved.autoencoder.shift = 1.0, 0.0  # measure raw z
    vae = load_first_stage(resolved)
    batch = next(data_lib.iterate_split(config.data, config.data.split, SCALE_IMAGES))
    images = batch["image"][:SCALE_IMAGES].astype(np.float32) / 127.5 - 1.0
    record = publish_latent_space(run, vae, images)
    print(f"First stage {run}: latent std {record['std']:.4g} over {record['num_images']} "
          f"training images, scale {record['scaling_factor']:.4g} (latent_space.json).",
          flush=True)
    return {**summary, "latent_space": record}
