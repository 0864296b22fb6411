"""Data: TFDS catalog (with the embedded digits), Grain loader, device prefetch, pixel ranges.

Files: pipeline.py (TFDS builders: the catalogue and the embedded digits), loader.py (Grain
loader, per-process shards), device_prefetch.py (global batches ahead of the step), pixels.py
(uint8 <-> the model's range), digits/ (the embedded TFDS builder).
Imports: runtime only.
"""

from diffjax.data.device_prefetch import DevicePrefetch, global_batch
from diffjax.data.loader import TrainLoader
from diffjax.data.pipeline import (EMBEDDED_BUILDERS, DataError, data_source, dataset_builder,
                                   iterate_split, read_records)
from diffjax.data.pixels import from_model_range, log_density_offset_bits, to_model_range

__all__ = ["EMBEDDED_BUILDERS", "DataError", "DevicePrefetch", "TrainLoader", "data_source",
           "dataset_builder", "global_batch", "iterate_split", "read_records", "from_model_range",
           "log_density_offset_bits", "to_model_range"]
