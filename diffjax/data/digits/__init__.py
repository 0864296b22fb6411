"""scikit-learn's bundled 8x8 handwritten digits as a TFDS dataset (the embedded default)."""

from diffjax.data.digits.digits_dataset_builder import Builder

__all__ = ["Builder"]
