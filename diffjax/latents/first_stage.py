"""The first stage a config describes: `config.autoencoder` (plus data.num_channels).

Either a pretrained diffusers AutoencoderKL (`autoencoder.pretrained` = its folder; the
architecture keys are then ignored, config.json rules) or the architecture in the config, trained
by diffjax (its parameters come from a checkpoint; `autoencoder.pretrained` may name that run's
workdir, whose latent_space.json then gives the default scale). Both end as a `VAE` with the configured scale
and shift, and both answer the question the rest of diffjax asks: what shape are the latents of
`data.image_size` images.
"""

from __future__ import annotations

import json
from typing import Any

from jax.sharding import Mesh

from diffjax.latents import diffusers_weights
from diffjax.latents.autoencoder import AutoencoderKL
from diffjax.latents.vae import VAE, compute_dtype, load_vae
from diffjax.parallel.sharding import DEFAULT_RULES
from diffjax.storage import filesystem

LATENT_SPACE_FILE = "latent_space.json"  # a diffjax first stage's scaling_factor/shift_factor


def is_diffjax_run(path: str) -> bool:
    """A diffjax workdir (checkpoints/ inside) rather than a diffusers folder."""
    return bool(path) and filesystem.is_dir(filesystem.join(path, "checkpoints"))


def published_latent_space(run: str) -> tuple[float, float] | None:
    """(scale, shift) that a diffjax first-stage run published in its latent_space.json."""
    path = filesystem.join(run, LATENT_SPACE_FILE)
    if not run or not filesystem.exists(path):
        return None
    record = json.loads(filesystem.read_text(path))
    return float(record["scaling_factor"]), float(record.get("shift_factor", 0.0))


def _diffusers_folder(config) -> str:
    """autoencoder.pretrained when it names a diffusers folder ("" for a diffjax run)."""
    path = config.autoencoder.pretrained
    return "" if is_diffjax_run(path) else path


def build_autoencoder(config) -> AutoencoderKL:
    """The network of `config.autoencoder`: config.json's for a pretrained folder, else the
    configured architecture with data.num_channels image channels."""
    a = config.autoencoder
    dtype = compute_dtype(a.dtype)
    if _diffusers_folder(config):
        source = f"{a.pretrained} config.json"
        return AutoencoderKL.from_diffusers_config(diffusers_weights.read_config(a.pretrained),
                                                   dtype, source=source)
    return AutoencoderKL(
        in_channels=config.data.num_channels, out_channels=config.data.num_channels,
        block_out_channels=tuple(a.block_out_channels), layers_per_block=a.layers_per_block,
        latent_channels=a.latent_channels, norm_num_groups=a.norm_num_groups,
        use_quant_conv=a.use_quant_conv, use_post_quant_conv=a.use_post_quant_conv,
        mid_block_add_attention=a.mid_block_attention, dtype=dtype)


def latent_scale_shift(config) -> tuple[float, float]:
    """(scale, shift): the config's, else config.json's (pretrained), else what a diffjax run
    published (its latent_space.json), else (1, 0)."""
    a = config.autoencoder
    if _diffusers_folder(config):
        default = diffusers_weights.latent_space(diffusers_weights.read_config(a.pretrained))
    else:
        default = published_latent_space(a.pretrained) or (1.0, 0.0)
    return (default[0] if a.scale is None else float(a.scale),
            default[1] if a.shift is None else float(a.shift))


def latent_shape(config) -> tuple[int, int, int]:
    """(h, w, c) of the latents of the configured images: the model's input in latent mode."""
    module = build_autoencoder(config)
    f, size = module.downsampling_factor, config.data.image_size
    if size % f:
        raise ValueError(f"data.image_size={size} is not divisible by the autoencoder's "
                         f"downsampling factor {f}; set --config.data.image_size to a multiple "
                         f"of {f}.")
    if _diffusers_folder(config) and module.in_channels != config.data.num_channels:
        raise ValueError(f"The VAE in {config.autoencoder.pretrained} takes {module.in_channels}"
                         f"-channel images; set --config.data.num_channels="
                         f"{module.in_channels}.")
    return (size // f, size // f, module.latent_channels)


def vae_from_config(config, *, params: Any = None, mesh: Mesh | None = None,
                    rules=DEFAULT_RULES) -> VAE:
    """The configured first stage as a `VAE`: loaded from `autoencoder.pretrained`, or the
    configured architecture with `params` (e.g. the EMA parameters of a first-stage run)."""
    a = config.autoencoder
    scale, shift = latent_scale_shift(config)
    if _diffusers_folder(config):
        return load_vae(a.pretrained, mesh, scale=scale, shift=shift, dtype=a.dtype, rules=rules,
                        batch_size=a.batch_size)
    if params is None:
        raise ValueError("autoencoder.pretrained is empty, so the first stage is trained by "
                         "diffjax: pass its parameters (from the first-stage checkpoint) or set "
                         "--config.autoencoder.pretrained to a diffusers AutoencoderKL folder.")
    return VAE(build_autoencoder(config), params, scale=scale, shift=shift, mesh=mesh,
               rules=rules, batch_size=a.batch_size, name="diffjax first stage")
