"""Data: TFDS catalog (with the embedded digits), Grain loader, pixel-range conversions."""

from diffjax.data.pipeline import (EMBEDDED_BUILDERS, DataError, TrainLoader, data_source,
                                   dataset_builder, iterate_split)
from diffjax.data.pixels import from_model_range, log_density_offset_bits, to_model_range

__all__ = ["EMBEDDED_BUILDERS", "DataError", "TrainLoader", "data_source", "dataset_builder",
           "iterate_split", "from_model_range", "log_density_offset_bits", "to_model_range"]
