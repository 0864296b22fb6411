"""Published model folders (transformers' and diffusers' `save_pretrained` layouts) read with
numpy, no torch: finding the folder, its JSON files and its safetensors weights.

A text encoder is published as what transformers' `save_pretrained` writes: `config.json` and
`model.safetensors` (or the half-precision variant `model.fp16.safetensors`, or a sharded
`model.safetensors.index.json`); a diffusers pipeline keeps it in a subfolder (`text_encoder/`,
`text_encoder_2/`, `tokenizer/`). Every function takes either the model's own folder or the
pipeline root plus the subfolder's name, and every file goes through the path layer
(`diffjax.storage.filesystem`), so a folder may be on gs://.

`convert` renames the file's tensors to the module's Flax paths and transposes them with
`diffjax.storage.torch_layout.params_from_state_dict`, the strict checker: one missing, extra or
misshapen tensor is one `ValueError` naming the tensor and the file. Non-persistent buffers that
older transformers versions saved (`position_ids`, BERT's `token_type_ids`) are dropped first.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

import numpy as np

from diffjax.storage import filesystem, safetensors_files, torch_layout

CONFIG_FILE = "config.json"
# Preference order: full precision, then the half-precision variant, each whole or sharded.
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "model.fp16.safetensors",
                 "model.fp16.safetensors.index.json")
# Buffers, not parameters: transformers recomputes them and ignores them in a file.
_BUFFER_SUFFIXES = (".position_ids", "embeddings.token_type_ids")


def resolve_folder(folder: str, subfolder: str, marker: str, what: str, how_to_get: str) -> str:
    """`folder` itself when it holds `marker`, else `folder/subfolder` when that does."""
    if not folder:
        raise FileNotFoundError(f"No {what} folder given; {how_to_get}.")
    for candidate in (folder, filesystem.join(folder, subfolder)):
        if filesystem.is_file(filesystem.join(candidate, marker)):
            return candidate
    state = ("does not exist" if not filesystem.exists(folder)
             else f"has no {marker} (nor {subfolder}/{marker})")
    raise FileNotFoundError(f"{what} folder {folder} {state}; {how_to_get}.")


def join_config(folder: str) -> str:
    return filesystem.join(folder, CONFIG_FILE)


def _load_json(path: str, how_to_get: str, kind: type, what: str) -> Any:
    try:
        value = json.loads(filesystem.read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {how_to_get}.") from None
    if not isinstance(value, kind):
        raise ValueError(f"{path} does not hold a JSON {what}; {how_to_get}.")
    return value


def read_json(path: str, how_to_get: str) -> dict[str, Any]:
    """A JSON object from `path`; a bad file is one ValueError naming it."""
    return _load_json(path, how_to_get, dict, "object")


def read_json_list(path: str, how_to_get: str) -> list[Any]:
    """A JSON array of objects from `path` (sentence-transformers' modules.json)."""
    return [m for m in _load_json(path, how_to_get, list, "array") if isinstance(m, dict)]


def weights_paths(folder: str, how_to_get: str) -> list[str]:
    """The safetensors file(s) of the model in `folder`, full precision first."""
    for name in WEIGHTS_FILES:
        path = filesystem.join(folder, name)
        if not filesystem.is_file(path):
            continue
        if not name.endswith(".index.json"):
            return [path]
        shards = read_json(path, how_to_get).get("weight_map", {})
        if not isinstance(shards, dict) or not shards:
            raise ValueError(f"{path} has no weight_map; {how_to_get}.")
        return [filesystem.join(folder, shard) for shard in sorted(set(shards.values()))]
    torch_only = any(n.endswith(".bin") for n in filesystem.listdir(folder))
    hint = " (only torch .bin weights are there; diffjax reads safetensors)" if torch_only else ""
    raise FileNotFoundError(f"{filesystem.join(folder, WEIGHTS_FILES[0])} is missing{hint}; "
                            f"{how_to_get}.")


def read_weights(folder: str, how_to_get: str) -> tuple[dict[str, np.ndarray], str]:
    """(tensors without buffers, the file name to report) of the model in `folder`."""
    paths = weights_paths(folder, how_to_get)
    tensors: dict[str, np.ndarray] = {}
    for path in paths:
        if not filesystem.is_file(path):
            raise FileNotFoundError(f"{path} (a shard named by the index) is missing; "
                                    f"{how_to_get}.")
        tensors.update(safetensors_files.read_safetensors(path, how_to_get))
    tensors = {name: array for name, array in tensors.items()
               if not name.endswith(_BUFFER_SUFFIXES)}
    return tensors, paths[0] if len(paths) == 1 else f"{folder} ({len(paths)} shards)"


def convert(tensors: Mapping[str, np.ndarray], abstract_params: Any, source: str,
            how_to_get: str, name_of: Callable[[tuple[str, ...]], str]) -> dict:
    """The file's tensors as the module's Flax parameters (numpy float32), checked one by one."""
    return torch_layout.params_from_state_dict(
        tensors, abstract_params, source,
        f"the weights do not match config.json ({how_to_get})", name_of=name_of)


def count_parameters(abstract_params: Any) -> int:
    import jax

    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(abstract_params)))


def token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None
