"""diffusers ControlNetModel folders (config.json + safetensors) read and written with numpy.

A folder is what `ControlNetModel.save_pretrained` writes (`huggingface-cli download
lllyasviel/sd-controlnet-canny`, `diffusers/controlnet-canny-sdxl-1.0`), or a folder holding
one in `controlnet/`. Weights: `diffusion_pytorch_model.safetensors`, its fp16 variant or a
sharded index, as for the U-Net (`sd_unet_weights`). Names are diffusers' (`controlnet_cond_
embedding.blocks.3.weight`, `controlnet_down_blocks.7.bias`, `down_blocks.1.attentions.0...`);
a missing, extra or misshapen tensor is one ValueError line naming it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from diffjax.models import sd_unet_weights
from diffjax.models.controlnet import ControlNetConfig, ControlNetModel, abstract_params
from diffjax.storage import filesystem, safetensors_files, torch_layout

CONFIG_FILE = "config.json"
WEIGHTS_FILE = sd_unet_weights.WEIGHTS_FILE
HOW_TO_GET = ("on a machine with internet run: huggingface-cli download "
              "lllyasviel/sd-controlnet-canny --local-dir DIR (or another diffusers "
              "ControlNetModel repository), then pass DIR")
_LISTS = re.compile(r"^(controlnet_down_blocks|blocks)_(\d+)$")


def torch_name(path: tuple[str, ...]) -> str:
    """Flax parameter path -> diffusers state-dict name."""
    return sd_unet_weights.torch_name(tuple(_LISTS.sub(r"\1.\2", p) for p in path))


def resolve_folder(folder: str) -> str:
    if not folder:
        raise FileNotFoundError(f"No ControlNet folder given; {HOW_TO_GET}.")
    for candidate in (folder, filesystem.join(folder, "controlnet")):
        if filesystem.is_file(filesystem.join(candidate, CONFIG_FILE)):
            return candidate
    what = "does not exist" if not filesystem.exists(folder) else (
        f"has no {CONFIG_FILE} (nor controlnet/{CONFIG_FILE})")
    raise FileNotFoundError(f"ControlNet folder {folder} {what}; {HOW_TO_GET}.")


def read_config(folder: str) -> tuple[ControlNetConfig, dict[str, Any]]:
    path = filesystem.join(resolve_folder(folder), CONFIG_FILE)
    try:
        raw = json.loads(filesystem.read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {HOW_TO_GET}.") from None
    return ControlNetConfig.from_diffusers(raw, path), raw


def read_folder(folder: str, dtype=None, **module_options
                ) -> tuple[ControlNetModel, dict, dict[str, Any]]:
    """(module, numpy float32 params, config.json) of a diffusers ControlNetModel folder."""
    import jax.numpy as jnp

    config, raw = read_config(folder)
    module = ControlNetModel.from_config(config, dtype or jnp.float32, **module_options)
    resolved = resolve_folder(folder)
    try:
        tensors, where = sd_unet_weights.read_tensors(resolved)
    except FileNotFoundError as e:
        raise FileNotFoundError(str(e).split("; ")[0] + f"; {HOW_TO_GET}.") from None
    params = torch_layout.params_from_state_dict(
        tensors, abstract_params(module), where,
        f"the weights do not match config.json ({HOW_TO_GET})", name_of=torch_name)
    return module, params, raw


def state_dict(params: Any) -> dict[str, np.ndarray]:
    return torch_layout.state_dict_from_params(params, name_of=torch_name)


def save_controlnet(folder: str, module: ControlNetModel, params: Any) -> str:
    """Writes a diffusers ControlNetModel folder (`ControlNetModel.from_pretrained` loads it)."""
    filesystem.makedirs(folder)
    safetensors_files.write_safetensors(filesystem.join(folder, WEIGHTS_FILE), state_dict(params))
    filesystem.write_atomic(filesystem.join(folder, CONFIG_FILE),
                            json.dumps(module.controlnet_config.to_diffusers(), indent=2,
                                       sort_keys=True))
    return folder
