"""The held-out loss: the training objective on data.eval_split, logged as `eval_loss`.

As score_sde logs its eval loss: every `training.eval_every_steps` steps, the EMA parameters are
scored by the run's own objective (`objectives.py`, the same `prepare` and `loss` as the step) on
a held-out batch. Here the batch is always the same (the first images of data.eval_split, one
per-pass batch: training.batch_size / microbatches) and so is the randomness (times, noise,
dequantisation, dropout from one fixed key), so successive values differ only by the parameters:
the curve shows over- or under-fitting without sampling noise.

Left out, with one log line saying why: latent runs (data.latent_dir holds the encoded training
split only; the held-out images are not encoded) and datasets without data.eval_split.
"""

from __future__ import annotations

import logging
from typing import Callable

import jax
import numpy as np

from diffjax import data as data_lib
from diffjax.experiment import Experiment
from diffjax.latents.latent_mode import is_latent
from diffjax.parallel.sharding import batch_sharding

# Noise of the held-out loss; distinct from the step's (fold_in(seed, step)) and the grids'.
HELD_OUT_SALT = 0xE7A1


def held_out_loss(experiment: Experiment, objective, start_step: int = 0
                  ) -> Callable[[object], float] | None:
    """`loss(params) -> float` on the fixed held-out batch, or None when it is off, when no
    step from `start_step` on is a multiple of training.eval_every_steps, or when the run has
    no held-out data (the log says why)."""
    config = experiment.config
    every = int(config.training.get("eval_every_steps", 0) or 0)
    if every <= 0 or config.training.num_train_steps // every <= start_step // every:
        return None
    split = config.data.eval_split
    if experiment.task == "diffusion" and is_latent(config):
        logging.info("No held-out loss: data.latent_dir holds latents of the training split "
                     "only (data.eval_split=%r is not encoded).", split)
        return None
    splits = sorted(data_lib.dataset_builder(config.data).info.splits)
    if split not in splits:
        logging.warning("No held-out loss: data.eval_split=%r is not a split of %r (it has "
                        "%s); set --config.data.eval_split or "
                        "--config.training.eval_every_steps=0.", split, config.data.dataset,
                        splits)
        return None
    rows = config.training.batch_size // config.training.microbatches
    local = rows // jax.process_count()
    batch = next(data_lib.iterate_split(config.data, split, local,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count()))
    if len(batch["label"]) < local:
        logging.warning("No held-out loss: data.eval_split=%r has fewer than %d images.", split,
                        rows)
        return None
    sharding = batch_sharding(experiment.mesh)
    batch = {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
             for k, v in batch.items()}
    data_rng, loss_rng = jax.random.split(
        jax.random.fold_in(jax.random.key(config.seed), HELD_OUT_SALT))

    @jax.jit
    def loss(params, batch):
        return objective.loss(params, objective.prepare(batch, data_rng), loss_rng)[0]

    def evaluate(params) -> float:
        with experiment.activate():
            return float(loss(params, batch))

    return evaluate
