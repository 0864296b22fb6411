"""`--mode=export`: a trained Stable Diffusion U-Net run (model.name="sd_unet") as a diffusers folder.

The checkpoint's weights (`export.checkpoint_step`, newest by default; EMA unless
`export.use_ema=False`) are written as diffusers' `UNet2DConditionModel` (config.json +
diffusion_pytorch_model.safetensors, float32) into `export.folder` (default
WORKDIR/export/step_<N>). When the run started from a pipeline root (model.pretrained, or a
from-scratch run whose data.text_encoder_folder is one), the export is a whole pipeline: every
other component of that folder is copied (text encoder, tokenizer, VAE, model_index.json, ...),
unet/ holds the new weights and scheduler/scheduler_config.json says the run's process
(num_train_timesteps, beta schedule, prediction type), so that
`StableDiffusionPipeline.from_pretrained(folder)` and diffjax's `pipeline.folder` load it as they
load the original (tools/check_sd_export.py checks diffusers' U-Net output and images against
diffjax's on the exported tiny folder).

The folder appears complete or not at all: everything is written to a sibling `.partial` folder
that is renamed at the end; an existing export.folder is refused, never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax

from diffjax.diffusion.processes.ddpm import DEFAULT_BETA_RANGES, default_beta_range
from diffjax.experiment import build_experiment, checkpoint_step, open_checkpoints, restore_params
from diffjax.models import sd_unet_weights
from diffjax.models.sd_denoiser import diffusers_prediction_type
from diffjax.storage import filesystem as fs

MODEL_INDEX = "model_index.json"
SCHEDULER_CONFIG = ("scheduler", "scheduler_config.json")


def pipeline_root(config) -> str | None:
    """The pipeline folder the run's other components come from, or None (a U-Net alone)."""
    for path in (config.model.get("pretrained", ""), config.data.text_encoder_folder):
        if path and fs.is_file(fs.join(path, MODEL_INDEX)):
            return fs.absolute(path)
    return None


def _same_folder(a: str, b: str) -> bool:
    return os.path.normpath(fs.absolute(a)) == os.path.normpath(fs.absolute(b))


def check_components(config, root: str) -> None:
    """The text encoder and first stage the run trained with are the root's own: an exported
    pipeline would otherwise pair the U-Net with encoders it never saw."""
    for key, path in (("data.text_encoder_folder", config.data.text_encoder_folder),
                      ("autoencoder.pretrained", config.autoencoder.pretrained)):
        candidates = (path, fs.join(path, "..")) if path else ()
        if not any(_same_folder(root, c) for c in candidates):
            raise ValueError(f"{key}={path!r} is not the pipeline {root} the export copies its "
                             f"other components from; train with {key}={root} (configs/sd.py:"
                             f"finetune sets every folder from model.pretrained).")


def scheduler_config(config, base: dict[str, Any]) -> dict[str, Any]:
    """The base pipeline's scheduler config with the run's process and prediction type."""
    from diffjax.diffusion.processes import get_process

    process = get_process(config.sde)
    prediction = diffusers_prediction_type(config.model.parameterization)
    if config.sde.name != "ddpm" or prediction is None:
        raise ValueError(
            f"The run trains sde.name={config.sde.name!r} with model.parameterization="
            f"{config.model.parameterization!r}, which diffusers' DDPM-family schedulers do "
            f"not describe; export the U-Net alone with --config.export.folder=DIR and no "
            f"pipeline (set data.text_encoder_folder to a folder without {MODEL_INDEX}).")
    schedule = {"cosine": "squaredcos_cap_v2"}.get(process.beta_schedule,
                                                    process.beta_schedule)
    updated = dict(base, num_train_timesteps=int(process.num_timesteps), beta_schedule=schedule,
                   prediction_type=prediction)
    if process.beta_schedule in DEFAULT_BETA_RANGES:
        start, end = default_beta_range(process.beta_schedule, process.num_timesteps)
        updated.update(beta_start=start if process.beta_start is None else process.beta_start,
                       beta_end=end if process.beta_end is None else process.beta_end)
    return updated


def export(config, workdir: str) -> dict[str, Any]:
    if config.model.name != "sd_unet":
        raise ValueError(f"--mode=export writes a diffusers UNet2DConditionModel, and this run "
                         f"trains model.name={config.model.name!r}; export runs of "
                         f"model.name=sd_unet (configs/sd.py:finetune).")
    e = config.export
    experiment = build_experiment(config)
    checkpointer = open_checkpoints(workdir)
    try:
        step = checkpoint_step(checkpointer, e.checkpoint_step, "export.checkpoint_step",
                               workdir)
        target = fs.absolute(e.folder) if e.folder else \
            fs.join(fs.absolute(workdir), "export", f"step_{step}")
        if fs.exists(target):
            raise FileExistsError(f"export.folder {target} exists; remove it or pass another "
                                  f"--config.export.folder.")
        root = pipeline_root(config)
        if root is not None:
            check_components(config, root)
            base_scheduler = fs.join(root, *SCHEDULER_CONFIG)
            scheduler = scheduler_config(config, json.loads(fs.read_text(base_scheduler))) \
                if fs.is_file(base_scheduler) else None
        with experiment.activate():
            params = restore_params(experiment, checkpointer, step, bool(e.use_ema))
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params, tiled=True)
    finally:
        checkpointer.close()
    if jax.process_index() == 0:
        partial = target + ".partial"
        fs.remove(partial)  # a previous export that died half-way
        fs.makedirs(partial)
        if root is None:
            sd_unet_weights.save_diffusers_unet(partial, experiment.model, params)
        else:
            for name in fs.listdir(root):
                if name not in ("unet", "scheduler") and not name.startswith("."):
                    fs.copy_tree(fs.join(root, name), fs.join(partial, name))
            if fs.is_dir(fs.join(root, "scheduler")):
                fs.copy_tree(fs.join(root, "scheduler"), fs.join(partial, "scheduler"))
            if scheduler is not None:
                fs.write_atomic(fs.join(partial, *SCHEDULER_CONFIG),
                                json.dumps(scheduler, indent=2, sort_keys=True))
            sd_unet_weights.save_diffusers_unet(fs.join(partial, "unet"), experiment.model,
                                                params)
        fs.rename(partial, target)
        what = "a Stable Diffusion pipeline" if root is not None else "a U-Net folder"
        logging.info("Exported step %d (%s weights) as %s: %s", step,
                     "EMA" if e.use_ema else "raw", what, target)
        print(f"Exported step {step} as {what}: {target}")
    return {"step": step, "folder": target, "pipeline": root is not None}
