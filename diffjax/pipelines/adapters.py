"""What LoRA files and a ControlNet add to a Stable Diffusion pipeline (stable_diffusion.py).

    pipe = load_pipeline(sd_folder, controlnet=cn_folder)        # diffusers' ControlNet pipeline
    pipe.load_lora("style.safetensors", scale=0.8)               # diffusers/PEFT or kohya-ss
    images = pipe(prompts, image=edges_nhwc, controlnet_conditioning_scale=1.0)

LoRA: every loaded file is a `diffjax.lora.Adapter` for the components it names (unet,
text_encoder, text_encoder_2), held unmerged next to the parameters (replicated on the mesh);
the jitted program adds each adapter's scale * (alpha / r) * up @ down to the weights once per
call (`adapted`), so adapters and their scales change without touching the stored weights and
without recompiling (a new set of adapters retraces once). `fuse_lora` writes the same sums into
the parameters, `unfuse_lora` takes them out again (float32 rounding), as diffusers' do.

ControlNet: `load_controlnet` reads a diffusers ControlNetModel folder and checks, in one line
each, that it can steer this U-Net (cross_attention_dim, blocks, SD vs SDXL, SDXL's pooled
width) and that its conditioning embedding downsamples as much as the VAE. `control_image`
checks the conditioning image (NHWC in [0, 1], what diffusers' control image processor passes on
for numpy input: do_normalize=False) and repeats a single image over the prompts.

Differs from diffusers: the conditioning image is not resized (diffusers resizes it to height x
width; here a wrong size is an error naming the size needed); `control_guidance_start/end`
and MultiControlNet are not taken.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from diffjax import lora
from diffjax.models import controlnet as controlnet_lib
from diffjax.models import controlnet_weights
from diffjax.models.sd_unet_config import UNetConfig

TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")


# --- LoRA -------------------------------------------------------------------------------------

def lora_targets(params: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline's parameters as the components a LoRA file names."""
    targets = {"unet": params["unet"]}
    for name, text in zip(TEXT_COMPONENTS, params["text"]):
        targets[name] = text
    return targets


def adapted(params: Mapping[str, Any], adapters: Sequence[lora.Adapter]) -> dict[str, Any]:
    """`params` ({"text": [...], "unet": ..., ...}) with the adapters' deltas added (jittable)."""
    if not adapters:
        return dict(params)
    out = dict(params)
    out["unet"] = lora.apply_lora(params["unet"], adapters, "unet")
    out["text"] = adapted_text(params["text"], adapters)
    return out


def adapted_text(text: Sequence[Any], adapters: Sequence[lora.Adapter]) -> list[Any]:
    """The text encoders' parameters (in pipeline order) with the adapters' deltas added."""
    return [lora.apply_lora(params, adapters, name) if adapters else params
            for name, params in zip(TEXT_COMPONENTS, text)]


def with_lora(params: Mapping[str, Any], adapters: Sequence[lora.Adapter], sign: float
              ) -> dict[str, Any]:
    """`params` with the adapters fused (sign +1) or unfused (-1), on device."""
    apply = lora.fuse_lora if sign > 0 else lora.unfuse_lora
    out = dict(params)
    out["unet"] = apply(params["unet"], adapters, "unet")
    out["text"] = [apply(text, adapters, name)
                   for name, text in zip(TEXT_COMPONENTS, params["text"])]
    return out


def adapter_name(path: str, taken: Sequence[str], name: str | None) -> str:
    if name is None:
        stem = str(path).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        name = stem.rsplit(".", 1)[0] if "." in stem else stem
        base, i = name, 1
        while name in taken:
            i += 1
            name = f"{base}_{i}"
    elif name in taken:
        raise ValueError(f"An adapter named {name!r} is already loaded; pass another "
                         f"adapter_name or unload_lora({name!r}) first.")
    return name


# --- ControlNet -------------------------------------------------------------------------------

def load_controlnet(folder: str, unet: UNetConfig, vae_factor: int, dtype
                    ) -> tuple[controlnet_lib.ControlNetModel, dict]:
    """(module, numpy params) of the ControlNetModel folder, checked against the pipeline."""
    module, params, _ = controlnet_weights.read_folder(folder, dtype)
    config = module.controlnet_config
    where = f"The ControlNet in {folder}"
    controlnet_lib.check_fits(config, unet, where)
    if unet.addition_embed_type == "text_time":
        # Both embed the same pooled text embedding next to six time ids.
        pooled = unet.projection_class_embeddings_input_dim - 6 * unet.addition_time_embed_dim
        theirs = (config.unet.projection_class_embeddings_input_dim
                  - 6 * config.unet.addition_time_embed_dim)
        if pooled != theirs:
            raise ValueError(f"{where} takes a pooled text embedding of width {theirs} but this "
                             f"pipeline's is {pooled}; use a ControlNet made for this model.")
    if config.downscale != vae_factor:
        raise ValueError(f"{where} embeds a conditioning image {config.downscale}x the latents' "
                         f"size but the VAE downsamples by {vae_factor}; use a ControlNet made "
                         f"for this model.")
    return module, params


def control_size(image: Any) -> tuple[int, int]:
    shape = np.shape(image)
    if len(shape) not in (3, 4):
        raise ValueError(f"image has shape {tuple(shape)}; pass the conditioning image as NHWC "
                         f"(B, H, W, C) or (H, W, C) in [0, 1].")
    return int(shape[-3]), int(shape[-2])


def control_image(image: Any, batch: int, height: int, width: int, channels: int
                  ) -> np.ndarray:
    """The conditioning image as (batch, height, width, channels) float32, checked."""
    array = np.asarray(image, np.float32)
    control_size(array)
    if array.ndim == 3:
        array = array[None]
    want = f"(1 or {batch}, {height}, {width}, {channels})"
    if array.shape[-1] != channels:
        raise ValueError(f"image has {array.shape[-1]} channels but the ControlNet takes "
                         f"{channels}: pass NHWC images of shape {want} in [0, 1].")
    if array.shape[1:3] != (height, width):
        raise ValueError(f"image is {array.shape[1]}x{array.shape[2]} but the images are "
                         f"{height}x{width}: resize the conditioning image to {want}.")
    if array.shape[0] not in (1, batch):
        raise ValueError(f"image has {array.shape[0]} conditioning images for {batch} prompts: "
                         f"pass one, or one per prompt {want}.")
    return np.ascontiguousarray(np.broadcast_to(array, (batch, height, width, channels)))
