"""Sample grids as PNG files and TensorBoard images."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from diffjax.storage import filesystem as fs


def make_grid(images: np.ndarray, *, columns: int | None = None, padding: int = 1,
              min_cell: int = 32) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [rows*H', cols*W', C] image.

    Tiny images (8x8 digits) are enlarged by an integer nearest-neighbour factor so each cell is at
    least `min_cell` pixels wide; a viewer's smoothing would otherwise blur them into blobs.
    """
    images = np.asarray(images)
    n, h, w, c = images.shape
    factor = max(1, math.ceil(min_cell / max(h, w)))
    if factor > 1:
        images = images.repeat(factor, axis=1).repeat(factor, axis=2)
        h, w = h * factor, w * factor
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, c), 255,
                   np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = image
    return grid


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 [H, W, C] (C = 1 or 3) as PNG file contents."""
    image = np.asarray(image)
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(path: str, grid: np.ndarray) -> str:
    """Writes a PNG atomically through the path layer (local or gs://)."""
    return fs.write_atomic(path, png_bytes(grid))
