"""FID reference statistics: mean and covariance of the Inception features of a dataset split.

`--mode=fid_stats` computes them once per (dataset, split, resolution, Inception weights) and
caches them in `eval.stats_dir` (default ~/.cache/diffjax/fid_stats) as an .npz with float64 `mu`
and `sigma` (the keys of TTUR / pytorch-fid files) plus `kid_features`, a fixed random subset of
the float32 reference features that the KID needs (KID is an MMD between feature *sets*, not
between Gaussians). `--mode=eval` calls `reference_statistics`, which reuses the file or builds it.

The file name carries a hash of the Inception parameters, so statistics from other weights (a
different converted file, pytorch-fid's .pth with slightly different conv weights) are never
silently mixed with features from these. `eval.reference_split` is a split name (all its
images, the standard) or "name[:N]" for its first N images (quick checks, tests).

The mean and covariance are accumulated as float64 sums over batches instead of keeping every
feature: 50k x 2048 float32 features would be 400 MB, the sums are 32 MB. With several
processes, each reads and embeds its own share of the split and the sums are added across
processes, so the result does not depend on the process count.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from typing import NamedTuple

import jax
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from diffjax import data as data_lib
from diffjax.evaluation.inception import inception_features
from diffjax.evaluation.inception_network import FEATURE_DIM
from diffjax.evaluation.inception_weights import load_inception_params
from diffjax.storage import filesystem as fs, workdir as workdir_lib

DEFAULT_STATS_DIR = os.path.join(os.path.expanduser("~"), ".cache", "diffjax", "fid_stats")
# Reference features kept for KID: its estimator draws subsets of at most 1000 per set, and a
# uniformly random 5000-subset of the data is itself an unbiased sample of it (40 MB at 2048-d).
KID_REFERENCE_SIZE = 5000
_KID_SUBSET_SEED = 0


class ReferenceStatistics(NamedTuple):
    path: str
    mu: np.ndarray  # float64 [2048]
    sigma: np.ndarray  # float64 [2048, 2048]
    kid_features: np.ndarray | None  # float32 [<= KID_REFERENCE_SIZE, 2048]; None in foreign files
    num_images: int


def local_inception_mesh() -> Mesh | None:
    """This process's devices as a 1-D mesh for the Inception batches (None for one device)."""
    devices = jax.local_devices()
    return Mesh(np.array(devices), ("batch",)) if len(devices) > 1 else None


def inception_fingerprint(params: dict) -> str:
    """Short hash of the feature-producing Inception weights (the classifier is left out).

    Hashes the loaded arrays rather than a file, so the converted .msgpack cache and the
    TorchScript file it came from give the same name.
    """
    flat = traverse_util.flatten_dict(params.get("params", params), sep="/")
    digest = hashlib.blake2b(digest_size=6)
    for name in sorted(flat):
        if name.split("/")[0] == "logits":
            continue
        value = np.ascontiguousarray(flat[name])
        digest.update(f"{name}:{value.dtype}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def stats_dir(config) -> str:
    return fs.absolute(config.eval.stats_dir or DEFAULT_STATS_DIR)


def parse_reference_split(split: str) -> tuple[str, int]:
    """"train" -> ("train", 0 = all images); "train[:10000]" -> ("train", 10000), TFDS-style."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[\s*:\s*(\d+)\s*\])?\s*", split)
    if not match or match.group(2) == "0":
        raise ValueError(f"eval.reference_split={split!r} is not a split name or 'name[:N]' "
                         f"(the first N images); use e.g. --config.eval.reference_split=train.")
    return match.group(1), int(match.group(2) or 0)


def stats_path(config, fingerprint: str) -> str:
    dataset = re.sub(r"[^A-Za-z0-9.-]+", "-", config.data.dataset)
    split, limit = parse_reference_split(config.eval.reference_split)
    subset = f"-first{limit}" if limit else ""
    name = f"{dataset}_{split}{subset}_{config.data.image_size}px_inception-{fingerprint}.npz"
    return fs.join(stats_dir(config), name)


class MomentSums:
    """Running float64 count, sum and sum of outer products of feature rows."""

    def __init__(self, dim: int = FEATURE_DIM):
        self.count = 0
        self.total = np.zeros(dim, np.float64)
        self.outer = np.zeros((dim, dim), np.float64)

    def update(self, features: np.ndarray) -> None:
        rows = np.asarray(features, np.float64)
        self.count += rows.shape[0]
        self.total += rows.sum(axis=0)
        self.outer += rows.T @ rows

    def add_across_processes(self) -> None:
        if jax.process_count() == 1:
            return
        self.count = int(gather_exact(np.asarray([self.count], np.int64)).sum())
        self.total = gather_exact(self.total).sum(axis=0)
        self.outer = gather_exact(self.outer).sum(axis=0)

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """The same unbiased (N - 1) covariance as np.cov / `feature_statistics`."""
        if self.count < 2:
            raise ValueError(f"FID statistics need at least 2 images, got {self.count}; use a "
                             f"larger split in --config.eval.reference_split.")
        mu = self.total / self.count
        sigma = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return mu, (sigma + sigma.T) / 2.0


def gather_exact(array: np.ndarray) -> np.ndarray:
    """[process_count, ...] stack of every process's array, bit-exact.

    process_allgather goes through JAX arrays, which turns float64 into float32 unless x64 is on;
    sending the raw bytes keeps the float64 sums exact.
    """
    array = np.ascontiguousarray(array)
    raw = array.reshape(-1).view(np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(raw, tiled=False))
    return gathered.reshape(-1, raw.size).view(array.dtype).reshape(-1, *array.shape)


def _kid_selection(num_images: int) -> np.ndarray:
    rng = np.random.default_rng(_KID_SUBSET_SEED)
    size = min(num_images, KID_REFERENCE_SIZE)
    return np.sort(rng.choice(num_images, size, replace=False))


def _gather_kid_rows(rows: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Every process's KID rows, padded to a common length for the gather, in global order."""
    if jax.process_count() == 1:
        return rows[np.argsort(indices)]
    longest = int(gather_exact(np.asarray([len(indices)], np.int64)).max())
    padded_rows = np.zeros((longest, FEATURE_DIM), np.float32)
    padded_rows[:len(rows)] = rows
    padded_indices = np.full(longest, -1, np.int64)
    padded_indices[:len(indices)] = indices
    all_rows = gather_exact(padded_rows).reshape(-1, FEATURE_DIM)
    all_indices = gather_exact(padded_indices).reshape(-1)
    keep = all_indices >= 0
    order = np.argsort(all_indices[keep])
    return all_rows[keep][order]


def compute_reference_statistics(config, inception_params: dict
                                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(mu, sigma, kid_features, num_images) of eval.reference_split, over all processes."""
    split, limit = parse_reference_split(config.eval.reference_split)
    total = len(data_lib.data_source(config.data, split))
    num_images = min(total, limit) if limit else total
    kid_indices = _kid_selection(num_images)
    process, count = jax.process_index(), jax.process_count()
    batch_size = int(config.eval.inception_batch_size)
    mesh = local_inception_mesh()

    sums = MomentSums()
    kid_rows, kid_global = [], []
    position = 0  # index of this process's next record within its own share
    progress = tqdm(total=num_images, desc=f"Inception features of {split}", unit="img",
                    disable=process != 0)
    for batch in data_lib.iterate_split(config.data, split, batch_size, process_index=process,
                                        process_count=count):
        # iterate_split gives this process the records process, process + count, ...
        global_index = process + count * (position + np.arange(len(batch["image"])))
        position += len(batch["image"])
        inside = global_index < num_images
        if not inside.any():
            break
        features = inception_features(batch["image"][inside], inception_params,
                                      batch_size=batch_size, mesh=mesh)
        sums.update(features)
        selected = np.isin(global_index[inside], kid_indices)
        kid_rows.append(features[selected])
        kid_global.append(global_index[inside][selected])
        progress.update(int(inside.sum()) * count)
    progress.close()

    sums.add_across_processes()
    mu, sigma = sums.mean_and_covariance()
    rows = np.concatenate(kid_rows) if kid_rows else np.zeros((0, FEATURE_DIM), np.float32)
    indices = np.concatenate(kid_global) if kid_global else np.zeros(0, np.int64)
    return mu, sigma, _gather_kid_rows(rows, indices), sums.count


def _save_atomically(path: str, **arrays) -> None:
    # A job killed mid-write must not leave a truncated file that later runs would trust.
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    fs.write_atomic(path, buffer.getvalue())


def load_reference(path: str) -> ReferenceStatistics:
    with np.load(io.BytesIO(fs.read_bytes(path))) as stored:
        if "mu" not in stored or "sigma" not in stored:
            raise ValueError(f"{path} has no 'mu' and 'sigma'; delete it and rerun "
                             f"--mode=fid_stats.")
        kid = stored["kid_features"].astype(np.float32) if "kid_features" in stored else None
        num = int(stored["num_images"]) if "num_images" in stored else -1
        return ReferenceStatistics(path, stored["mu"].astype(np.float64),
                                   stored["sigma"].astype(np.float64), kid, num)


def _agree(value: int) -> int:
    """Process 0's value on every process, so all of them take the same branch."""
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def reference_statistics(config, inception_params: dict | None = None
                         ) -> ReferenceStatistics | None:
    """Loads the cached statistics, computing and saving them first when missing.

    Every process must call this (the computation is shared); process 0 gets the statistics,
    the others None.
    """
    is_chief = jax.process_index() == 0
    if config.eval.get("reference_stats"):
        path = config.eval.reference_stats
        if not fs.exists(path):
            raise FileNotFoundError(f"eval.reference_stats={path!r} does not exist; point it at "
                                    f"an .npz with mu and sigma, or set it to '' to compute the "
                                    f"statistics of eval.reference_split.")
        return load_reference(path) if is_chief else None
    params = inception_params if inception_params is not None else load_inception_params()
    path = stats_path(config, inception_fingerprint(params))
    if _agree(int(fs.is_file(path)) if is_chief else 0):
        logging.info("Reusing FID reference statistics %s.", path)
        return load_reference(path) if is_chief else None

    if is_chief:  # before the Inception pass over the data: an unwritable cache fails now
        workdir_lib.check_writable(stats_dir(config), "the FID statistics folder",
                                   "set --config.eval.stats_dir to a folder you can write to "
                                   "(the statistics are computed once and reused)")
    logging.info("Computing FID reference statistics of %s/%s into %s.",
                 config.data.dataset, config.eval.reference_split, path)
    mu, sigma, kid_features, num_images = compute_reference_statistics(config, params)
    if not is_chief:
        return None
    _save_atomically(path, mu=mu, sigma=sigma, kid_features=kid_features,
                     num_images=np.int64(num_images))
    return ReferenceStatistics(path, mu, sigma, kid_features, num_images)


def fid_stats(config, workdir: str) -> dict:
    """`--mode=fid_stats`: builds (or finds) the reference statistics and prints their path.

    `workdir` is unused: the statistics depend on the data and the weights, not on a run.
    """
    del workdir
    reference = reference_statistics(config)
    if reference is None:
        return {}
    print(f"FID reference statistics ({reference.num_images} images of "
          f"{config.data.dataset}/{config.eval.reference_split}, "
          f"mu {reference.mu.shape}, sigma {reference.sigma.shape}): {reference.path}", flush=True)
    return {"path": reference.path, "num_images": reference.num_images,
            "dataset": config.data.dataset, "split": config.eval.reference_split}
