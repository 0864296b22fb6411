"""`--mode=sample`: images from the newest checkpoint.

Noise for batch i is fold_in(key(seed, salt), i): a rerun with the same config writes the same
images, and a batch never depends on how many batches came before it.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import jax
import numpy as np

from diffjax import images
from diffjax.experiment import build_experiment, open_checkpoints, restore_params
from diffjax.generation import draw_batch, make_generate_fn

# Distinct from the training grid's noise (0x5A3), so --mode=sample shows new images.
SAMPLE_SALT = 0x5A4


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
        with experiment.activate():
            params = restore_params(experiment, checkpointer, step, s_cfg.use_ema)
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
