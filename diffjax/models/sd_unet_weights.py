"""diffusers UNet2DConditionModel folders (config.json + safetensors) read and written with numpy.

A folder is what `UNet2DConditionModel.save_pretrained` writes, or a pipeline's root with the
U-Net in `unet/` (`huggingface-cli download runwayml/stable-diffusion-v1-5 --include "unet/*"`).
Weights: `diffusion_pytorch_model.safetensors`, else the half-precision variant
`diffusion_pytorch_model.fp16.safetensors`, else a sharded set named by
`diffusion_pytorch_model.safetensors.index.json` (or its fp16 variant). Tensors are read with
numpy (`diffjax.storage.safetensors_files`), renamed from diffusers' names
(`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight` ->
down_blocks_1/attentions_0/transformer_blocks_0/attn1/to_q/kernel) and transposed
(`diffjax.storage.torch_layout`: conv OIHW -> HWIO, linear (out, in) -> (in, out); proj_in/out
are 1x1 convs or linears as use_linear_projection says). A missing, extra or misshapen tensor is
one ValueError line naming it; a config key diffjax does not implement is one line naming the key.

`save_diffusers_unet` is the inverse: a diffusers folder that `UNet2DConditionModel.from_pretrained`
and `read_folder` load (float32 weights).
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import numpy as np

from diffjax.models.sd_unet import UNet2DConditionModel, abstract_params
from diffjax.models.sd_unet_config import UNetConfig
from diffjax.storage import filesystem, model_folders, safetensors_files, torch_layout

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
WEIGHTS_FALLBACKS = ("diffusion_pytorch_model.fp16.safetensors",)
INDEX_FILES = ("diffusion_pytorch_model.safetensors.index.json",
               "diffusion_pytorch_model.safetensors.index.fp16.json")
HOW_TO_GET = ('on a machine with internet run: huggingface-cli download '
              'runwayml/stable-diffusion-v1-5 --include "unet/*" --local-dir DIR (or another '
              'diffusers Stable Diffusion repository), then pass DIR')
# Flax list entries (`resnets_0`) that are diffusers ModuleList indices (`resnets.0`); other
# names ending in _N (`linear_1`, `conv_in`) are diffusers' own.
_LISTS = re.compile(r"^(down_blocks|up_blocks|resnets|attentions|transformer_blocks|"
                    r"downsamplers|upsamplers|to_out|net)_(\d+)$")


def torch_name(path: tuple[str, ...]) -> str:
    """Flax parameter path -> diffusers state-dict name."""
    modules = [_LISTS.sub(r"\1.\2", part) for part in path[:-1]]
    leaf = {"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1])
    return ".".join(modules + [leaf])


def resolve_folder(folder: str) -> str:
    """The folder holding the U-Net's config.json: `folder` itself or `folder/unet`."""
    return model_folders.resolve_folder(folder, "unet", CONFIG_FILE, "U-Net", HOW_TO_GET)


def read_config(folder: str) -> dict[str, Any]:
    return model_folders.read_json(filesystem.join(resolve_folder(folder), CONFIG_FILE),
                                   HOW_TO_GET)


def weight_files(folder: str) -> list[str]:
    """The safetensors file(s) holding the U-Net's weights."""
    folder = resolve_folder(folder)
    for name in (WEIGHTS_FILE, *WEIGHTS_FALLBACKS):
        if filesystem.is_file(filesystem.join(folder, name)):
            return [filesystem.join(folder, name)]
    for name in INDEX_FILES:
        index = filesystem.join(folder, name)
        if filesystem.is_file(index):
            try:
                shards = sorted(set(json.loads(filesystem.read_text(index))["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise ValueError(f"{index} is not a safetensors index ({e}); {HOW_TO_GET}.") \
                    from None
            return [filesystem.join(folder, shard) for shard in shards]
    hint = (" (only torch .bin weights are there; diffjax reads safetensors)"
            if any(n.endswith(".bin") for n in filesystem.listdir(folder)) else "")
    raise FileNotFoundError(f"{filesystem.join(folder, WEIGHTS_FILE)} is missing{hint}; "
                            f"{HOW_TO_GET}.")


def read_tensors(folder: str) -> tuple[dict[str, np.ndarray], str]:
    """(every tensor of the folder's weights by diffusers name, a description of the source)."""
    tensors: dict[str, np.ndarray] = {}
    paths = weight_files(folder)
    for path in paths:
        if not filesystem.is_file(path):
            raise FileNotFoundError(f"{path}, a shard its index names, is missing; {HOW_TO_GET}.")
        tensors.update(safetensors_files.read_safetensors(path, HOW_TO_GET))
    return tensors, paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} shards)"


def convert_state_dict(tensors: Mapping[str, np.ndarray], module: UNet2DConditionModel,
                       source: str) -> dict:
    """diffusers tensors -> the module's Flax params (numpy float32), checked name by name."""
    return torch_layout.params_from_state_dict(
        tensors, abstract_params(module), source,
        f"the weights do not match config.json ({HOW_TO_GET})", name_of=torch_name)


def read_folder(folder: str, dtype=None, **module_options
                ) -> tuple[UNet2DConditionModel, dict, dict[str, Any]]:
    """(module, numpy float32 params, config.json) of a diffusers UNet2DConditionModel folder.
    `module_options`: attention_implementation, remat."""
    import jax.numpy as jnp

    raw = read_config(folder)
    source = filesystem.join(resolve_folder(folder), CONFIG_FILE)
    module = UNet2DConditionModel(UNetConfig.from_diffusers(raw, source), dtype or jnp.float32,
                                  **module_options)
    tensors, where = read_tensors(folder)
    return module, convert_state_dict(tensors, module, where), raw


def state_dict(params: Any) -> dict[str, np.ndarray]:
    """Flax params -> diffusers' state dict (float32, PyTorch layouts)."""
    return torch_layout.state_dict_from_params(params, name_of=torch_name)


def save_diffusers_unet(folder: str, module: UNet2DConditionModel, params: Any) -> str:
    """Writes `module` with `params` as a diffusers UNet2DConditionModel folder."""
    config = module.config.to_diffusers()
    filesystem.makedirs(folder)
    safetensors_files.write_safetensors(filesystem.join(folder, WEIGHTS_FILE), state_dict(params))
    filesystem.write_atomic(filesystem.join(folder, CONFIG_FILE),
                            json.dumps(config, indent=2, sort_keys=True))
    return folder
