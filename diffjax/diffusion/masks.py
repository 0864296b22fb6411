"""Inpainting masks by name or from a file: 1 where pixels are known, 0 where they are filled in.

`--config.sampling.inpaint=NAME` names the region that is *missing*:
    left_half, right_half, top_half, bottom_half   that half of the image
    center                                         the central square of half the side
    outside                                        everything but that central square
    random_pixels                                  half of the pixels, at random (seeded)
or a path (local or gs://) to a .npy array or a PNG of the image size, nonzero = known.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from diffjax.storage import filesystem as fs


def _half(size: int, axis: int, first: bool) -> np.ndarray:
    known = np.ones((size, size), np.float32)
    index = [slice(None), slice(None)]
    index[axis] = slice(0, size // 2) if first else slice(size // 2, size)
    known[tuple(index)] = 0.0
    return known


def _center(size: int) -> np.ndarray:
    known = np.ones((size, size), np.float32)
    lo, hi = size // 4, size - size // 4
    known[lo:hi, lo:hi] = 0.0
    return known


def _random_pixels(size: int) -> np.ndarray:
    return (np.random.default_rng(0).random((size, size)) >= 0.5).astype(np.float32)


NAMED_MASKS = {
    "left_half": lambda s: _half(s, 1, True),
    "right_half": lambda s: _half(s, 1, False),
    "top_half": lambda s: _half(s, 0, True),
    "bottom_half": lambda s: _half(s, 0, False),
    "center": _center,
    "outside": lambda s: 1.0 - _center(s),
    "random_pixels": _random_pixels,
}


def load_mask(source: str, image_size: int) -> np.ndarray:
    """float32 [H, W, 1] with 1 = known, 0 = to fill in."""
    if source in NAMED_MASKS:
        known = NAMED_MASKS[source](image_size)
    else:
        if not fs.exists(source):
            raise FileNotFoundError(
                f"sampling.inpaint={source!r} is neither a mask name ({', '.join(NAMED_MASKS)}) "
                f"nor an existing .npy/.png file; pass one of those.")
        raw = fs.read_bytes(source)
        if source.endswith(".npy"):
            known = np.load(io.BytesIO(raw))
        else:
            known = np.asarray(Image.open(io.BytesIO(raw)).convert("L"))
        known = (np.asarray(known, np.float32).squeeze() != 0).astype(np.float32)
        if known.shape != (image_size, image_size):
            raise ValueError(f"the mask {source} has shape {known.shape}, but images are "
                             f"{image_size}x{image_size}; make a mask of that size.")
    if known.all() or not known.any():
        raise ValueError(f"sampling.inpaint={source!r} leaves nothing to fill in or nothing "
                         f"known; use a mask with both 0s and 1s.")
    return known[..., None]
