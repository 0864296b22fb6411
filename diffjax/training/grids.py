"""The images a training run shows while it trains (WORKDIR/samples and TensorBoard).

- `SampleGrid` (diffusion): `training.num_sample_images` samples of the EMA parameters with the
  configured sampler, always from the same noise (so grids of successive steps compare), one row
  per class for conditional models, for text models the first cached caption of records spread
  over the dataset (no text encoder runs in training); in latent mode decoded to pixels.
- `ReconstructionGrid` (first stage): the first images of `data.eval_split`, above their
  reconstructions through the posterior mean.
- `ControlNetGrid` (`model.controlnet`): the conditioning of the first `data.eval_split` images
  above the samples drawn for them, and the mean squared error between each conditioning and
  the same transform of its sample (`condition_mse`).
Both run on every process (the work is sharded); process 0 writes the files.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from diffjax import data as data_lib
from diffjax.diffusion.guidance import grid_labels
from diffjax.experiment import Experiment
from diffjax.latents import read_metadata, text_cache
from diffjax.outputs import images
from diffjax.parallel.mesh import batch_axis_size
from diffjax.parallel.sharding import batch_sharding
from diffjax.sampling.generate import make_generate_fn, pixel_range
from diffjax.storage import filesystem as fs

# Noise of training grids; distinct from --mode=sample (0x5A4) and evaluation (0x5A5).
GRID_SALT = 0x5A3


def _save(workdir: str, step: int, grid: np.ndarray, writer, scalars: dict) -> str:
    path = images.save_png(fs.join(workdir, "samples", f"step_{step:08d}.png"), grid)
    writer.write_images(step, {"samples": grid[None]})
    if scalars:
        writer.write_scalars(step, scalars)
    return path


class SampleGrid:
    def __init__(self, experiment: Experiment, workdir: str, writer, decoder=None):
        config = experiment.config
        self.config, self.workdir, self.writer = config, workdir, writer
        self.count = int(config.training.num_sample_images)
        self.generate = make_generate_fn(config, experiment.model, experiment.sde,
                                         experiment.mesh, self.count, decoder=decoder)
        self.labels = grid_labels(self.count, config.data.num_classes) \
            if config.model.conditional else None
        if text_cache.is_text(config):
            from diffjax.sampling.prompts import cached_conditions

            source_size = read_metadata(config.data.latent_dir)["num_records"]
            records = np.linspace(0, source_size - 1, self.count).astype(np.int64)
            self.labels, _ = cached_conditions(config.data.latent_dir, records)

    def __call__(self, params, step: int) -> str | None:
        config = self.config
        rng = jax.random.fold_in(jax.random.key(config.seed), GRID_SALT)
        samples, nfe = self.generate(params, rng, self.labels)
        centered, dequantize = pixel_range(config)
        pixels = data_lib.from_model_range(
            multihost_utils.process_allgather(samples, tiled=True), centered=centered,
            dequantize=dequantize)
        if jax.process_index() != 0:
            return None
        columns = self.count // config.data.num_classes if config.model.conditional else None
        grid = images.make_grid(pixels, columns=columns)
        return _save(self.workdir, step, grid, self.writer, {"sample_nfe": float(nfe)})


class ReconstructionGrid:
    def __init__(self, experiment: Experiment, workdir: str, writer):
        config = experiment.config
        self.workdir, self.writer, self.mesh = workdir, writer, experiment.mesh
        count = int(config.training.num_sample_images)
        batch = next(data_lib.iterate_split(config.data, config.data.eval_split, count))
        self.originals = batch["image"][:count]
        x = self.originals.astype(np.float32) / 127.5 - 1.0
        parallel = batch_axis_size(experiment.mesh)
        padded = -(-len(x) // parallel) * parallel
        self.inputs = np.pad(x, ((0, padded - len(x)),) + ((0, 0),) * 3)
        from diffjax.latents import reconstruct

        module = experiment.model
        self._reconstruct = jax.jit(lambda params, images: reconstruct(params, module, images),
                                    out_shardings=batch_sharding(self.mesh))

    def __call__(self, params, step: int) -> str | None:
        inputs = jax.device_put(self.inputs, batch_sharding(self.mesh))
        output = self._reconstruct(params, inputs)
        output = multihost_utils.process_allgather(output, tiled=True)[:len(self.originals)]
        pixels = data_lib.from_model_range(jnp.clip(output, -1.0, 1.0), centered=True,
                                           dequantize=False)
        if jax.process_index() != 0:
            return None
        # Originals in the top half of the grid, their reconstructions below.
        columns = max(1, int(np.ceil(np.sqrt(len(pixels)))))
        rows = -(-len(pixels) // columns)
        pad = rows * columns - len(pixels)
        blank = np.full((pad, *pixels.shape[1:]), 255, np.uint8)
        stacked = np.concatenate([self.originals, blank, pixels, blank])
        grid = images.make_grid(stacked, columns=columns)
        mse = float(np.mean((self.originals.astype(np.float32) / 127.5 - 1.0 -
                             np.asarray(output, np.float32)) ** 2))
        return _save(self.workdir, step, grid, self.writer, {"reconstruction_mse": mse})


class ControlNetGrid:
    """A ControlNet run's grid: the conditioning of the first data.eval_split images, each
    above the sample drawn for it; logs `condition_mse` (how well samples follow them)."""

    def __init__(self, experiment: Experiment, workdir: str, writer):
        from diffjax.sampling.controlnet import make_controlnet_generate_fn, split_conditions

        config = experiment.config
        self.config, self.workdir, self.writer = config, workdir, writer
        self.count = int(config.training.num_sample_images)
        self.generate = make_controlnet_generate_fn(config, experiment.model, experiment.sde,
                                                    experiment.mesh, self.count)
        self.cond, _, labels = split_conditions(config, self.count)
        self.labels = labels if config.model.conditional else None

    def __call__(self, params, step: int) -> str | None:
        from diffjax.sampling.controlnet import condition_errors

        config = self.config
        rng = jax.random.fold_in(jax.random.key(config.seed), GRID_SALT)
        samples, nfe = self.generate(params, rng, self.labels, self.cond)
        centered, dequantize = pixel_range(config)
        pixels = data_lib.from_model_range(
            multihost_utils.process_allgather(samples, tiled=True), centered=centered,
            dequantize=dequantize)
        if jax.process_index() != 0:
            return None
        error = float(np.mean(condition_errors(config, self.cond, pixels)))
        shown = np.clip(np.round(self.cond * 255.0), 0, 255).astype(np.uint8)
        columns = max(1, int(np.ceil(np.sqrt(len(pixels)))))
        rows = -(-len(pixels) // columns)
        blank = np.full((rows * columns - len(pixels), *pixels.shape[1:]), 255, np.uint8)
        grid = images.make_grid(np.concatenate([shown, blank, pixels, blank]), columns=columns)
        return _save(self.workdir, step, grid, self.writer,
                     {"sample_nfe": float(nfe), "condition_mse": error})


def grid_for(experiment: Experiment, workdir: str, writer, decoder=None):
    if experiment.task == "autoencoder":
        return ReconstructionGrid(experiment, workdir, writer)
    if experiment.frozen is not None and experiment.frozen.kind == "controlnet":
        return ControlNetGrid(experiment, workdir, writer)
    return SampleGrid(experiment, workdir, writer, decoder)
