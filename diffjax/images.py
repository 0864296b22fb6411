"""Sample grids as PNG files and TensorBoard images."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


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


def save_png(path: str, grid: np.ndarray) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image = grid[..., 0] if grid.shape[-1] == 1 else grid
    Image.fromarray(image).save(path)
    return path
