"""diffusers AutoencoderKL folders (config.json + diffusion_pytorch_model.safetensors), no torch.

A folder is what `AutoencoderKL.save_pretrained` writes or `huggingface-cli download
stabilityai/sd-vae-ft-ema` fetches; a full pipeline's root (with the VAE in `vae/`) works too.
Tensors are read with numpy (`diffjax.storage.safetensors_files`), renamed to Flax paths
(`encoder.down_blocks.0.resnets.1.conv2.weight` -> encoder/down_blocks_0/resnets_1/conv2/kernel)
and transposed (`diffjax.storage.torch_layout`). The attention names of older diffusers files
(query/key/value/proj_attn) are accepted, as diffusers' own loader does. Every file goes through
the path layer, so a folder may be on gs://.

The inverse, `save_diffusers_folder`, exports a diffjax-trained first stage for diffusers.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import jax
import numpy as np

from diffjax.latents.autoencoder import AutoencoderKL
from diffjax.storage import filesystem, model_folders, safetensors_files, torch_layout

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
# Repositories that publish only half-precision weights name them as a variant.
WEIGHTS_FALLBACKS = ("diffusion_pytorch_model.fp16.safetensors",)
HOW_TO_GET = ("on a machine with internet run: huggingface-cli download stabilityai/sd-vae-ft-ema "
              "--local-dir DIR (or another diffusers AutoencoderKL repository), copy DIR to this "
              "machine and pass --config.autoencoder.pretrained=DIR (a relative DIR is inside "
              "--workdir)")
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def resolve_folder(folder: str) -> str:
    """The folder holding the VAE's config.json: `folder` itself or `folder/vae`."""
    return model_folders.resolve_folder(folder, "vae", CONFIG_FILE, "VAE", HOW_TO_GET)


def read_config(folder: str) -> dict[str, Any]:
    """config.json of the VAE in `folder` (or `folder/vae`)."""
    return model_folders.read_json(filesystem.join(resolve_folder(folder), CONFIG_FILE),
                                   HOW_TO_GET)


def weights_path(folder: str) -> str:
    folder = resolve_folder(folder)
    for name in (WEIGHTS_FILE, *WEIGHTS_FALLBACKS):
        if filesystem.is_file(filesystem.join(folder, name)):
            return filesystem.join(folder, name)
    hint = (" (only torch .bin weights are there; diffjax reads safetensors)"
            if any(n.endswith(".bin") for n in filesystem.listdir(folder)) else "")
    raise FileNotFoundError(f"{filesystem.join(folder, WEIGHTS_FILE)} is missing{hint}; "
                            f"{HOW_TO_GET}.")


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file as numpy arrays, with attention names modernised."""
    tensors = safetensors_files.read_safetensors(path, HOW_TO_GET)
    return dict(_modernise(name, array) for name, array in tensors.items())


def _modernise(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """Older attention names (query/key/value/proj_attn) and 1x1-conv attention weights."""
    parts = name.split(".")
    if ".attentions." not in name or len(parts) < 2:
        return name, array
    parts[-2] = _DEPRECATED_ATTENTION.get(parts[-2], parts[-2])
    if array.ndim == 4 and array.shape[2:] == (1, 1):
        array = array[:, :, 0, 0]
    return ".".join(parts), array


def abstract_params(module: AutoencoderKL) -> Any:
    """Shapes of the module's (unboxed) parameters, without allocating them."""
    import flax.linen as nn
    import jax.numpy as jnp

    f = module.downsampling_factor
    x = jax.ShapeDtypeStruct((1, f, f, module.in_channels), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    return nn.unbox(variables["params"])


def convert_state_dict(tensors: Mapping[str, np.ndarray], module: AutoencoderKL,
                       source: str) -> dict:
    """diffusers tensors -> the module's Flax params (numpy float32), checked name by name."""
    return torch_layout.params_from_state_dict(
        tensors, abstract_params(module), source,
        f"the weights do not match config.json ({HOW_TO_GET})")


def latent_space(config: Mapping[str, Any]) -> tuple[float, float]:
    """(scale, shift) of a config.json: scaling_factor (diffusers default 0.18215), shift_factor
    (None = 0)."""
    scale = config.get("scaling_factor")
    shift = config.get("shift_factor")
    return (0.18215 if scale is None else float(scale)), (0.0 if shift is None else float(shift))


def read_folder(folder: str, dtype=None) -> tuple[AutoencoderKL, dict, dict[str, Any]]:
    """(module, numpy float32 params, config.json) of a diffusers AutoencoderKL folder."""
    import jax.numpy as jnp

    config = read_config(folder)
    source = filesystem.join(resolve_folder(folder), CONFIG_FILE)
    module = AutoencoderKL.from_diffusers_config(config, dtype or jnp.float32, source=source)
    path = weights_path(folder)
    return module, convert_state_dict(read_safetensors(path), module, path), config


def save_diffusers_folder(folder: str, module: AutoencoderKL, params: Any, *,
                          scale: float, shift: float = 0.0) -> str:
    """Writes `module` with `params` as a diffusers folder (loadable by AutoencoderKL
    .from_pretrained and by `load_vae`)."""
    tensors = torch_layout.state_dict_from_params(params)
    config = {**module.diffusers_config(), "scaling_factor": float(scale),
              "shift_factor": float(shift) if shift else None}
    filesystem.makedirs(folder)
    safetensors_files.write_safetensors(filesystem.join(folder, WEIGHTS_FILE), tensors)
    filesystem.write_atomic(filesystem.join(folder, CONFIG_FILE),
                            json.dumps(config, indent=2, sort_keys=True))
    return folder
