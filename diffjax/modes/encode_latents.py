"""`--mode=encode_latents`: a TFDS image split encoded by the first stage into a latent dataset.

Every process encodes its own shards on its own devices (shard k belongs to process
k mod process_count), so the files are the same whatever the number of processes; a rerun skips
complete shards and redoes unfinished ones; process 0 writes metadata.json once every shard is
there, and training refuses a folder without it (see `diffjax.latents.writer`). Images are
center-cropped and resized to data.image_size as DiT prepares ImageNet (ADM's center crop), and
with data.latent_views=2 the horizontal flip is stored as a second view (as EDM2 and fast-DiT do).
Output: data.latent_dir (relative paths are inside --workdir).
"""

from __future__ import annotations

import time
from typing import Any

import jax
from jax.experimental import multihost_utils

from diffjax import data as data_lib
from diffjax.data.pipeline import DataError
from diffjax.experiment import load_first_stage
from diffjax.latents import finalize, make_plan, write_shards
from diffjax.latents.latent_mode import resolve_paths
from diffjax.runtime.console import progress_bar
from diffjax.storage.workdir_lock import lock_for_job, release_job_lock


def encode_latents(config, workdir: str) -> dict[str, Any]:
    config = resolve_paths(config, workdir)
    directory = config.data.latent_dir
    if not directory:
        raise DataError("--mode=encode_latents needs --config.data.latent_dir (where to write "
                        "the latents; a relative path is inside --workdir).")
    split = config.data.split
    source = data_lib.data_source(config.data, split)
    vae = load_first_stage(config)  # this process's devices: processes encode independently
    plan = make_plan(config, vae, split, len(source))
    chief = jax.process_index() == 0
    lock_for_job(directory, purpose="encoding")
    try:
        views = int(config.data.latent_views)
        bar = progress_bar(plan.num_examples // jax.process_count(),
                           f"Encoding {config.data.dataset}/{split}", enabled=chief)
        start = time.perf_counter()
        written = write_shards(directory, source, vae.encode, plan,
                               batch_size=int(config.autoencoder.batch_size),
                               process_index=jax.process_index(),
                               process_count=jax.process_count(),
                               progress=lambda count: bar.update(count))
        bar.close()
        seconds = time.perf_counter() - start
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("diffjax encode_latents")
        metadata = finalize(directory) if chief else {}
    finally:
        release_job_lock(directory)
    summary = {"latent_dir": directory, "shards_written": len(written), "seconds": seconds,
               "vae": vae.name}
    if chief:
        encoded = sum(plan.shards[k][1] - plan.shards[k][0] for k in written)
        rate = encoded / seconds if seconds > 0 and encoded else 0.0
        summary.update(latent_shape=metadata["latent_shape"], num_records=metadata["num_records"],
                       suggested_scale=metadata["suggested_scale"], images_per_sec=rate)
        print(f"Latents of {config.data.dataset}/{split}: {metadata['num_records']} records "
              f"{tuple(metadata['latent_shape'])} in {directory} ({len(written)} shards written "
              f"now, {rate:.0f} images/s per process, {views} view(s) each; VAE {vae.name}, "
              f"scale {vae.scale:g}).",
              flush=True)
    return summary
