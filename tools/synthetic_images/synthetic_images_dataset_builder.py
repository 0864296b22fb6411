"""TFDS builder of synthetic datasets shaped like the ones diffjax trains on, for benchmarks.

Configs (10,000 training records each, 10 classes, records in a fixed order; the loader shuffles):
  rgb32     32x32x3 uint8 images stored as PNG, like CIFAR-10 (`tfds build cifar10`)
  rgb64     64x64x3 uint8 images stored as PNG, like downsampled ImageNet 64x64
  latent32  float16 [32, 32, 4] `mean` and `std` arrays (a VAE's posterior, as a latent-DiT data
            set stores them), stored raw, no image codec

Images are smooth random colour fields (bilinearly upsampled 4x4 noise) plus a little pixel noise,
so PNG compresses them about as well as natural images (~2.3 KB per 32x32 image, CIFAR-10's
PNGs average ~2.2 KB); pure noise would not compress and would overstate decode costs.
Deterministic: record i is a function of (config, i).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

NUM_RECORDS = 10_000
NUM_CLASSES = 10


def synthetic_image(index: int, size: int) -> np.ndarray:
    """A smooth random colour field with pixel noise, uint8 [size, size, 3]."""
    rng = np.random.default_rng(index)
    coarse = rng.uniform(0, 255, (4, 4, 3))
    grid = np.linspace(0, 3, size)
    lower = np.minimum(np.floor(grid).astype(int), 2)
    frac = grid - lower
    rows = coarse[lower] * (1 - frac)[:, None, None] + coarse[lower + 1] * frac[:, None, None]
    field = rows[:, lower] * (1 - frac)[None, :, None] + rows[:, lower + 1] * frac[None, :, None]
    noisy = field + rng.normal(0, 6, field.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def synthetic_latent(index: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(index)
    mean = rng.normal(0, 1, (32, 32, 4)).astype(np.float16)
    std = np.exp(rng.normal(-2, 0.3, (32, 32, 4))).astype(np.float16)
    return mean, std


class Builder(tfds.core.GeneratorBasedBuilder):
    """Synthetic images (PNG) and latents (float16) for input-pipeline benchmarks."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="rgb32", description="32x32x3 PNG images, like CIFAR-10."),
        tfds.core.BuilderConfig(name="rgb64", description="64x64x3 PNG images."),
        tfds.core.BuilderConfig(name="latent32", description="float16 [32,32,4] mean and std."),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        label = tfds.features.ClassLabel(num_classes=NUM_CLASSES)
        if self.builder_config.name == "latent32":
            tensor = tfds.features.Tensor(shape=(32, 32, 4), dtype=np.float16)
            features = {"mean": tensor, "std": tensor, "label": label}
        else:
            size = 32 if self.builder_config.name == "rgb32" else 64
            features = {"image": tfds.features.Image(shape=(size, size, 3)), "label": label}
        return self.dataset_info_from_configs(
            description="Synthetic records for diffjax's input-pipeline benchmarks.",
            features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,
            homepage="https://github.com/diffjax/diffjax/tree/main/tools",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # generated, nothing to download
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        name = self.builder_config.name
        for index in range(NUM_RECORDS):
            label = index % NUM_CLASSES
            if name == "latent32":
                mean, std = synthetic_latent(index)
                yield index, {"mean": mean, "std": std, "label": label}
            else:
                yield index, {"image": synthetic_image(index, 32 if name == "rgb32" else 64),
                              "label": label}
