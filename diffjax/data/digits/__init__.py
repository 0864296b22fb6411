"""scikit-learn's bundled 8x8 handwritten digits as TFDS datasets (the embedded defaults):
`digits` (images, labels) and `digits_captioned` (the same, with captions; captions.py)."""

from diffjax.data.digits.captioned_builder import CaptionedBuilder
from diffjax.data.digits.digits_dataset_builder import Builder

__all__ = ["Builder", "CaptionedBuilder"]
