"""`--mode=sample`: images from the newest checkpoint, plus what evaluation shares with it.

Shared with `diffjax.evaluation.evaluate`: opening the checkpoints of a workdir with a clear error
when there are none, restoring the parameters a sampler uses (EMA or raw), the mesh context that
network tracing needs, and drawing one batch of samples as uint8 images on every process.

Noise for batch i is fold_in(key(seed, salt), i): a rerun with the same config writes the same
images, and a batch never depends on how many batches came before it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils

from diffjax import data as data_lib
from diffjax import images
from diffjax.generation import make_generate_fn, sample_labels
from diffjax.training.checkpointing import Checkpointer
from diffjax.training.loop import Experiment, build_experiment

# Distinct from the training grid's noise (0x5A3), so --mode=sample shows new images.
SAMPLE_SALT = 0x5A4


def open_checkpoints(workdir: str) -> Checkpointer:
    """The workdir's checkpoints, for reading; a clear error when training never ran there."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"No checkpoint in {directory}; train first (--mode=train --workdir={workdir}) or "
            f"pass the --workdir of a training run.")
    return Checkpointer(workdir, async_save=False)


def checkpoint_sampling_params(experiment: Experiment, checkpointer: Checkpointer, step: int,
                               use_ema: bool):
    """The EMA (or raw) parameters of checkpoint `step`, sharded as in training."""
    # The whole state is restored (optimizer moments too): it is what the spec describes, and
    # one restore per evaluated checkpoint is cheap next to sampling.
    state, _ = checkpointer.restore(experiment.spec, step)
    return state.ema_params if use_ema else state.params


@contextlib.contextmanager
def network_context(experiment: Experiment):
    """The mesh and logical-axis rules must be active whenever the network is traced."""
    with jax.set_mesh(experiment.mesh), nn.logical_axis_rules(experiment.rules):
        yield


def draw_batch(config, generate, params, rng: jax.Array, batch_size: int
               ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(uint8 images [B, H, W, C], int32 labels [B] or None, NFE), the same on every process."""
    sample_rng, label_rng = jax.random.split(rng)
    labels = sample_labels(config, label_rng, batch_size)
    samples, nfe = generate(params, sample_rng, labels)
    # Each process holds only its devices' rows; tiled gathering rebuilds the global batch.
    samples = multihost_utils.process_allgather(samples, tiled=True)
    pixels = data_lib.from_model_range(samples, centered=config.data.centered,
                                       dequantize=config.data.dequantize)
    labels = None if labels is None else np.asarray(labels, np.int32)
    return pixels, labels, int(jax.device_get(nfe))


def sample(config, workdir: str) -> dict[str, Any]:
    """Writes sampling.num_samples images of the newest checkpoint as a PNG grid and an .npz."""
    workdir = os.path.abspath(workdir)
    s_cfg = config.sampling
    num_samples, batch_size = int(s_cfg.num_samples), int(s_cfg.batch_size)
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"sampling.num_samples={num_samples} and sampling.batch_size="
                         f"{batch_size} must be >= 1; set --config.sampling.num_samples=64.")
    batch_size = min(batch_size, num_samples)
    experiment = build_experiment(config)
    checkpointer = open_checkpoints(workdir)
    try:
        step = checkpointer.latest_step()
        with network_context(experiment):
            params = checkpoint_sampling_params(experiment, checkpointer, step, s_cfg.use_ema)
            generate = make_generate_fn(config, experiment.model, experiment.sde,
                                        experiment.mesh, batch_size)
            base = jax.random.fold_in(jax.random.key(config.seed), SAMPLE_SALT)
            parts, label_parts, nfes = [], [], []
            for i in range(math.ceil(num_samples / batch_size)):
                pixels, labels, nfe = draw_batch(config, generate, params,
                                                 jax.random.fold_in(base, i), batch_size)
                parts.append(pixels)
                label_parts.append(labels)
                nfes.append(nfe)
    finally:
        checkpointer.close()

    pixels = np.concatenate(parts)[:num_samples]
    labels = None if label_parts[0] is None else np.concatenate(label_parts)[:num_samples]
    summary = {"step": int(step), "num_samples": num_samples, "nfe": max(nfes),
               "sampler": s_cfg.method, "use_ema": bool(s_cfg.use_ema)}
    if jax.process_index() != 0:
        return summary
    out_dir = os.path.join(workdir, "samples")
    png = images.save_png(os.path.join(out_dir, f"sample_{step}.png"), images.make_grid(pixels))
    npz = os.path.join(out_dir, f"sample_{step}.npz")
    arrays = {"images": pixels} if labels is None else {"images": pixels, "labels": labels}
    np.savez(npz, **arrays)
    logging.info("Sampled %d images from checkpoint %d.", num_samples, step)
    print(f"Samples of step {step} ({num_samples} images, {s_cfg.method}, {max(nfes)} NFE):\n"
          f"  grid: {png}\n  arrays: {npz}", flush=True)
    return {**summary, "png": png, "npz": npz}
