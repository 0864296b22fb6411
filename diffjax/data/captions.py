"""Captioned images for text-to-image: a TFDS split with a text feature, or an image folder.

Both give random-access records {"image": uint8 [H, W, C], "label": 0 or the class,
"captions": [str, ...], "where": file or dataset/split#index}, read by the same writer
(`--mode=encode_latents`) and so the same Grain loader as every other dataset.

- TFDS (`data.caption_key`): the feature named by the key, "/" for nesting (coco_captions:
  "captions/text", a Sequence of Text; a single Text feature works too). Bytes must be UTF-8.
- An image folder (`data.image_folder`), the layout of diffusers' fine-tuning scripts
  (`datasets`' ImageFolder): images anywhere below the folder, captions in `metadata.jsonl`
  (one JSON object per line, {"file_name": relative path, "text": caption or [captions]}) or,
  without it, in NAME.txt beside NAME.png (one caption per non-empty line).

`select_examples` reads every record once before anything is encoded and checks images and
captions (`check_text` adds the text encoder's own limit). A bad example stops the run with one
line naming it and the fix; with `data.skip_bad_examples=True` it is left out instead, counted
and logged. The examples kept are a pure function of the data, so a resumed encoding keeps the
same ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Callable, Sequence

import numpy as np

from diffjax.data.pipeline import DataError
from diffjax.storage import filesystem as fs

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
METADATA_FILE = "metadata.jsonl"
SKIP_HINT = "or set --config.data.skip_bad_examples=True to leave such examples out"


def _decode_text(value: Any, where: str) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: a caption is not UTF-8 text ({e}); re-encode it as "
                            f"UTF-8, {SKIP_HINT}.") from None
    if isinstance(value, str):
        return value
    raise DataError(f"{where}: a caption is a {type(value).__name__}, not text; point "
                    f"data.caption_key at a Text feature.")


def captions_from_feature(record: dict, key: str, where: str) -> list[str]:
    """The captions under `key` ("a/b" for nested features) of a TFDS record."""
    value: Any = record
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            have = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise DataError(f"{where} has no feature {key!r} (at {part!r} it has {have}); set "
                            f"--config.data.caption_key to its text feature, e.g. "
                            f"captions/text for coco_captions.")
        value = value[part]
    values = [value] if isinstance(value, (str, bytes, np.bytes_)) or \
        np.ndim(value) == 0 else list(np.asarray(value, dtype=object).reshape(-1))
    return [_decode_text(v, where) for v in values]


class TfdsCaptions:
    """A TFDS data source whose records gain "captions" (from `caption_key`) and "where"."""

    def __init__(self, source, caption_key: str, name: str):
        self.source, self.caption_key, self.name = source, caption_key, name

    def __len__(self) -> int:
        return len(self.source)

    def _record(self, index: int, record: dict) -> dict:
        where = f"{self.name}#{index}"
        return {"image": np.asarray(record["image"]), "label": int(record.get("label", 0)),
                "captions": captions_from_feature(record, self.caption_key, where),
                "where": where}

    def __getitem__(self, index: int) -> dict:
        return self._record(int(index), self.source[int(index)])

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        keys = [int(i) for i in indices]
        return [self._record(i, r) for i, r in zip(keys, self.source.__getitems__(keys))]


def _read_utf8(path: str) -> str:
    try:
        return fs.read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); re-save it as UTF-8.") from None


def _folder_captions(folder: str, images: list[str]) -> dict[str, list[str] | str]:
    """relative image path -> its captions, or the reason it has none (a one-line problem)."""
    metadata_path = fs.join(folder, METADATA_FILE)
    found: dict[str, list[str] | str] = {}
    if fs.exists(metadata_path):
        text = _read_utf8(metadata_path)
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{metadata_path} line {number} is not JSON ({e}); write one "
                                f"object per line: {{\"file_name\": ..., \"text\": ...}}.") \
                    from None
            if not isinstance(entry, dict) or "file_name" not in entry:
                raise DataError(f"{metadata_path} line {number} has no \"file_name\"; write "
                                f"one object per line: {{\"file_name\": ..., \"text\": ...}}.")
            name = str(entry["file_name"])
            value = entry.get("text")
            captions = value if isinstance(value, list) else [] if value is None else [value]
            if not all(isinstance(c, str) for c in captions):
                raise DataError(f"{metadata_path} line {number}: \"text\" must be a string or "
                                f"a list of strings.")
            found[name] = captions
        missing = sorted(set(found) - set(images))
        if missing:
            raise DataError(f"{metadata_path} names {len(missing)} file(s) that are not images "
                            f"in {folder} (first: {missing[0]}); remove those lines or add the "
                            f"images.")
        for name in images:
            if name not in found:
                found[name] = f"{fs.join(folder, name)} has no line in {METADATA_FILE}"
        return found
    for name in images:
        stem = name.rsplit(".", 1)[0]
        path = fs.join(folder, stem + ".txt")
        if not fs.exists(path):
            found[name] = (f"{fs.join(folder, name)} has no caption ({stem}.txt is missing and "
                           f"there is no {METADATA_FILE})")
            continue
        try:
            lines = [line for line in _read_utf8(path).splitlines() if line.strip()]
        except DataError as error:  # skippable: this image alone has no readable caption
            found[name] = str(error).rstrip(".")
            continue
        found[name] = lines or f"{path} is empty"
    return found


def _images_below(folder: str, prefix: str = "") -> list[str]:
    """Relative paths of the image files below `folder` (one listing per subfolder)."""
    found = []
    for name in fs.listdir(fs.join(folder, prefix) if prefix else folder):
        relative = f"{prefix}/{name}" if prefix else name
        if name.lower().endswith(IMAGE_EXTENSIONS):
            found.append(relative)
        elif fs.is_dir(fs.join(folder, relative)):
            found.extend(_images_below(folder, relative))
    return found


class FolderCaptions:
    """Random access to an image folder with captions (diffusers' fine-tuning layout)."""

    def __init__(self, folder: str, num_channels: int):
        if not folder or not fs.is_dir(folder):
            raise DataError(f"data.image_folder={folder!r} is not a folder; point it at a "
                            f"folder of images with {METADATA_FILE} or NAME.txt captions.")
        self.folder, self.num_channels = folder, int(num_channels)
        names = sorted(_images_below(folder))
        if not names:
            raise DataError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}); point "
                            f"data.image_folder at the folder of the training images.")
        self.names = names
        self._captions = _folder_captions(folder, names)

    def __len__(self) -> int:
        return len(self.names)

    def captions(self, index: int) -> list[str] | str:
        """The captions of image `index`, or the one-line reason it has none."""
        return self._captions[self.names[index]]

    def read_image(self, index: int) -> np.ndarray:
        from PIL import Image

        path = fs.join(self.folder, self.names[index])
        try:
            with fs.as_path(path).open("rb") as file:
                image = Image.open(file)
                image = image.convert("L" if self.num_channels == 1 else "RGB")
                array = np.asarray(image, np.uint8)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a broken file
            raise DataError(f"{path} cannot be decoded as an image ({type(e).__name__}: {e}); "
                            f"replace or delete it, {SKIP_HINT}.") from None
        return array.reshape(*array.shape[:2], self.num_channels)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        captions = self.captions(index)
        if isinstance(captions, str):
            raise DataError(f"{captions}; add one, {SKIP_HINT}.")
        return {"image": self.read_image(index), "label": 0, "captions": captions,
                "where": fs.join(self.folder, self.names[index])}

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        return [self[i] for i in indices]


@dataclasses.dataclass
class Selection:
    """The examples kept (indices into the source) and why the others were left out."""

    kept: np.ndarray
    skipped: list[str]


class SelectedSource:
    """`source` restricted to `indices` (random access, picklable)."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.source[int(self.indices[int(index)])]

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        return self.source.__getitems__([int(self.indices[int(i)]) for i in indices])


def problem_of(record: dict, check_text: Callable[[str], str | None] | None) -> str | None:
    """What is wrong with a record and how to fix it, in one line (None if nothing)."""
    where = record["where"]
    image = np.asarray(record["image"])
    if image.ndim != 3 or 0 in image.shape:
        return f"{where}: the image has shape {image.shape}; replace it"
    captions = record["captions"]
    if not captions:
        return f"{where} has no caption; add one"
    for caption in captions:
        if not caption.strip():
            return f"{where} has an empty caption; write one"
        problem = check_text(caption) if check_text is not None else None
        if problem:
            return f"{where}: {problem}"
    return None


def select_examples(source, *, skip: bool,
                    check_text: Callable[[str], str | None] | None = None) -> Selection:
    """Reads every record once; a bad one raises DataError, or (skip) is counted and left out.
    `check_text(caption)` returns a caption's problem and fix, or None."""
    kept, skipped = [], []
    for index in range(len(source)):
        try:
            problem = problem_of(source[index], check_text)
        except DataError as error:
            if not skip:
                raise
            problem = str(error)
        if problem is None:
            kept.append(index)
        elif skip:
            skipped.append(problem)
        else:
            raise DataError(f"{problem}, {SKIP_HINT}.")
    if skipped:
        log.warning("Skipped %d of %d examples (data.skip_bad_examples=True); first: %s",
                    len(skipped), len(source), skipped[0])
    if not kept:
        raise DataError(f"No usable example is left of {len(source)} (first problem: "
                        f"{skipped[0] if skipped else 'none'}); fix the data.")
    return Selection(np.asarray(kept, np.int64), skipped)


def captioned_source(config, split: str):
    """The configured captioned images (before `select_examples`): data.image_folder, or the TFDS
    split with data.caption_key."""
    d = config.data
    if d.image_folder:
        return FolderCaptions(d.image_folder, d.num_channels)
    if not d.caption_key:
        raise DataError(f"data.text_encoder={d.text_encoder!r} needs captions: set "
                        f"--config.data.caption_key to the text feature of {d.dataset!r} (e.g. "
                        f"captions/text) or --config.data.image_folder to a captioned folder.")
    from diffjax.data.pipeline import data_source

    return TfdsCaptions(data_source(d, split), d.caption_key, f"{d.dataset}/{split}")
