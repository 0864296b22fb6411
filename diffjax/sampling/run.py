"""A trained run, loaded for sampling from Python: `diffjax.load(workdir)`.

    run = diffjax.load("workdirs/digits")            # its own config, EMA weights, first stage
    images = run.sample(16, seed=0)                  # uint8 [16, H, W, C] numpy
    images = run.sample(16, method="ddim", num_steps=10, eta=1.0)    # any sampling.* key

The run's config.json says what its weights mean (process, parameterisation, network, first
stage), so nothing has to be repeated; a config passed instead is checked against it. Latent runs
decode to pixels inside the sampler's compiled program, with the first stage whose fingerprint
matches the latents the model trained on.

`run.sample(n, seed=s)` draws the same images as `--mode=sample` with sampling.num_samples=n,
seed=s and the same batch size: both take batch i's noise from fold_in(key(seed, SAMPLE_SALT), i)
(`draw_samples`), so a batch never depends on how many came before it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np

from diffjax.config.loading import load_recorded, set_field
from diffjax.diffusion.guidance import grid_labels
from diffjax.experiment import (Experiment, build_experiment, is_guided, load_first_stage,
                                open_checkpoints, restore_params)
from diffjax.latents.latent_mode import is_latent, resolve_paths
from diffjax.latents.reader import check_first_stage
from diffjax.sampling.generate import draw_batch, make_generate_fn
from diffjax.storage import filesystem as fs, workdir as workdir_lib

# Noise of --mode=sample and Run.sample; distinct from training grids (0x5A3) and eval (0x5A5).
SAMPLE_SALT = 0x5A4


def refuse_unused_conditioning(config, *, labels: bool = True) -> None:
    """Labels and guidance mean nothing to an unconditional model: a ValueError, not silence.
    (`labels=False`: sampling.labels is not read, as in --mode=eval.)"""
    if config.model.conditional:
        return
    s = config.sampling
    if labels and str(s.labels).strip():
        raise ValueError(f"sampling.labels={s.labels!r} is set, but this model is unconditional "
                         f"(model.conditional=False); leave sampling.labels empty.")
    if float(s.guidance_scale) != 1.0 and not is_guided(config):  # text models are guided
        raise ValueError(f"sampling.guidance_scale={s.guidance_scale} is set, but this model is "
                         f"unconditional (model.conditional=False) and has no guidance; leave "
                         f"it at 1.")


def draw_samples(config, generate: Callable, params, num_samples: int, batch_size: int, *,
                 seed: int, labels: np.ndarray | None = None,
                 extra_inputs: Callable[[slice], tuple] | None = None,
                 progress: Callable[[int], Any] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(uint8 images [num_samples, H, W, C], labels or None, largest NFE) in batches of
    `batch_size`; batch i draws from fold_in(key(seed, SAMPLE_SALT), i).

    `labels` (conditional models): one per sample, or None for uniformly random ones; for text
    models the conditioning dict (states, mask, pooled), one row per sample.
    `extra_inputs(rows)`: more inputs of `generate` for those rows (inpainting).
    """
    base = jax.random.fold_in(jax.random.key(seed), SAMPLE_SALT)
    parts, label_parts, nfes = [], [], []
    for i in range(math.ceil(num_samples / batch_size)):
        rows = slice(i * batch_size, (i + 1) * batch_size)
        wanted = None if labels is None else jax.tree.map(
            lambda v: np.resize(v[rows], (batch_size, *v.shape[1:])), labels)
        extra = extra_inputs(rows) if extra_inputs is not None else ()
        pixels, drawn, nfe = draw_batch(config, generate, params, jax.random.fold_in(base, i),
                                        batch_size, labels=wanted, extra_inputs=extra)
        parts.append(pixels)
        label_parts.append(None if isinstance(drawn, dict) else drawn)
        nfes.append(nfe)
        if progress is not None:
            progress(min(batch_size, num_samples - i * batch_size))
    pixels = np.concatenate(parts)[:num_samples]
    drawn = None if label_parts[0] is None else np.concatenate(label_parts)[:num_samples]
    return pixels, drawn, max(nfes)


@dataclasses.dataclass
class Run:
    """A trained run's model, weights of one checkpoint and first stage, ready to sample."""

    workdir: str
    config: Any
    experiment: Experiment
    params: Any
    step: int
    decoder: Any = None
    last_nfe: int | None = None  # network evaluations per sample of the last `sample` call
    _generators: dict = dataclasses.field(default_factory=dict, repr=False)

    def sample(self, num_samples: int = 16, seed: int = 0,
               labels: str | Sequence[int] | np.ndarray | None = None, *,
               batch_size: int | None = None, **sampler_overrides) -> np.ndarray:
        """uint8 images [num_samples, H, W, C] (numpy), decoded to pixels in latent mode.

        labels (class-conditional runs): None = uniformly random, "grid" = one row per class,
        or class ids (repeated to num_samples). `sampler_overrides` are config.sampling keys
        (method, num_steps, eta, guidance_scale, ...); which weights (EMA or raw) is `load`'s.
        """
        num_samples = int(num_samples)
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples}; ask for at least one image.")
        config = self._sampling_config(sampler_overrides)
        wanted = self._labels(config, labels, num_samples)
        batch = int(batch_size or min(int(config.sampling.batch_size), num_samples))
        key = (json.dumps(workdir_lib.config_to_dict(config.sampling), sort_keys=True), batch)
        if key not in self._generators:
            self._generators[key] = make_generate_fn(
                config, self.experiment.model, self.experiment.sde, self.experiment.mesh, batch,
                decoder=self.decoder)
        with self.experiment.activate():
            pixels, _, nfe = draw_samples(config, self._generators[key], self.params,
                                          num_samples, batch, seed=int(seed), labels=wanted)
        self.last_nfe = nfe
        return pixels

    def _sampling_config(self, overrides: dict[str, Any]):
        if not overrides:
            return self.config
        if "use_ema" in overrides:
            raise ValueError("use_ema picks the weights that are loaded: pass it to "
                             "diffjax.load(workdir, use_ema=False).")
        if not is_guided(self.config) and "guidance_scale" in overrides and \
                float(overrides["guidance_scale"]) != 1.0:
            raise ValueError(f"guidance_scale={overrides['guidance_scale']}: this run is "
                             f"unconditional (model.conditional=False) and has no guidance.")
        config = self.config.copy_and_resolve_references()
        for key, value in overrides.items():
            set_field(config, f"sampling.{key}", value, source="Run.sample")
        config.lock()
        return config

    def _labels(self, config, labels, num_samples: int) -> np.ndarray | None:
        if labels is None:
            return None
        classes = int(config.data.num_classes)
        if not config.model.conditional:
            raise ValueError("labels are for class-conditional runs; this one is unconditional "
                             "(model.conditional=False): leave labels=None.")
        if isinstance(labels, str):
            if labels.strip() != "grid":
                raise ValueError(f"labels={labels!r}: use 'grid', class ids or None.")
            return np.resize(np.asarray(grid_labels(num_samples, classes), np.int32),
                             num_samples)
        ids = np.asarray(labels).reshape(-1)
        if ids.size == 0 or ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= classes:
            raise ValueError(f"labels must be class ids in [0, {classes}); got {labels!r}.")
        return np.resize(ids.astype(np.int32), num_samples)

    def __repr__(self) -> str:
        kind = "latent" if self.decoder is not None else "pixel"
        return (f"Run({self.workdir!r}, step {self.step}, {self.config.model.name} "
                f"{self.config.model.parameterization} on {self.config.sde.name}, {kind})")


def load(workdir: str, overrides=None, *, config=None, step: int | None = None,
         use_ema: bool = True) -> Run:
    """The run in `workdir`: its config (config.json, with `overrides` as in
    `diffjax.load_config`), the EMA (or raw) weights of checkpoint `step` (default: the newest)
    and, for latent runs, its first stage.

    `config` replaces config.json (runs converted or trained without one); it must describe the
    same model, or a RunMismatchError names the keys that differ.
    """
    workdir = fs.absolute(workdir)
    if config is None:
        config = load_recorded(workdir, overrides)
    elif overrides:
        raise ValueError("pass overrides with the config's own loader (diffjax.load_config), "
                         "not with config=.")
    else:
        workdir_lib.check_same_model(workdir, config)
    config = resolve_paths(config, workdir)
    experiment = build_experiment(config)
    checkpointer = open_checkpoints(workdir)
    try:
        available = checkpointer.all_steps()
        if not available:
            raise FileNotFoundError(f"No checkpoint in {checkpointer.directory}; train first.")
        chosen = available[-1] if step is None else int(step)
        if chosen not in available:
            raise ValueError(f"step={chosen} is not a checkpoint of {workdir} (it has "
                             f"{available}).")
        with experiment.activate():
            params = restore_params(experiment, checkpointer, chosen, use_ema)
    finally:
        checkpointer.close()
    decoder = None
    if is_latent(config):
        decoder = load_first_stage(config, mesh=experiment.mesh)
        check_first_stage(config, decoder, required=False)
    return Run(workdir, config, experiment, params, chosen, decoder)
