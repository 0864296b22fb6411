"""Latent diffusion's first stage: diffusers' AutoencoderKL in Flax, its objective, latent data.

    import diffjax.latents
    vae = diffjax.latents.load_vae("/data/sd-vae-ft-ema")   # diffusers folder, no torch
    mean, std = vae.encode(images)                          # NHWC in [-1, 1] -> VAE space
    images = vae.decode(vae.to_model_space(mean))           # model space -> pixels

Files: autoencoder.py (the network), posterior.py (diagonal Gaussian, latent scale/shift),
diffusers_weights.py (folders), vae.py (jitted, sharded encode/decode), first_stage.py (from a
config), objective.py (first-stage training loss), preprocessing.py (ADM center crop, flips),
records.py / writer.py / reader.py (latent datasets as ArrayRecord shards), text_cache.py (the
cached text encoder outputs of text-to-image datasets).

Imports: data, parallel, storage, text; never experiment or anything above it.
"""

from diffjax.latents import text_cache
from diffjax.latents.autoencoder import AutoencoderKL
from diffjax.latents.diffusers_weights import save_diffusers_folder
from diffjax.latents.first_stage import (build_autoencoder, latent_scale_shift, latent_shape,
                                         vae_from_config)
from diffjax.latents.objective import autoencoder_loss, reconstruct
from diffjax.latents.posterior import (kl_to_standard_normal, sample_model_latents,
                                       to_model_space)
from diffjax.latents.reader import (LatentSource, check_latent_metadata, read_latent_batch,
                                    read_metadata)
from diffjax.latents.vae import VAE, load_vae
from diffjax.latents.writer import LatentPlan, finalize, make_plan, write_shards

__all__ = [
    "AutoencoderKL", "LatentPlan", "LatentSource", "VAE", "autoencoder_loss",
    "build_autoencoder", "check_latent_metadata", "finalize", "kl_to_standard_normal",
    "latent_scale_shift", "latent_shape", "load_vae", "make_plan", "read_latent_batch",
    "read_metadata", "reconstruct", "sample_model_latents", "save_diffusers_folder",
    "text_cache", "to_model_space", "vae_from_config", "write_shards",
]
