"""Broken copies of published model folders, for the tests of their one-line errors."""

import json
import shutil

import pytest
from safetensors.numpy import load_file, save_file


def broken_copy(source, destination, weights_file, edit_tensors=None, edit_config=None) -> str:
    """`source` copied to `destination` (replacing it) with its tensors and config.json edited
    in place by the given functions."""
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(source, destination)
    if edit_tensors:
        path = str(destination / weights_file)
        tensors = dict(load_file(path))
        edit_tensors(tensors)
        save_file(tensors, path)
    if edit_config:
        config = json.loads((destination / "config.json").read_text())
        edit_config(config)
        (destination / "config.json").write_text(json.dumps(config))
    return str(destination)


def one_line_error(error_type, fn, match) -> str:
    """The message of the `error_type` that `fn()` raises, which must match and be one line."""
    with pytest.raises(error_type, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)
