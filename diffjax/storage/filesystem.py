"""The one path layer: every file diffjax reads or writes goes through here, so that a workdir,
a VAE folder or a statistics cache may be a local path, `gs://bucket/...` or any other
`etils.epath` path.

Local paths keep POSIX semantics (atomic rename, fsync). Object stores have no rename, but an
object written in one request appears whole or not at all, which is the property the callers
need: a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import IO, Iterator

from etils import epath

Path = epath.Path
PathLike = str | os.PathLike


def as_path(path: PathLike) -> epath.Path:
    return epath.Path(os.path.expanduser(str(path)) if str(path).startswith("~") else path)


def is_local(path: PathLike) -> bool:
    return "://" not in str(path)


def absolute(path: PathLike) -> str:
    """An absolute local path, or the URL unchanged."""
    path = str(path)
    return os.path.abspath(os.path.expanduser(path)) if is_local(path) else path.rstrip("/")


def join(*parts: PathLike) -> str:
    return str(as_path(parts[0]).joinpath(*[str(p) for p in parts[1:]]))


def exists(path: PathLike) -> bool:
    return as_path(path).exists()


def is_dir(path: PathLike) -> bool:
    return as_path(path).is_dir()


def is_file(path: PathLike) -> bool:
    return as_path(path).is_file()


def makedirs(path: PathLike) -> str:
    as_path(path).mkdir(parents=True, exist_ok=True)
    return str(path)


def listdir(path: PathLike) -> list[str]:
    """Names in a folder, sorted; [] when it does not exist."""
    folder = as_path(path)
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir())


def read_bytes(path: PathLike) -> bytes:
    return as_path(path).read_bytes()


def read_text(path: PathLike) -> str:
    return as_path(path).read_text()


@contextlib.contextmanager
def open_file(path: PathLike, mode: str = "rb") -> Iterator[IO]:
    with as_path(path).open(mode) as handle:
        yield handle


def write_atomic(path: PathLike, data: bytes | str) -> str:
    """Writes the whole file or nothing: readers never see a truncated version.

    Locally: a hidden sibling, fsync, then rename over the target. On object stores: one upload.
    """
    payload = data.encode() if isinstance(data, str) else data
    if not is_local(path):
        target = as_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)  # a no-op on object stores
        target.write_bytes(payload)
        return str(path)
    path = os.path.abspath(os.path.expanduser(str(path)))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # files are for everyone who may read the workdir
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    return path


def remove(path: PathLike) -> None:
    """Deletes a file or a folder tree; a missing path is not an error."""
    target = as_path(path)
    if target.is_dir():
        target.rmtree(missing_ok=True)
    elif target.exists():
        target.unlink(missing_ok=True)


def rename(source: PathLike, destination: PathLike) -> None:
    as_path(source).rename(as_path(destination))


def copy_tree(source: PathLike, destination: PathLike) -> str:
    """Copies a file, or a folder with everything in it, to `destination` (which must not
    exist)."""
    source, destination = as_path(source), as_path(destination)
    if source.is_dir():
        destination.mkdir(parents=True, exist_ok=False)
        for child in sorted(source.iterdir()):
            copy_tree(child, destination / child.name)
    else:
        source.copy(destination)
    return str(destination)
