"""Stable Diffusion's U-Net as a trainable diffjax network: `net(x, noise_cond, text, *, train)`.

`SDDenoiser` is diffusers' `UNet2DConditionModel` (sd_unet.py) with diffjax's network call: the
latents NHWC, the noise conditioning (the DDPM process's step n, what SD's U-Net is conditioned
on) and the text conditioning dict of diffjax's text cache, {"states": [B, L, D], "mask",
"pooled"}, whose token states are the cross-attention context. The parameters are the U-Net's,
name for name, so a diffusers folder loads into a training state and a trained state saves back
as a diffusers folder (`sd_unet_weights.save_diffusers_unet`) with no renaming.

Where the architecture comes from (`architecture`): `model.pretrained`, a diffusers folder (a
pipeline root with unet/ or the U-Net's own folder), whose weights also start the training
(`pretrained_params`, checked tensor by tensor); or `model.sd_unet_config`, a U-Net config.json
(or the folder holding it) for a network trained from random weights. The attention mask is not
passed to the U-Net, as Stable Diffusion's pipelines do not pass it (SD 1.x/2.x attend to the
padding tokens of the 77-token context); the cache's "pooled" output is unused.

Not supported, each refused in one line: SDXL's U-Net (its text_time embedding needs the pooled
output of the second text encoder and the size/crop ids, and data.text_encoder has one encoder),
class embeddings and other config keys `UNetConfig` refuses.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from diffjax.models import sd_unet_weights
from diffjax.models.sd_unet import UNet2DConditionModel
from diffjax.models.sd_unet_config import UNetConfig
from diffjax.storage import filesystem as fs, model_folders

PRETRAINED_KEY = "model.pretrained"
CONFIG_KEY = "model.sd_unet_config"


class SDDenoiser(UNet2DConditionModel):
    """A UNet2DConditionModel called as every diffjax network: (x, noise_cond, text) -> output
    like x (eps, v, ... as model.parameterization says)."""

    def __call__(self, x, noise_cond, labels=None, *, train: bool = False):
        if not isinstance(labels, dict) or "states" not in labels:
            raise ValueError("model.name='sd_unet' is conditioned on text: it takes the text "
                             "cache's {'states', 'mask', 'pooled'}; set data.text_encoder.")
        return super().__call__(x, noise_cond, labels["states"], train=train)


def source_of(model_config) -> tuple[str, str]:
    """(config key, path) the architecture is read from; one of the two must be set."""
    pretrained = str(model_config.get("pretrained", "") or "")
    scratch = str(model_config.get("sd_unet_config", "") or "")
    if bool(pretrained) == bool(scratch):
        raise ValueError(
            "model.name='sd_unet' needs exactly one of model.pretrained (a diffusers folder: "
            "fine-tune its U-Net) and model.sd_unet_config (a U-Net config.json: train from "
            f"scratch); got pretrained={pretrained!r}, sd_unet_config={scratch!r}.")
    return (PRETRAINED_KEY, pretrained) if pretrained else (CONFIG_KEY, scratch)


def read_architecture(model_config) -> tuple[dict[str, Any], str]:
    """(diffusers config.json dict, the file it came from) of the configured U-Net."""
    key, path = source_of(model_config)
    if key == CONFIG_KEY and fs.is_file(path):
        config_path = path
    else:
        config_path = fs.join(sd_unet_weights.resolve_folder(path), sd_unet_weights.CONFIG_FILE)
    return model_folders.read_json(config_path, sd_unet_weights.HOW_TO_GET), config_path


def architecture(model_config) -> UNetConfig:
    """The U-Net's architecture, checked: what `build_model` builds for model.name='sd_unet'."""
    raw, source = read_architecture(model_config)
    config = UNetConfig.from_diffusers(raw, source)
    if config.addition_embed_type is not None:
        raise ValueError(
            f"{source} is an SDXL-style U-Net (addition_embed_type="
            f"{config.addition_embed_type!r}): its pooled-text and size/crop conditioning needs "
            f"both SDXL text encoders, and diffjax trains on one (data.text_encoder); fine-tune a "
            f"Stable Diffusion 1.x / 2.x folder.")
    if config.in_channels != config.out_channels:
        raise ValueError(f"{source}: in_channels={config.in_channels} differs from out_channels="
                         f"{config.out_channels}; a diffjax network predicts a tensor like its "
                         f"input (inpainting U-Nets are not supported).")
    return config


def pretrained_params(module: SDDenoiser, folder: str) -> tuple[dict, str]:
    """(numpy float32 parameters of the folder's U-Net, where they were read), every tensor
    checked against `module` by name and shape."""
    tensors, where = sd_unet_weights.read_tensors(folder)
    params = sd_unet_weights.convert_state_dict(tensors, module, where)
    return jax.tree.map(lambda a: np.asarray(a, np.float32), params), where


def diffusers_prediction_type(parameterization: str) -> str | None:
    """diffusers' scheduler `prediction_type` of a diffjax parameterisation (None: none)."""
    return {"eps": "epsilon", "noise": "epsilon", "v": "v_prediction",
            "x0": "sample"}.get(parameterization)
