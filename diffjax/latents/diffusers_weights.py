"""diffusers AutoencoderKL folders (config.json + diffusion_pytorch_model.safetensors), no torch.

A folder is what `AutoencoderKL.save_pretrained` writes or `huggingface-cli download
stabilityai/sd-vae-ft-ema` fetches; a full pipeline's root (with the VAE in `vae/`) works too.
Tensors are read with `safetensors` into numpy (bfloat16 through ml_dtypes), renamed to Flax
paths (`encoder.down_blocks.0.resnets.1.conv2.weight` -> encoder/down_blocks_0/resnets_1/conv2/
kernel), and transposed: conv kernels OIHW -> HWIO, linear weights (out, in) -> (in, out). The
attention names of older diffusers files (query/key/value/proj_attn) are accepted, as diffusers'
own loader does. Every file goes through `diffjax/filesystem.py`, so a folder may be on gs://.

The inverse, `save_diffusers_folder`, exports a diffjax-trained first stage for diffusers.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import jax
import ml_dtypes
import numpy as np

from diffjax import filesystem
from diffjax.latents.autoencoder import AutoencoderKL

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
# Repositories that publish only half-precision weights name them as a variant.
WEIGHTS_FALLBACKS = ("diffusion_pytorch_model.fp16.safetensors",)
HOW_TO_GET = ("on a machine with internet run: huggingface-cli download stabilityai/sd-vae-ft-ema "
              "--local-dir DIR (or another diffusers AutoencoderKL repository), then copy DIR "
              "here and pass it")
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "BF16": ml_dtypes.bfloat16}


def resolve_folder(folder: str) -> str:
    """The folder holding the VAE's config.json: `folder` itself or `folder/vae`."""
    if not folder:
        raise FileNotFoundError(f"No VAE folder given; {HOW_TO_GET} as the folder.")
    for candidate in (folder, filesystem.join(folder, "vae")):
        if filesystem.is_file(filesystem.join(candidate, CONFIG_FILE)):
            return candidate
    what = "does not exist" if not filesystem.exists(folder) else (
        f"has no {CONFIG_FILE} (nor vae/{CONFIG_FILE})")
    raise FileNotFoundError(f"VAE folder {folder} {what}: it must be a diffusers AutoencoderKL "
                            f"folder; {HOW_TO_GET}.")


def read_config(folder: str) -> dict[str, Any]:
    """config.json of the VAE in `folder` (or `folder/vae`)."""
    path = filesystem.join(resolve_folder(folder), CONFIG_FILE)
    try:
        config = json.loads(filesystem.read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {HOW_TO_GET}.") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a JSON object; {HOW_TO_GET}.")
    return config


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
    from safetensors import deserialize

    try:
        entries = deserialize(filesystem.read_bytes(path))
        tensors = {}
        for name, entry in entries:
            if entry["dtype"] not in _SAFETENSORS_DTYPES:
                raise ValueError(f"tensor {name!r} has dtype {entry['dtype']}")
            dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
            tensors[name] = np.frombuffer(entry["data"], dtype).reshape(entry["shape"])
    except Exception as e:  # noqa: BLE001 - any decoding failure means a bad download
        raise ValueError(f"{path} is not a readable safetensors file of float tensors ({e}); "
                         f"{HOW_TO_GET}.") from None
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


def diffusers_name(path: tuple[str, ...]) -> str:
    """Flax parameter path -> diffusers state-dict name."""
    modules = [re.sub(r"_(\d+)$", r".\1", part) for part in path[:-1]]
    leaf = {"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1])
    return ".".join(modules + [leaf])


def torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(flax_shape) == 4:  # HWIO -> OIHW
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    if len(flax_shape) == 2:  # (in, out) -> (out, in)
        return (flax_shape[1], flax_shape[0])
    return tuple(flax_shape)


def to_flax(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        array = array.transpose(2, 3, 1, 0)
    elif array.ndim == 2:
        array = array.T
    return np.ascontiguousarray(array, dtype=np.float32)


def to_torch(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, np.float32)
    if array.ndim == 4:
        array = array.transpose(3, 2, 0, 1)
    elif array.ndim == 2:
        array = array.T
    return np.ascontiguousarray(array)


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
    expected = {diffusers_name(tuple(k.key for k in path)): (path, leaf.shape)
                for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params(module))[0]}
    for name, (_, shape) in expected.items():
        if name not in tensors:
            extra = sorted(set(tensors) - set(expected))
            also = (f"; the file has {extra[0]!r} {tuple(tensors[extra[0]].shape)} instead"
                    if extra else "")
            raise ValueError(f"{source}: tensor {name!r} {torch_shape(shape)} is missing{also}; "
                             f"the weights do not match config.json ({HOW_TO_GET}).")
        got = tuple(tensors[name].shape)
        if got != torch_shape(shape):
            raise ValueError(f"{source}: tensor {name!r} has shape {got} but config.json implies "
                             f"{torch_shape(shape)}; the weights do not match config.json "
                             f"({HOW_TO_GET}).")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ValueError(f"{source}: tensor {extra[0]!r} {tuple(tensors[extra[0]].shape)} has "
                         f"no place in the AutoencoderKL config.json describes ({len(extra)} "
                         f"unexpected tensors); {HOW_TO_GET}.")
    params: dict = {}
    for name, (path, shape) in expected.items():
        array = tensors[name].reshape(torch_shape(shape))
        node = params
        for key in path[:-1]:
            node = node.setdefault(key.key, {})
        node[path[-1].key] = to_flax(array)
    return params


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
    from safetensors.numpy import save

    params = jax.device_get(params)
    tensors = {diffusers_name(tuple(k.key for k in path)): to_torch(leaf)
               for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    config = {**module.diffusers_config(), "scaling_factor": float(scale),
              "shift_factor": float(shift) if shift else None}
    filesystem.makedirs(folder)
    filesystem.write_atomic(filesystem.join(folder, WEIGHTS_FILE),
                            save(tensors, metadata={"format": "pt"}))
    filesystem.write_atomic(filesystem.join(folder, CONFIG_FILE),
                            json.dumps(config, indent=2, sort_keys=True))
    return folder
