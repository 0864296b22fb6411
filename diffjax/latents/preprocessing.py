"""Images -> VAE inputs as DiT prepares ImageNet: ADM's center crop, flips as extra views.

`center_crop` is ADM's `center_crop_arr` (guided-diffusion, used by DiT, SiT, fast-DiT):
halve the image with a BOX filter while its short side is at least twice the target, resize with
BICUBIC so that the short side equals the target (sizes rounded), then cut the centre square.
Pinned to DiT's own function by tests/fixtures/vae_center_crop.npz.

Latent datasets store each image's horizontal flip as a second view (EDM2, fast-DiT), because
a flip of the latent is not the latent of the flipped image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, C] (C = 1 or 3) -> uint8 [size, size, C], ADM's center crop."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"center_crop expects [H, W, 1 or 3] images, got {image.shape}.")
    if image.shape[:2] == (size, size):
        return image
    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    while min(pil.size) >= 2 * size:
        pil = pil.resize(tuple(side // 2 for side in pil.size), resample=Image.BOX)
    ratio = size / min(pil.size)
    pil = pil.resize(tuple(round(side * ratio) for side in pil.size), resample=Image.BICUBIC)
    array = np.asarray(pil).reshape(pil.size[1], pil.size[0], channels)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top:top + size, left:left + size]


def check_num_views(num_views: int) -> None:
    if num_views not in (1, 2):
        raise ValueError(f"data.latent_views={num_views}; use 1 (images as they are) or 2 "
                         f"(also their horizontal flips).")


def views(images: np.ndarray, num_views: int) -> np.ndarray:
    """[B, H, W, C] -> [B, num_views, H, W, C]: the images, then (num_views = 2) their mirror."""
    check_num_views(num_views)
    stacked = [images, images[:, :, ::-1]][:num_views]
    return np.stack(stacked, axis=1)


def to_vae_range(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1], as DiT's ToTensor + Normalize(0.5, 0.5): x / 127.5 - 1."""
    return np.asarray(images, np.float32) / 127.5 - 1.0


def prepare_batch(images: np.ndarray | list, size: int, num_views: int) -> np.ndarray:
    """Stored uint8 images (any sizes) -> float32 [B * num_views, size, size, C] in [-1, 1],
    ordered example by example, view by view."""
    cropped = np.stack([center_crop(image, size) for image in images])
    stacked = views(cropped, num_views)
    return to_vae_range(stacked.reshape((-1,) + stacked.shape[2:]))
