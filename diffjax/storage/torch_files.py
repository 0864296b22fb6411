"""Read PyTorch checkpoint files into numpy arrays without importing torch.

Three containers are understood:

* the zip container written by ``torch.save`` (torch >= 1.6) and by
  ``torch.jit.save``: ``<archive>/data.pkl`` plus one raw little-endian blob per
  tensor storage under ``<archive>/data/<key>``;
* the legacy stream written by ``torch.save(..., _use_new_zipfile_serialization
  =False)``: magic number, protocol, sys info, the object pickle, the list of
  storage keys, then each storage as an 8-byte element count and its bytes;
* a plain ``pickle.dump`` of objects holding tensors (NVlabs/edm network
  snapshots): each storage is a legacy ``torch.save`` blob inside the pickle,
  ``torch.nn.Module`` objects become ``PickledObject`` stand-ins whose
  ``state`` is the module's ``__dict__`` (``_parameters``, ``_buffers``,
  ``_modules``, ...), and EDM's ``torch_utils.persistence`` objects become
  ``PersistentObject`` records of their class name and state; their pickled
  source code is kept as a string and never executed.

The unpickler resolves only the globals that rebuild tensors, storages,
OrderedDicts and numpy scalars; every other global becomes an inert stand-in
class, so a checkpoint can never run code here.
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


def _load_zip_checkpoint(path: Path | BinaryIO) -> Any:
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            where = path if isinstance(path, Path) else "the file"
            raise ValueError(f"{where} is a zip file but not a PyTorch checkpoint (no <archive>/data.pkl).")
        prefix = pickles[0][: -len("data.pkl")]

        def load_storage(key: str, storage_type: Any, numel: int) -> np.ndarray:
            dtype = _storage_dtype(storage_type)
            raw = archive.read(f"{prefix}data/{key}")
            return np.frombuffer(raw, dtype=dtype, count=numel)

        with archive.open(pickles[0]) as pickled:
            return _TorchUnpickler(io.BytesIO(pickled.read()), load_storage).load()


def _load_legacy_checkpoint(path: Path) -> Any:
    with open(path, "rb") as stream:
        return _load_legacy_stream(
            stream, f"{path} is neither a zip nor a legacy PyTorch checkpoint.")


class _PlainValueUnpickler(pickle.Unpickler):
    """For the header records of a legacy file (numbers, dicts, lists): no globals at all."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a file header")


def _load_value(stream: BinaryIO) -> Any:
    return _PlainValueUnpickler(stream).load()


def _load_legacy_stream(stream: BinaryIO, not_torch_message: str) -> Any:
    try:
        magic = _load_value(stream)
    except pickle.UnpicklingError:
        raise ValueError(not_torch_message) from None
    if magic != _LEGACY_MAGIC_NUMBER:
        raise ValueError(not_torch_message)
    _load_value(stream)  # protocol version
    _load_value(stream)  # sys info (endianness, type sizes)
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
    storage_keys = _load_value(stream)
    for key in storage_keys:
        dtype, buffer = pending[str(key)]
        (numel,) = struct.unpack("<q", stream.read(8))
        buffer[:] = np.frombuffer(stream.read(numel * dtype.itemsize), dtype=dtype, count=numel)
    for placeholder, rebuild_args in views:
        placeholder[...] = _rebuild_tensor(*rebuild_args)
    return result


def load_torch_checkpoint(path: str | Path | BinaryIO) -> Any:
    """Unpickle a torch.save / torch.jit.save file (a path or a seekable binary stream);
    tensors become numpy arrays.

    TorchScript modules come back as ``ScriptObject`` trees whose attributes are
    the module's submodules, parameters and constants (e.g. ``stride``).
    """
    if hasattr(path, "read"):
        stream = path
        is_zip = zipfile.is_zipfile(stream)
        stream.seek(0)
        if is_zip:
            return _load_zip_checkpoint(stream)
        return _load_legacy_stream(
            stream, "The file is neither a zip nor a legacy PyTorch checkpoint.")
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


# --------------------------------------------------------------------------- plain pickles


class PickledObject:
    """Inert stand-in for an object of a class this reader does not import.

    ``pickled_global`` names the class; ``args`` are the constructor arguments the pickle
    passed, ``state`` what it would have set with ``__setstate__`` (a module's ``__dict__``).
    """

    pickled_global = "?"

    def __new__(cls, *args: Any, **unused_kwargs: Any):
        obj = super().__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *unused: Any, **unused_kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.pickled_global}>"


class PersistentObject:
    """An NVlabs ``torch_utils.persistence`` object: its class name and state, code not run."""

    def __init__(self, meta: dict) -> None:
        self.class_name = meta.get("class_name")
        self.state = meta.get("state") or {}
        self.module_src = meta.get("module_src")

    def __repr__(self) -> str:
        return f"<persistent {self.class_name}>"


def _stand_in(module: str, name: str) -> type:
    return type(name, (PickledObject,), {"pickled_global": f"{module}.{name}"})


def _copyreg_reconstructor(cls: Any, unused_base: Any, unused_state: Any) -> Any:
    stand_in = cls if isinstance(cls, type) and issubclass(cls, PickledObject) else PickledObject
    return stand_in.__new__(stand_in)


def _numpy_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray

    names = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        names[(module, "scalar")] = multiarray.scalar
        names[(module, "_reconstruct")] = getattr(multiarray, "_reconstruct")
    names[("numpy", "dtype")] = np.dtype
    names[("numpy", "ndarray")] = np.ndarray
    return names


def _load_storage_from_bytes(data: bytes) -> np.ndarray:
    """torch.storage._load_from_bytes: a storage pickled as a legacy torch.save blob."""
    return _load_legacy_stream(io.BytesIO(data),
                               "An embedded tensor storage is not a torch.save blob.")


class _PlainPickleUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self._numpy = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if (module, name) in _TORCH_GLOBALS:
            return _TORCH_GLOBALS[(module, name)]
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _load_storage_from_bytes
        if (module, name) == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
            return PersistentObject
        if (module, name) == ("copyreg", "_reconstructor"):
            return _copyreg_reconstructor
        if (module, name) in self._numpy:
            return self._numpy[(module, name)]
        return _stand_in(module, name)


def load_plain_pickle(path: str | Path | BinaryIO) -> Any:
    """Unpickle a ``pickle.dump`` file (a path or a binary stream) that holds torch objects,
    such as an EDM network snapshot."""
    if hasattr(path, "read"):
        return _PlainPickleUnpickler(path).load()
    with open(path, "rb") as stream:
        return _PlainPickleUnpickler(stream).load()


def module_state(module: Any, prefix: str = "") -> "collections.OrderedDict[str, np.ndarray]":
    """A torch module's ``state_dict()`` (parameters, then buffers, then submodules), from the
    stand-ins `load_plain_pickle` returns."""
    state = module.state if isinstance(module, (PickledObject, PersistentObject)) else module
    if not isinstance(state, dict):
        raise ValueError(f"{prefix or 'object'} is not a pickled torch module.")
    flat: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is not None and not (group == "_buffers" and
                                          name in state.get("_non_persistent_buffers_set", ())):
                flat[f"{prefix}{name}"] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            flat.update(module_state(child, f"{prefix}{name}."))
    return flat
