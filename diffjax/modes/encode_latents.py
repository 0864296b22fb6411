"""`--mode=encode_latents`: a TFDS image split encoded by the first stage into a latent dataset.

Every process encodes its own shards on its own devices (shard k belongs to process
k mod process_count), so the files are the same whatever the number of processes; a rerun skips
complete shards and redoes unfinished ones; process 0 writes metadata.json once every shard is
there, and training refuses a folder without it (see `diffjax.latents.writer`). Images are
center-cropped and resized to data.image_size as DiT prepares ImageNet (ADM's center crop), and
with data.latent_views=2 the horizontal flip is stored as a second view (as EDM2 and fast-DiT do).
With data.cache_pixels the images themselves are stored (pixel-space models; no first stage).
With data.text_encoder the captions (data.caption_key of the TFDS split, or data.image_folder)
are checked first (`diffjax.data.captions.select_examples`: a bad example stops the run in one
line, or is skipped and counted with data.skip_bad_examples), then encoded by the text encoder
into every record next to the latents (`diffjax.latents.text_cache`).
Output: data.latent_dir (relative paths are inside --workdir).
"""

from __future__ import annotations

import time
from typing import Any

import jax
from jax.experimental import multihost_utils

from diffjax import data as data_lib
from diffjax.data.captions import SelectedSource, captioned_source, select_examples
from diffjax.data.pipeline import DataError
from diffjax.experiment import load_first_stage
from diffjax.latents import finalize, make_plan, text_cache, write_shards
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
    text, encoder = None, None
    if text_cache.is_text(config):
        encoder = text_cache.encoder_from_config(config)
        captioned = captioned_source(config, split)
        selection = select_examples(captioned, skip=bool(config.data.skip_bad_examples),
                                    check_text=text_cache.length_checker(encoder))
        source = SelectedSource(captioned, selection.kept)
        text = text_cache.text_plan(config, encoder, skipped=len(selection.skipped),
                                    source=config.data.image_folder or
                                    f"{config.data.dataset}/{split} {config.data.caption_key}")
        per_image = int(config.data.captions_per_image)

        def text_fn(captions):
            return text_cache.encode_captions(encoder, captions, per_image)
    else:
        text_fn = None
        source = data_lib.data_source(config.data, split)
    # This process's devices: processes encode independently. Pixel caches need no first stage.
    vae = None if config.data.cache_pixels else load_first_stage(config)
    plan = make_plan(config, vae, split, len(source), text=text)
    chief = jax.process_index() == 0
    lock_for_job(directory, purpose="encoding")
    try:
        views = int(config.data.latent_views)
        bar = progress_bar(plan.num_examples // jax.process_count(),
                           f"Encoding {config.data.dataset}/{split}", enabled=chief)
        start = time.perf_counter()
        written = write_shards(directory, source, vae.encode if vae is not None else None, plan,
                               batch_size=int(config.autoencoder.batch_size),
                               process_index=jax.process_index(),
                               process_count=jax.process_count(),
                               progress=lambda count: bar.update(count), text_fn=text_fn)
        bar.close()
        seconds = time.perf_counter() - start
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("diffjax encode_latents")
        if chief and encoder is not None:
            text_cache.write_null(directory, encoder)  # before metadata.json: it is complete
        metadata = finalize(directory) if chief else {}
    finally:
        release_job_lock(directory)
    name = vae.name if vae is not None else "none (pixels)"
    summary = {"latent_dir": directory, "shards_written": len(written), "seconds": seconds,
               "vae": name}
    if chief:
        encoded = sum(plan.shards[k][1] - plan.shards[k][0] for k in written)
        rate = encoded / seconds if seconds > 0 and encoded else 0.0
        summary.update(latent_shape=metadata["latent_shape"], num_records=metadata["num_records"],
                       suggested_scale=metadata["suggested_scale"], images_per_sec=rate)
        source = config.data.image_folder or f"{config.data.dataset}/{split}"
        print(f"Latents of {source}: {metadata['num_records']} records "
              f"{tuple(metadata['latent_shape'])} in {directory} ({len(written)} shards written "
              f"now, {rate:.0f} images/s per process, {views} view(s) each; VAE {name}, "
              f"scale {plan.scale:g}{_text_note(text)}).",
              flush=True)
    return summary


def _text_note(text: dict | None) -> str:
    if not text:
        return ""
    skipped = f", {text['skipped']} examples skipped" if text["skipped"] else ""
    return (f"; text encoder {text['encoder']['name']} ({text['length']} tokens x "
            f"{text['width']}, up to {text['captions_per_image']} captions per image{skipped})")
