"""`--mode=sample`: images of a checkpoint, as a grid, an .npz and optionally one PNG per image.

Settings (all under `config.sampling`):
    checkpoint_step  which checkpoint (-1 = the newest)
    labels           class-conditional models: "" random, "grid" (one row per class), or a
                     comma-separated list of class ids, repeated to num_samples
    write_pngs       also write every image as samples/<name>/000000.png ... (the folder layout
                     clean-fid and torch-fidelity read)
    inpaint          fill in a masked region of data.eval_split images instead (a mask name or
                     file, see `diffjax.diffusion.masks`); the grid shows masked input | result | original
    prompts          text models: a file of prompts (one per line) or "a|b|c", encoded by the
                     run's text encoder; num_samples / len(prompts) images per prompt, one grid
                     row each; the .npz holds the prompts ("prompts", and "prompt_index" per
                     image). Empty: the first caption of cached records spread over the data
plus the sampler settings. Output names carry the step, the main settings, and a hash of every
setting that changes the images (each sampler option such as DDIM's eta, guidance, labels, the
weights, the count, the batch the noise is drawn in, the seed), so a second run with other
settings never overwrites the first:
    samples/step6_euler_maruyama-100steps_cfg1_n64_seed0_3fa2c1.png / .npz / .json / (PNGs)

Noise for batch i is fold_in(key(seed, salt), i) (`diffjax.sampling.run.draw_samples`, shared
with `diffjax.load(workdir).sample`): a rerun with the same config writes the same images, and a
batch never depends on how many batches came before it. Nothing is created in the workdir until
the images exist: a failed run (a mistyped --workdir) leaves no empty samples/ folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any

import jax
import numpy as np

from diffjax import data as data_lib, sampling
from diffjax.diffusion.masks import load_mask
from diffjax.experiment import (build_experiment, checkpoint_step, is_guided, load_first_stage,
                                restore_params)
from diffjax.latents import text_cache
from diffjax.latents.latent_mode import is_latent, resolve_paths
from diffjax.latents.reader import check_first_stage
from diffjax.outputs import images
from diffjax.runtime.console import progress_bar
from diffjax.sampling.generate import (classifier_scale, make_generate_fn, make_inpaint_fn,
                                       requested_labels, uses_labels)
from diffjax.sampling.run import draw_samples
from diffjax.storage import filesystem as fs
from diffjax.storage.checkpoints import Checkpointer


def settings_signature(config, step: int) -> dict[str, Any]:
    """Everything that changes the images of --mode=sample (the data range included)."""
    s = config.sampling
    conditional = bool(config.model.conditional)
    # Classifier guidance enters only when on, so that other outputs keep their names.
    guided = {"classifier_scale": classifier_scale(config)} if classifier_scale(config) else {}
    return {**guided, "step": int(step), "sampler": s.method,
            "options": sampling.sampler_options(s),
            "guidance_scale": float(s.guidance_scale) if conditional else None,
            "guidance_channels": int(s.get("guidance_channels", 0) or 0) if conditional
            else None, "labels": str(s.labels).strip() if uses_labels(config) else None,
            "use_ema": bool(s.use_ema), "inpaint": s.inpaint or None,
            "num_samples": int(s.num_samples),
            "batch_size": min(int(s.batch_size), int(s.num_samples)), "seed": int(config.seed),
            "centered": bool(config.data.centered), "dequantize": bool(config.data.dequantize)}


def output_name(config, step: int) -> str:
    s = config.sampling
    options = sampling.sampler_options(s)
    parts = [f"step{step}", s.method + (f"-{options['num_steps']}steps"
                                        if "num_steps" in options else "")]
    if is_guided(config):
        parts.append(f"cfg{float(s.guidance_scale):g}")
        if text_cache.is_text(config):
            spec = str(s.get("prompts", "")).strip()
            parts.append("prompts-" + hashlib.sha256(spec.encode()).hexdigest()[:8]
                         if spec else "captions")
    if classifier_scale(config):
        parts.append(f"cg{classifier_scale(config):g}")
    if uses_labels(config) and str(s.labels).strip():
        parts.append("labels-" + str(s.labels).strip().replace(",", "-"))
    if not s.use_ema:
        parts.append("raw")
    if s.inpaint:
        parts.append("inpaint-" + fs.as_path(s.inpaint).stem)
    if config.model.controlnet:
        parts.append(f"controlnet-{config.model.controlnet}")
    parts += [f"n{int(s.num_samples)}", f"seed{int(config.seed)}"]
    digest = hashlib.blake2b(json.dumps(settings_signature(config, step), sort_keys=True,
                                        default=str).encode(), digest_size=3).hexdigest()
    return "_".join(parts + [digest])


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


def text_conditions(config, num_samples: int) -> tuple[dict, list[str], np.ndarray]:
    """(conditioning of each sample, the prompts, each sample's prompt index) of a text model:
    sampling.prompts encoded by the run's encoder, each repeated num_samples // len(prompts)
    times in a row; or, without prompts, cached captions of records spread over the data."""
    from diffjax.sampling.prompts import PromptEncoder, cached_conditions, read_prompts

    prompts = read_prompts(config.sampling.prompts, allow_empty=True)
    if not prompts:
        size = _cached_records(config)
        records = np.linspace(0, size - 1, num_samples).astype(np.int64)
        cond, prompts = cached_conditions(config.data.latent_dir, records)
        return cond, prompts, np.arange(num_samples)
    per_prompt = max(num_samples // len(prompts), 1)
    index = np.resize(np.repeat(np.arange(len(prompts)), per_prompt), num_samples)
    encoded = PromptEncoder(config)(prompts)
    return {k: v[index] for k, v in encoded.items()}, prompts, index


def _cached_records(config) -> int:
    from diffjax.latents import read_metadata

    return int(read_metadata(config.data.latent_dir)["num_records"])


def _write_outputs(config, out_dir: str, name: str, pixels: np.ndarray,
                   labels: np.ndarray | None, grid: np.ndarray, summary: dict,
                   prompts: tuple | None = None) -> dict:
    png = images.save_png(fs.join(out_dir, f"{name}.png"), grid)
    buffer = io.BytesIO()
    arrays = {"images": pixels} if labels is None else {"images": pixels, "labels": labels}
    if prompts is not None:
        arrays.update(prompts=np.asarray(prompts[0]), prompt_index=prompts[1])
    np.savez(buffer, **arrays)
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
    if not fs.is_dir(fs.join(workdir, "checkpoints")):  # a mistyped --workdir: nothing created
        raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints; train first "
                                f"(--mode=train --workdir={workdir}).")
    if is_chief:  # before sampling everything: a read-only workdir fails now
        from diffjax.storage.workdir import check_writable

        # The samples folder if it exists, else the workdir: nothing is created before the
        # images exist, so a failed run leaves no empty folder behind.
        existing = fs.is_dir(out_dir)
        check_writable(out_dir if existing else workdir,
                       "the samples folder" if existing else "--workdir")
    experiment = build_experiment(config)
    labels_wanted = requested_labels(config, num_samples)
    text = text_conditions(config, num_samples) if text_cache.is_text(config) else None
    mask = load_mask(s_cfg.inpaint, config.data.image_size) if s_cfg.inpaint else None
    known = _known_images(config, num_samples) if mask is not None else None
    # A ControlNet run draws one image per conditioning of a data.eval_split image.
    conditions = None
    if config.model.controlnet:
        from diffjax.sampling.controlnet import split_conditions

        conditions = split_conditions(config, num_samples)
    checkpointer = Checkpointer(workdir, async_save=False, max_to_keep=None, create=False)
    try:
        step = checkpoint_step(checkpointer, s_cfg.checkpoint_step, "sampling.checkpoint_step",
                               workdir)
        # Latent mode decodes to pixels inside the sampler's program. The first stage is loaded
        # before the diffusion model's mesh context: it builds an experiment of its own.
        decoder = load_first_stage(config, mesh=experiment.mesh) \
            if is_latent(config) and mask is None else None
        if decoder is not None:  # the first stage that encoded the training latents
            check_first_stage(config, decoder, required=False)
        with experiment.activate():
            params = restore_params(experiment, checkpointer, step, s_cfg.use_ema)
            if mask is not None:
                generate = make_inpaint_fn(config, experiment.model, experiment.sde,
                                           experiment.mesh, batch_size)
            elif conditions is not None:
                from diffjax.sampling.controlnet import make_controlnet_generate_fn

                generate = make_controlnet_generate_fn(config, experiment.model, experiment.sde,
                                                       experiment.mesh, batch_size)
            else:
                generate = make_generate_fn(config, experiment.model, experiment.sde,
                                            experiment.mesh, batch_size, decoder=decoder)

            def known_rows(rows: slice) -> tuple:
                chunk = known[rows]
                return np.resize(chunk, (batch_size, *chunk.shape[1:])), mask

            def condition_rows(rows: slice) -> tuple:
                chunk = conditions[0][rows]
                return (np.resize(chunk, (batch_size, *chunk.shape[1:])),)

            bar = progress_bar(num_samples, f"Sampling step {step}", enabled=is_chief)
            pixels, labels, nfe = draw_samples(
                config, generate, params, num_samples, batch_size, seed=int(config.seed),
                labels=text[0] if text is not None else labels_wanted,
                extra_inputs=known_rows if mask is not None else
                condition_rows if conditions is not None else None,
                progress=bar.update)
            bar.close()
    finally:
        checkpointer.close()

    name = output_name(config, step)
    summary = {"step": int(step), "num_samples": num_samples, "nfe": nfe,
               "sampler": s_cfg.method, "options": sampling.sampler_options(s_cfg),
               "use_ema": bool(s_cfg.use_ema), "seed": int(config.seed), "name": name,
               "guidance_scale": float(s_cfg.guidance_scale) if is_guided(config)
               else None, "inpaint": s_cfg.inpaint or None}
    if classifier_scale(config):
        summary["classifier_scale"] = classifier_scale(config)
    if conditions is not None:
        from diffjax.sampling.controlnet import condition_errors

        summary.update(controlnet=config.model.controlnet, condition_mse=float(np.mean(
            condition_errors(config, conditions[0], pixels))))
    if text is not None:
        summary["prompts"] = list(text[1])
    if not is_chief:
        return summary
    if conditions is not None:  # conditioning | sample | the image it came from
        shown = np.clip(np.round(conditions[0] * 255.0), 0, 255).astype(np.uint8)
        triples = np.stack([shown, pixels, conditions[1]], axis=1).reshape(-1, *pixels.shape[1:])
        grid = images.make_grid(triples, columns=3 * min(4, num_samples))
    elif mask is not None:
        original = data_lib.from_model_range(known, centered=config.data.centered,
                                             dequantize=config.data.dequantize)
        masked = (original * mask).astype(np.uint8)
        triples = np.stack([masked, pixels, original], axis=1).reshape(-1, *pixels.shape[1:])
        grid = images.make_grid(triples, columns=3 * min(4, num_samples))
    else:
        columns = None
        if labels is not None and str(s_cfg.labels).strip() == "grid":
            columns = max(num_samples // config.data.num_classes, 1)
        if text is not None and str(s_cfg.prompts).strip():
            columns = max(num_samples // len(text[1]), 1)
        grid = images.make_grid(pixels, columns=columns)
    paths = _write_outputs(config, out_dir, name, pixels, labels, grid, summary,
                           None if text is None else (text[1], text[2]))
    logging.info("Sampled %d images from checkpoint %d.", num_samples, step)
    lines = "\n".join(f"  {kind}: {path}" for kind, path in paths.items())
    print(f"Samples of step {step} ({num_samples} images, {s_cfg.method}, {nfe} NFE):\n"
          f"{lines}", flush=True)
    return {**summary, **paths}
