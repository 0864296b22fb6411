"""Cost of the few-step objectives' JVP: the bare compiled train step of digits variants.

Each variant's `objective_for` step (batch training.batch_size, default sizes) on a random state
and one fixed on-device batch; best of 3 x 10 steps after 3 warm-up steps; compile time apart.

    .venv/bin/python benchmarks/fewstep_step_cost.py vp consistency flow meanflow   # ~2.5 min
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from diffjax import config as config_lib  # noqa: E402
from diffjax.experiment import build_experiment, example_input  # noqa: E402
from diffjax.parallel.sharding import batch_sharding, replicated  # noqa: E402
from diffjax.state.train_state import create_state  # noqa: E402
from diffjax.training.objectives import objective_for  # noqa: E402
from diffjax.training.step import make_train_step  # noqa: E402


def main(variants):
    out = {}
    for variant in variants:
        config = config_lib.load("configs/digits.py" + ("" if variant == "vp" else f":{variant}"), {})
        e = build_experiment(config)
        state = create_state(e.model, e.optimizer, example_input(config), config.seed, e.spec)
        d, rng, b = config.data, np.random.default_rng(0), config.training.batch_size
        batch = jax.device_put(
            {"image": rng.integers(0, 256, (b, d.image_size, d.image_size, d.num_channels),
                                   dtype=np.uint8),
             "label": rng.integers(0, d.num_classes, (b,), dtype=np.int32)}, batch_sharding(e.mesh))
        step = jax.jit(make_train_step(config, e.model, e.sde, e.optimizer, objective_for(e)),
                       in_shardings=(e.spec.shardings, batch_sharding(e.mesh)),
                       out_shardings=(e.spec.shardings, replicated(e.mesh)), donate_argnums=(0,))
        with jax.set_mesh(e.mesh), nn.logical_axis_rules(e.rules):
            t0 = time.perf_counter()
            compiled = step.lower(state, batch).compile()
            ct = time.perf_counter() - t0
        best = 0
        for _ in range(3):
            for _ in range(3):
                state, m = compiled(state, batch)
            jax.block_until_ready(state)
            t0 = time.perf_counter()
            for _ in range(10):
                state, m = compiled(state, batch)
            jax.block_until_ready(state)
            best = max(best, 10 / (time.perf_counter() - t0))
        out[variant] = {"steps_per_s": round(best, 2), "compile_s": round(ct, 1)}
        print(variant, out[variant], flush=True)
    print("RESULT", json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
