"""diffjax: diffusion models in JAX/Flax, from score_sde to Stable Diffusion.

From a notebook:

    import diffjax
    config = diffjax.load_config("configs/digits.py:test", {"training.num_train_steps": 20})
    diffjax.train(config, "workdirs/nb")                 # what --mode=train runs
    run = diffjax.load("workdirs/nb")                    # its own config, EMA weights
    images = run.sample(16, seed=0)                      # uint8 [16, H, W, C]
    diffjax.run_mode(None, "workdirs/nb", "eval")        # any --mode (None: the run's config)

The layout (`ls diffjax/`), each folder one concept, imports running one way (tests/test_layout.py):

    main.py        the command line                   modes/        each --mode, and pre-flight
    training/      the loop and the step              sampling/     samplers, generation
    evaluation/    FID, likelihoods                   convert/      published checkpoints
    experiment.py  what a config builds
    models/        networks                           latents/      the first stage, latent data
    diffusion/     processes, parameterisations, losses, guidance, masks
    data/          TFDS and Grain                     parallel/     meshes, sharding, hosts
    state/         training state, optimizer          storage/      paths, checkpoints, workdirs
    outputs/       grids, TensorBoard                 config/       schema, presets, loading
    runtime/       XLA flags, logs, preemption, CLI errors

Entry points are resolved on first use (`ENTRY_POINTS`), so `import diffjax` stays cheap and
importing a submodule never loads the rest.
"""

from __future__ import annotations

import importlib

# name -> "module:attribute"
ENTRY_POINTS = {
    "load_config": "diffjax.config.loading:load",
    "train": "diffjax.training.loop:train",
    "run_mode": "diffjax.modes:run",
    "build_experiment": "diffjax.experiment:build_experiment",
    "load": "diffjax.sampling.run:load",
}

__all__ = sorted(ENTRY_POINTS)


def __getattr__(name: str):
    if name not in ENTRY_POINTS:
        raise AttributeError(f"module 'diffjax' has no attribute {name!r}")
    module, attribute = ENTRY_POINTS[name].split(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(ENTRY_POINTS))
