"""TFDS builder for scikit-learn's 8x8 handwritten digits (UCI optdigits test set, 1,797 images).

The images ship inside scikit-learn, so this dataset prepares offline, anywhere: it is the
project's embedded default and exercises the same TFDS -> ArrayRecord -> Grain path as CIFAR-10.
Pixel values are 0..16 in the source; they are mapped to 0..255 (round(v * 255 / 16)).
Splits are fixed by index: every 10th image is `test` (180), the rest `train` (1,617).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

_DESCRIPTION = """\
8x8 grey-scale handwritten digits 0-9 from the UCI ML optical-recognition data set, as bundled with
scikit-learn (`sklearn.datasets.load_digits`)."""

_CITATION = """\
@misc{alpaydin1998optdigits,
  author = {Alpaydin, E. and Kaynak, C.},
  title  = {Optical Recognition of Handwritten Digits},
  year   = {1998},
  howpublished = {UCI Machine Learning Repository},
}"""

TEST_EVERY = 10


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 [N, 8, 8, 1] in 0..255 and int64 labels [N]."""
    from sklearn.datasets import load_digits  # heavy import, only needed when preparing

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, bunch.target.astype(np.int64)


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for the embedded digits."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "Records stored in source order (the loader shuffles)."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            # Grain shuffles every epoch; stored order = source order keeps splits reproducible.
            disable_shuffling=True,
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download: the data ship with scikit-learn
        images, labels = load_digit_images()
        is_test = np.arange(len(images)) % TEST_EVERY == 0
        return {
            "train": self._generate_examples(images[~is_test], labels[~is_test]),
            "test": self._generate_examples(images[is_test], labels[is_test]),
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image, "label": int(label)}
