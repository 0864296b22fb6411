"""TFDS builder `digits_captioned`: the embedded digits with captions (text-to-image default).

The same 1,797 images, pixels and train/test split as `digits` (so FID statistics agree), plus
a `captions` feature (Sequence of Text: `captions.CAPTIONS_PER_IMAGE` captions from the label
and the measured stroke weight and slant, see captions.py) and the measurements themselves
(`ink`, `slant`). The plain `digits` dataset is untouched.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from diffjax.data.digits import captions
from diffjax.data.digits.digits_dataset_builder import (_CITATION, _DESCRIPTION, TEST_EVERY,
                                                        load_digit_images)


class CaptionedBuilder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for the captioned embedded digits."""

    name = "digits_captioned"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Captions from the label, stroke weight and slant."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION + "\nCaptioned by diffjax from each digit's label and its "
                                       "measured stroke weight and slant.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1)),
                "label": tfds.features.ClassLabel(num_classes=10),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "ink": np.float32,
                "slant": np.float32,
            }),
            disable_shuffling=True,
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager
        images, labels = load_digit_images()
        indices = np.arange(len(images))
        texts = captions.caption_images(images, labels, indices)
        ink, slant = captions.measure(images)
        is_test = indices % TEST_EVERY == 0
        rows = [dict(image=images[i], label=int(labels[i]), captions=texts[i],
                     ink=np.float32(ink[i]), slant=np.float32(slant[i])) for i in indices]
        return {"train": self._generate_examples([r for r, t in zip(rows, is_test) if not t]),
                "test": self._generate_examples([r for r, t in zip(rows, is_test) if t])}

    def _generate_examples(self, rows):
        for index, row in enumerate(rows):
            yield index, row
