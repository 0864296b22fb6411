"""What the array digests of every checkpoint cost (diffjax/storage/digests.py).

A state of `--params` float32 parameters with its EMA and Adam's two moments (4 copies; by
default 100M parameters, 1.6 GB, 717 arrays shaped like a U-Net's: 3x3x256x256 kernels, biases,
two large dense layers) is digested alone, then saved and restored through diffjax's Checkpointer
into a temporary folder, alternately with and without digests. Prints wall and CPU seconds.

    .venv/bin/python benchmarks/checkpoint_digests.py               # ~3 min on 2 cores, 6 GB
    .venv/bin/python benchmarks/checkpoint_digests.py --params=10_000_000
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from diffjax.state.train_state import ShardedStateSpec  # noqa: E402
from diffjax.storage import checkpoints, digests  # noqa: E402


def state_of(num_params: int) -> dict:
    kernel, dense = (3, 3, 256, 256), (4096, 1000)
    rest = num_params - 200 * 1024 - 2 * int(np.prod(dense))
    shapes = [kernel] * max(1, rest // int(np.prod(kernel))) + [(1024,)] * 200 + [dense] * 2
    key = jax.random.key(0)

    def copy(seed):
        return {f"w{i}": jax.random.normal(jax.random.fold_in(key, seed * 10_000 + i), shape)
                for i, shape in enumerate(shapes)}
    return {"params": copy(1), "ema_params": copy(2), "mu": copy(3), "nu": copy(4)}


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=lambda s: int(s.replace("_", "")), default=100_000_000)
    parser.add_argument("--dir", default=None, help="where to save (default: a temporary folder)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    state = jax.block_until_ready(state_of(args.params))
    leaves = jax.tree.leaves(state)
    print(f"state: {sum(x.size for x in leaves) // 4:,} parameters x 4 copies, "
          f"{sum(x.nbytes for x in leaves) / 2**30:.2f} GiB, {len(leaves)} arrays")
    names = checkpoints.leaf_names(state)
    first = timed(lambda: digests.record(names, state))
    again = min(timed(lambda: digests.record(names, state)) for _ in range(3))
    print(f"digests alone: first call (with compilation) {first[0]:.2f}s wall; then "
          f"{again[0]:.2f}s wall, {again[1]:.2f}s CPU")

    folder = args.dir or tempfile.mkdtemp(prefix="diffjax-digests-")
    spec = ShardedStateSpec(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                     state), jax.tree.map(lambda x: x.sharding, state))
    checkpointer = checkpoints.Checkpointer(folder, max_to_keep=None, async_save=False)
    record = digests.record
    try:
        for step, with_digests in ((1, True), (2, False), (3, True), (4, False)):
            if not with_digests:  # a record of no known format: saved, never compared
                digests.record = lambda names, tree: {"format": "none"}
            wall, cpu = timed(lambda: (checkpointer.save(step, state, {}), checkpointer.wait()))
            digests.record = record
            print(f"save {'with' if with_digests else 'without'} digests: {wall:.2f}s wall, "
                  f"{cpu:.2f}s CPU")
        for step in (4, 3, 4, 3):
            wall, cpu = timed(lambda: jax.block_until_ready(checkpointer.restore(spec, step)))
            print(f"restore {'with' if step == 3 else 'without'} verification: {wall:.2f}s wall, "
                  f"{cpu:.2f}s CPU")
    finally:
        checkpointer.close()
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
