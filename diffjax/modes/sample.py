"""`--mode=sample`: images of a checkpoint, as a grid, an .npz and optionally one PNG per image.

Settings (all under `config.sampling`):
    checkpoint_step  which checkpoint (-1 = the newest)
    labels           class-conditional models: "" random, "grid" (one row per class), or a
                     comma-separated list of class ids, repeated to num_samples
    write_pngs       also write every image as samples/<name>/000000.png ... (the folder layout
                     clean-fid and torch-fidelity read)
    inpaint          fill in a masked region of data.eval_split images instead (a mask name or
                     file, see `diffjax.diffusion.masks`); the grid shows masked input | result | original
plus the sampler settings. Output names carry the step and every setting that changes the
images, so a second run with other settings never overwrites the first:
    samples/step6_euler_maruyama-100steps_cfg1_n64_seed0.png / .npz / (folder of PNGs)

Noise for batch i is fold_in(key(seed, salt), i): a rerun with the same config writes the same
images, and a batch never depends on how many batches came before it.
"""

from __future__ import annotations

import io
import json
import logging
import math
from typing import Any

import jax
import numpy as np

from diffjax import data as data_lib, sampling
from diffjax.diffusion.masks import load_mask
from diffjax.experiment import build_experiment, load_first_stage, restore_params
from diffjax.latents.latent_mode import is_latent, resolve_paths
from diffjax.outputs import images
from diffjax.runtime.console import progress_bar
from diffjax.sampling.generate import (draw_batch, make_generate_fn, make_inpaint_fn,
                                       requested_labels, uses_labels)
from diffjax.storage import filesystem as fs
from diffjax.storage.checkpoints import Checkpointer

# Distinct from the training grid's noise (0x5A3), so --mode=sample shows new images.
SAMPLE_SALT = 0x5A4


def output_name(config, step: int) -> str:
    s = config.sampling
    options = sampling.sampler_options(s)
    parts = [f"step{step}", s.method + (f"-{options['num_steps']}steps"
                                        if "num_steps" in options else "")]
    if config.model.conditional:
        parts.append(f"cfg{float(s.guidance_scale):g}")
    if float(s.get("classifier_scale", 0.0) or 0.0):
        parts.append(f"cg{float(s.classifier_scale):g}")
    if uses_labels(config) and str(s.labels).strip():
        parts.append("labels-" + str(s.labels).strip().replace(",", "-"))
    if not s.use_ema:
        parts.append("raw")
    if s.inpaint:
        parts.append("inpaint-" + fs.as_path(s.inpaint).stem)
    parts += [f"n{int(s.num_samples)}", f"seed{int(config.seed)}"]
    return "_".join(parts)


def _known_images(config, count: int) -> np.ndarray:
    """The first `count` images of data.eval_split in the model's range, no dequantisation."""
    batches, total = [], 0
    for batch in data_lib.iterate_split(config.data, config.data.eval_split, count):
        batches.append(batch["image"])
        total += len(batch["image"])
        if total >= count:
            break
    pixels = np.concatenate(batches)[:count]
    if len(pixels) < count:
        raise ValueError(f"sampling.num_samples={count} exceeds the {len(pixels)} images of "
                         f"data.eval_split={config.data.eval_split!r} to inpaint; lower it.")
    # The centre of each pixel's dequantisation cell, so that known pixels come back unchanged
    # through `from_model_range`.
    x = (pixels.astype(np.float32) + 0.5) / 256.0 if config.data.dequantize else \
        pixels.astype(np.float32) / 255.0
    return 2.0 * x - 1.0 if config.data.centered else x


def _write_outputs(config, out_dir: str, name: str, pixels: np.ndarray,
                   labels: np.ndarray | None, grid: np.ndarray, summary: dict) -> dict:
    png = images.save_png(fs.join(out_dir, f"{name}.png"), grid)
    buffer = io.BytesIO()
    np.savez(buffer, **({"images": pixels} if labels is None else
                        {"images": pixels, "labels": labels}))
    npz = fs.write_atomic(fs.join(out_dir, f"{name}.npz"), buffer.getvalue())
    fs.write_atomic(fs.join(out_dir, f"{name}.json"), json.dumps(summary, indent=2) + "\n")
    paths = {"png": png, "npz": npz}
    if config.sampling.write_pngs:
        folder = fs.join(out_dir, name)
        bar = progress_bar(len(pixels), "Writing PNGs")
        for index, image in enumerate(pixels):
            fs.write_atomic(fs.join(folder, f"{index:06d}.png"), images.png_bytes(image))
            bar.update(1)
        bar.close()
        paths["png_dir"] = folder
    return paths


def sample(config, workdir: str) -> dict[str, Any]:
    """Writes sampling.num_samples images of one checkpoint; returns a summary with the paths."""
    workdir = fs.absolute(workdir)
    config = resolve_paths(config, workdir)
    s_cfg = config.sampling
    num_samples = int(s_cfg.num_samples)
    batch_size = min(int(s_cfg.batch_size), num_samples)
    out_dir = fs.join(workdir, "samples")
    is_chief = jax.process_index() == 0
    if is_chief:  # before sampling everything: a read-only workdir fails now
        from diffjax.storage.workdir import check_writable

        check_writable(out_dir, "the samples folder")
    experiment = build_experiment(config)
    labels_wanted = requested_labels(config, num_samples)
    mask = load_mask(s_cfg.inpaint, config.data.image_size) if s_cfg.inpaint else None
    known = _known_images(config, num_samples) if mask is not None else None
    if not fs.is_dir(fs.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints; train first "
                                f"(--mode=train --workdir={workdir}).")
    checkpointer = Checkpointer(workdir, async_save=False, max_to_keep=None, create=False)
    try:
        available = checkpointer.all_steps()
        step = int(s_cfg.checkpoint_step)
        if step < 0:
            if not available:
                raise FileNotFoundError(f"No checkpoint in {checkpointer.directory}; train "
                                        f"first (--mode=train --workdir={workdir}).")
            step = available[-1]
        elif step not in available:
            raise ValueError(f"sampling.checkpoint_step={step} does not exist in "
                             f"{checkpointer.directory} (it has {available}); pick one of "
                             f"those or -1 for the newest.")
        # Latent mode decodes to pixels inside the sampler's program. The first stage is loaded
        # before the diffusion model's mesh context: it builds an experiment of its own.
        decoder = load_first_stage(config, mesh=experiment.mesh) \
            if is_latent(config) and mask is None else None
        with experiment.activate():
            params = restore_params(experiment, checkpointer, step, s_cfg.use_ema)
            if mask is not None:
                generate = make_inpaint_fn(config, experiment.model, experiment.sde,
                                           experiment.mesh, batch_size)
            else:
                generate = make_generate_fn(config, experiment.model, experiment.sde,
                                            experiment.mesh, batch_size, decoder=decoder)
            base = jax.random.fold_in(jax.random.key(config.seed), SAMPLE_SALT)
            parts, label_parts, nfes = [], [], []
            num_batches = math.ceil(num_samples / batch_size)
            bar = progress_bar(num_samples, f"Sampling step {step}", enabled=is_chief)
            for i in range(num_batches):
                rows = slice(i * batch_size, (i + 1) * batch_size)
                labels = None
                if labels_wanted is not None:
                    labels = np.resize(labels_wanted[rows], batch_size)
                extra = ()
                if mask is not None:
                    chunk = known[rows]
                    extra = (np.resize(chunk, (batch_size, *chunk.shape[1:])), mask)
                pixels, labels, nfe = draw_batch(config, generate, params,
                                                 jax.random.fold_in(base, i), batch_size,
                                                 labels=labels, extra_inputs=extra)
                parts.append(pixels)
                label_parts.append(labels)
                nfes.append(nfe)
                bar.update(min(batch_size, num_samples - i * batch_size))
            bar.close()
    finally:
        checkpointer.close()

    pixels = np.concatenate(parts)[:num_samples]
    labels = None if label_parts[0] is None else np.concatenate(label_parts)[:num_samples]
    name = output_name(config, step)
    summary = {"step": int(step), "num_samples": num_samples, "nfe": max(nfes),
               "sampler": s_cfg.method, "options": sampling.sampler_options(s_cfg),
               "use_ema": bool(s_cfg.use_ema), "seed": int(config.seed), "name": name,
               "guidance_scale": float(s_cfg.guidance_scale) if config.model.conditional
               else None, "inpaint": s_cfg.inpaint or None}
    if not is_chief:
        return summary
    if mask is not None:
        original = data_lib.from_model_range(known, centered=config.data.centered,
                                             dequantize=config.data.dequantize)
        masked = (original * mask).astype(np.uint8)
        triples = np.stack([masked, pixels, original], axis=1).reshape(-1, *pixels.shape[1:])
        grid = images.make_grid(triples, columns=3 * min(4, num_samples))
    else:
        columns = None
        if labels is not None and str(s_cfg.labels).strip() == "grid":
            columns = max(num_samples // config.data.num_classes, 1)
        grid = images.make_grid(pixels, columns=columns)
    paths = _write_outputs(config, out_dir, name, pixels, labels, grid, summary)
    logging.info("Sampled %d images from checkpoint %d.", num_samples, step)
    lines = "\n".join(f"  {kind}: {path}" for kind, path in paths.items())
    print(f"Samples of step {step} ({num_samples} images, {s_cfg.method}, {max(nfes)} NFE):\n"
          f"{lines}", flush=True)
    return {**summary, **paths}
