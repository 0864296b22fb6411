"""Between PyTorch state dicts and Flax parameter trees: names, layouts and a strict check.

diffusers, transformers and PEFT name a tensor by its module path (`down_blocks.0.resnets.1.
conv2.weight`); a diffjax Flax port names its modules so that the path maps back one to one
(`down_blocks_0/resnets_1/conv2/kernel`). Layouts differ: conv kernels OIHW (torch) vs HWIO
(Flax), linear weights (out, in) vs (in, out). `params_from_state_dict` checks a whole state dict
against a module's abstract parameters and fails on the first missing, extra or misshapen
tensor in one line, so a folder that does not fit its config.json never loads half-way.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np


def torch_name(path: tuple[str, ...]) -> str:
    """Flax parameter path -> PyTorch state-dict name (`blocks_0` -> `blocks.0`,
    kernel/scale -> weight)."""
    modules = [re.sub(r"_(\d+)$", r".\1", part) for part in path[:-1]]
    leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(path[-1], path[-1])
    return ".".join(modules + [leaf])


def torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(flax_shape) == 4:  # HWIO -> OIHW
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    if len(flax_shape) == 2:  # (in, out) -> (out, in)
        return (flax_shape[1], flax_shape[0])
    return tuple(flax_shape)


def to_flax(array: np.ndarray, *, transpose: bool = True, dtype=np.float32) -> np.ndarray:
    """A PyTorch tensor in Flax's layout (`transpose=False` for embeddings, which both store as
    (num, features))."""
    if transpose and array.ndim == 4:
        array = array.transpose(2, 3, 1, 0)
    elif transpose and array.ndim == 2:
        array = array.T
    return np.ascontiguousarray(array, dtype=dtype)


def to_torch(array: np.ndarray, *, transpose: bool = True) -> np.ndarray:
    array = np.asarray(array, np.float32)
    if transpose and array.ndim == 4:
        array = array.transpose(3, 2, 0, 1)
    elif transpose and array.ndim == 2:
        array = array.T
    return np.ascontiguousarray(array)


def _paths(abstract_params: Any) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    leaves = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    return [(tuple(k.key for k in path), tuple(leaf.shape)) for path, leaf in leaves]


def _is_embedding(path: tuple[str, ...]) -> bool:
    return path[-1] == "embedding"


def params_from_state_dict(tensors: Mapping[str, np.ndarray], abstract_params: Any, source: str,
                           fix: str, *, name_of=torch_name, config_name: str = "config.json"
                           ) -> dict:
    """PyTorch `tensors` -> a Flax parameter tree shaped like `abstract_params` (numpy float32),
    checked name by name; `name_of(path)` gives the state-dict name of a Flax path."""
    expected = {name_of(path): (path, shape) for path, shape in _paths(abstract_params)}

    def want(path, shape):
        return tuple(shape) if _is_embedding(path) else torch_shape(shape)

    for name, (path, shape) in expected.items():
        if name not in tensors:
            extra = sorted(set(tensors) - set(expected))
            also = (f"; the file has {extra[0]!r} {tuple(tensors[extra[0]].shape)} instead"
                    if extra else "")
            raise ValueError(f"{source}: tensor {name!r} {want(path, shape)} is missing{also}; "
                             f"{fix}.")
        got = tuple(tensors[name].shape)
        if got != want(path, shape):
            raise ValueError(f"{source}: tensor {name!r} has shape {got} but {config_name} "
                             f"implies {want(path, shape)}; {fix}.")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ValueError(f"{source}: tensor {extra[0]!r} {tuple(tensors[extra[0]].shape)} has "
                         f"no place in the network {config_name} describes ({len(extra)} "
                         f"unexpected tensors); {fix}.")
    params: dict = {}
    for name, (path, shape) in expected.items():
        array = tensors[name]
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = to_flax(array, transpose=not _is_embedding(path))
    return params


def state_dict_from_params(params: Any, *, name_of=torch_name) -> dict[str, np.ndarray]:
    """A Flax parameter tree as PyTorch tensors (float32), named by `name_of`."""
    params = jax.device_get(params)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {name_of(tuple(k.key for k in path)):
            to_torch(leaf, transpose=path[-1].key != "embedding") for path, leaf in leaves}
