"""safetensors files read into numpy and written from numpy: every published weight diffjax
loads (diffusers and transformers folders, LoRA files) is one, and no torch is needed.

Tensors keep their stored dtype (bfloat16 through ml_dtypes); the file goes through the path
layer, so it may be on gs://. A file that is not safetensors, or holds a dtype diffjax does not
read, is a `ValueError` naming the file and `fix`, the caller's advice on getting a good copy.
"""

from __future__ import annotations

from typing import Mapping

import ml_dtypes
import numpy as np

from diffjax.storage import filesystem

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}


def read_safetensors(path: str, fix: str = "download the file again") -> dict[str, np.ndarray]:
    """All tensors of a safetensors file, by name, as numpy arrays."""
    return read_safetensors_bytes(filesystem.read_bytes(path), path, fix)


def read_safetensors_bytes(data: bytes, source: str, fix: str = "download the file again"
                           ) -> dict[str, np.ndarray]:
    from safetensors import deserialize

    try:
        tensors = {}
        for name, entry in deserialize(data):
            if entry["dtype"] not in _DTYPES:
                raise ValueError(f"tensor {name!r} has dtype {entry['dtype']}")
            dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
            tensors[name] = np.frombuffer(entry["data"], dtype).reshape(entry["shape"])
    except Exception as e:  # noqa: BLE001 - any decoding failure means a bad file
        raise ValueError(f"{source} is not a readable safetensors file ({e}); {fix}.") from None
    return tensors


def read_metadata(path: str) -> dict[str, str]:
    """The file's string metadata (the `__metadata__` header entry; {} when absent)."""
    import json
    import struct

    data = filesystem.read_bytes(path)
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + length])
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path} is not a safetensors file ({e}).") from None
    return dict(header.get("__metadata__", {}) or {})


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> str:
    """Writes `tensors` atomically (a reader never sees half a file); PyTorch's layout metadata
    ("format": "pt") unless `metadata` says otherwise."""
    from safetensors.numpy import save

    arrays = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
    filesystem.write_atomic(path, save(arrays, metadata=dict(metadata or {"format": "pt"})))
    return path
