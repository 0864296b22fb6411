"""Read PyTorch checkpoint files into numpy arrays without importing torch.

Two containers are understood:

* the zip container written by ``torch.save`` (torch >= 1.6) and by
  ``torch.jit.save``: ``<archive>/data.pkl`` plus one raw little-endian blob per
  tensor storage under ``<archive>/data/<key>``;
* the legacy stream written by ``torch.save(..., _use_new_zipfile_serialization
  =False)``: magic number, protocol, sys info, the object pickle, the list of
  storage keys, then each storage as an 8-byte element count and its bytes.

The unpickler only resolves the handful of globals these files need (tensor
rebuild helpers, storage types, OrderedDict, TorchScript module shells); any
other global is refused, so a checkpoint can never run code here.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C


class ScriptObject:
    """Attribute bag standing in for a pickled TorchScript module or class."""

    def __init__(self, *unused_args: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["state"] = state


def _script_class(module: str, name: str) -> type:
    return type(name, (ScriptObject,), {"torch_qualified_name": f"{module}.{name}"})


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *unused: Any) -> np.ndarray:
    if not size:
        return np.array(storage[offset])
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * storage.itemsize for s in stride)
    )
    return np.array(view, copy=True)


def _rebuild_parameter(data: np.ndarray, *unused: Any) -> np.ndarray:
    return data


def _identity_tag(value: Any, *unused: Any) -> Any:
    return value


_TORCH_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
    ("torch.jit._pickle", "restore_type_tag"): _identity_tag,
}


class _TorchUnpickler(pickle.Unpickler):
    def __init__(
        self,
        file: BinaryIO,
        load_storage: Callable[[str, Any, int], np.ndarray],
        rebuild_tensor: Callable[..., np.ndarray] = _rebuild_tensor,
    ):
        super().__init__(file)
        self._load_storage = load_storage
        self._rebuild_tensor = rebuild_tensor
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._rebuild_tensor
        if (module, name) in _TORCH_GLOBALS:
            return _TORCH_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if module == "__torch__" or module.startswith("__torch__."):
            return _script_class(module, name)
        raise pickle.UnpicklingError(
            f"Checkpoint refers to {module}.{name}, which this numpy reader does not "
            "support; re-save the file as a plain state dict of float tensors."
        )

    def persistent_load(self, pid: Any) -> np.ndarray:
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage":
            raise pickle.UnpicklingError(f"Unknown persistent id kind {kind!r} in checkpoint.")
        if key not in self._storages:
            self._storages[key] = self._load_storage(str(key), storage_type, int(numel))
        return self._storages[key]


def _storage_dtype(storage_type: Any) -> np.dtype:
    name = storage_type if isinstance(storage_type, str) else getattr(storage_type, "__name__", "")
    if name not in _STORAGE_DTYPES:
        raise pickle.UnpicklingError(f"Unsupported tensor storage type {storage_type!r} in checkpoint.")
    return np.dtype(_STORAGE_DTYPES[name]).newbyteorder("<")


def _load_zip_checkpoint(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path} is a zip file but not a PyTorch checkpoint (no <archive>/data.pkl).")
        prefix = pickles[0][: -len("data.pkl")]

        def load_storage(key: str, storage_type: Any, numel: int) -> np.ndarray:
            dtype = _storage_dtype(storage_type)
            raw = archive.read(f"{prefix}data/{key}")
            return np.frombuffer(raw, dtype=dtype, count=numel)

        with archive.open(pickles[0]) as pickled:
            return _TorchUnpickler(io.BytesIO(pickled.read()), load_storage).load()


def _load_legacy_checkpoint(path: Path) -> Any:
    with open(path, "rb") as stream:
        magic = pickle.load(stream)
        if magic != _LEGACY_MAGIC_NUMBER:
            raise ValueError(f"{path} is neither a zip nor a legacy PyTorch checkpoint.")
        pickle.load(stream)  # protocol version
        pickle.load(stream)  # sys info (endianness, type sizes)
        pending: dict[str, tuple[np.dtype, np.ndarray]] = {}

        # Storage bytes come after the object pickle, so hand out empty arrays
        # now and fill them in place once the bytes are reached.
        def load_storage(key: str, storage_type: Any, numel: int) -> np.ndarray:
            dtype = _storage_dtype(storage_type)
            buffer = np.empty(numel, dtype=dtype)
            pending[key] = (dtype, buffer)
            return buffer

        # Tensors are rebuilt (copied) while unpickling, so keep views until
        # the storages are filled, then rebuild from the filled buffers.
        views: list[tuple[np.ndarray, tuple]] = []

        def deferred_rebuild(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *unused: Any):
            placeholder = np.empty(tuple(size), dtype=storage.dtype)
            views.append((placeholder, (storage, offset, size, stride)))
            return placeholder

        result = _TorchUnpickler(stream, load_storage, deferred_rebuild).load()
        storage_keys = pickle.load(stream)
        for key in storage_keys:
            dtype, buffer = pending[str(key)]
            (numel,) = struct.unpack("<q", stream.read(8))
            buffer[:] = np.frombuffer(stream.read(numel * dtype.itemsize), dtype=dtype, count=numel)
        for placeholder, rebuild_args in views:
            placeholder[...] = _rebuild_tensor(*rebuild_args)
        return result


def load_torch_checkpoint(path: str | Path) -> Any:
    """Unpickle a torch.save / torch.jit.save file; tensors become numpy arrays.

    TorchScript modules come back as ``ScriptObject`` trees whose attributes are
    the module's submodules, parameters and constants (e.g. ``stride``).
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _load_zip_checkpoint(path)
    return _load_legacy_checkpoint(path)


def flatten_script_module(root: ScriptObject, prefix: str = "") -> dict[str, np.ndarray]:
    """Dotted-name -> array map of every tensor in a TorchScript module tree."""
    flat: dict[str, np.ndarray] = {}
    for name, value in vars(root).items():
        if isinstance(value, ScriptObject):
            flat.update(flatten_script_module(value, f"{prefix}{name}."))
        elif isinstance(value, np.ndarray):
            flat[f"{prefix}{name}"] = value
    return flat
