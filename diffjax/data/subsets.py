"""A split restricted to some classes (`data.classes`): e.g. fine-tuning on one digit.

`ClassSubset` is a random-access source over the records of the chosen labels, in their stored
order, so the loader's shuffling and checkpointed position work on it unchanged. Finding them
reads every record's label once (the whole split is decoded once, at start-up).
"""

from __future__ import annotations

import numpy as np

from diffjax.data.pipeline import DataError, check_image_shape, data_source


def parse_classes(spec: str, num_classes: int) -> tuple[int, ...]:
    """"3" or "3,7" -> (3,) / (3, 7); "" -> ()."""
    spec = str(spec or "").strip()
    if not spec:
        return ()
    try:
        classes = tuple(sorted({int(part) for part in spec.split(",") if part.strip()}))
    except ValueError:
        classes = ()
    if not classes or any(not 0 <= c < num_classes for c in classes):
        raise DataError(f"data.classes={spec!r} is not a comma-separated list of class ids in "
                        f"[0, {num_classes}); e.g. --config.data.classes=3.")
    return classes


class ClassSubset:
    """The records of `source` whose label is in `classes` (picklable for loader workers)."""

    def __init__(self, source, classes: tuple[int, ...], where: str = "the split"):
        labels = np.asarray([int(record["label"]) for record in
                             source.__getitems__(list(range(len(source))))])
        self.indices = np.flatnonzero(np.isin(labels, classes))
        if not len(self.indices):
            raise DataError(f"{where} has no record with a label in {list(classes)} "
                            f"(data.classes); check the class ids.")
        self.source = source

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.source[int(self.indices[index])]

    def __getitems__(self, indices):
        return self.source.__getitems__([int(self.indices[i]) for i in indices])


def training_source(data_config, split: str | None = None):
    """The split `data.classes` asks for, or None (the whole split: the loader's default)."""
    classes = parse_classes(data_config.get("classes", ""), int(data_config.num_classes))
    if not classes:
        return None
    split = split or data_config.split
    source = data_source(data_config, split)
    check_image_shape(data_config, source)
    return ClassSubset(source, classes, f"{data_config.dataset}[{split}]")
