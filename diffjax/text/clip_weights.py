"""CLIP text encoder folders (config.json + model.safetensors) into `clip.CLIPTextModel`, no torch.

Accepted: a transformers folder, or a diffusers pipeline root with the encoder in
`text_encoder/` (pass subfolder="text_encoder_2" for SDXL's second one); `model.safetensors` or
the `model.fp16.safetensors` variant (or their sharded indexes). Both key layouts are read:

* unprefixed, as transformers 5 saves a CLIPTextModel: `embeddings.token_embedding.weight`,
  `encoder.layers.N.self_attn.q_proj.weight`, `final_layer_norm.weight`;
* `text_model.`-prefixed, as older transformers saved every CLIP text model and transformers 5
  still saves CLIPTextModelWithProjection (its `text_projection.weight` is never prefixed).

The projection is built when the file holds `text_projection.weight` or config.json's
`architectures` names CLIPTextModelWithProjection (then a file without it fails on that key).
A CLIPModel folder (config.json with `text_config`) loads its text half: `vision_model.*`,
`visual_projection.weight` and `logit_scale` are skipped.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from diffjax.storage import torch_layout
from diffjax.storage import model_folders as folders
from diffjax.text.clip import CLIPTextConfig, CLIPTextModel, abstract_params

HOW_TO_GET = ("on a machine with internet run: huggingface-cli download "
              "stable-diffusion-v1-5/stable-diffusion-v1-5 --include 'text_encoder/*' "
              "'tokenizer/*' --local-dir DIR (or another pipeline or transformers CLIP text "
              "model), then copy DIR here and pass it")
PREFIX = "text_model."
PROJECTION = "text_projection.weight"
_WITH_PROJECTION = ("CLIPTextModelWithProjection", "CLIPModel")
_VISION_HALF = ("vision_model.", "visual_projection.", "logit_scale")


def resolve_folder(folder: str, subfolder: str = "text_encoder") -> str:
    return folders.resolve_folder(folder, subfolder, folders.CONFIG_FILE, "CLIP text encoder",
                                  HOW_TO_GET)


def name_function(prefixed: bool):
    """Flax path -> the file's tensor name in the given key layout."""

    def name_of(path: tuple[str, ...]) -> str:
        name = torch_layout.torch_name(path)
        return PREFIX + name if prefixed and path[0] != "text_projection" else name

    return name_of


def read_folder(folder: str, subfolder: str = "text_encoder", dtype: Any = None
                ) -> tuple[CLIPTextModel, dict, dict[str, Any]]:
    """(module, numpy float32 params, config.json) of a CLIP text encoder folder."""
    folder = resolve_folder(folder, subfolder)
    config_path = folders.join_config(folder)
    config = folders.read_json(config_path, HOW_TO_GET)
    text_config = CLIPTextConfig.from_json(config, config_path)
    tensors, source = folders.read_weights(folder, HOW_TO_GET)
    if isinstance(config.get("text_config"), dict):
        tensors = {k: v for k, v in tensors.items() if not k.startswith(_VISION_HALF)}
    architectures = config.get("architectures") or []
    with_projection = PROJECTION in tensors or any(a in _WITH_PROJECTION for a in architectures)
    module = CLIPTextModel(text_config, with_projection, dtype or jnp.float32)
    prefixed = any(name.startswith(PREFIX) for name in tensors)
    params = folders.convert(tensors, abstract_params(module), source, HOW_TO_GET,
                             name_function(prefixed))
    return module, params, config
