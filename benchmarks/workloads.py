"""The diffjax side of the CPU comparisons: each workload compiled once, then timed.

Every benchmark script runs each measurement in a fresh subprocess (benchmarks/interleaved.py), so
XLA flags, thread pools and peak memory belong to that one measurement:
`python benchmarks/workloads.py WORKLOAD [SCALE]` prints one line `RESULT {json}`: rates (from the
median call, wall clock and process CPU time), peak RSS, compile seconds, parameter count, and a
checksum of the outputs (to see that flag sets compute the same thing).

Workloads (sizes match tools/torch_reference_bench.py):
  ddpmpp_train  DDPM++ cont. (score_sde's cifar10_ddpmpp_continuous) with nf=32, 32x32x3,
                batch 32: the compiled train step (loss, Adam, EMA) on a fixed batch; steps/s
  em_sample     Euler-Maruyama, 100 steps (100 network evaluations, no extra denoising call),
                the same network, batch 32; images/s
  inception     FID Inception pool3 features of 32x32x3 uint8 images (resize to 299 included),
                batch 32; images/s
  dit_train     DiT-S/2 on 32x32x4 inputs, batch 32, AdamW, EMA; steps/s
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
BATCH = 32
EM_STEPS = 100


def small_ddpmpp_config():
    """score_sde's DDPM++ cont. (VP) layout at nf=32 on 32x32x3, batch 32, through config keys."""
    from diffjax.config_base import base_config

    config = base_config()
    config.data.image_size, config.data.num_channels = 32, 3
    config.data.random_flip = True
    config.model.name = "unet"
    config.model.unet.nf = 32  # everything else: the paper's ch_mult, 4 blocks, attention at 16
    config.model.dropout = 0.1
    config.training.batch_size = BATCH
    config.training.reduce_mean = True
    config.sampling.method = "euler_maruyama"
    config.sampling.num_steps = EM_STEPS
    config.sampling.denoise = False  # score_sde's EM: 100 evaluations, returns the last mean
    config.sampling.eps = 1e-3
    config.mesh.data = 1
    return config


def dit_s2_config():
    """DiT-S/2 at the paper's latent shape (32x32x4), class-conditional, batch 32."""
    from diffjax.config_base import base_config

    config = base_config()
    config.data.image_size, config.data.num_channels = 32, 4
    config.data.num_classes = 10
    config.model.name = "dit"
    config.model.conditional = True
    config.model.dit.size = "S"
    config.model.dit.patch_size = 2
    config.training.batch_size = BATCH
    config.training.reduce_mean = True
    config.optim.optimizer = "adamw"
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 0
    config.mesh.data = 1
    return config


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _checksum(tree) -> float:
    import jax
    import numpy as np

    return float(sum(np.abs(np.asarray(leaf, np.float64)).sum() for leaf in jax.tree.leaves(tree)
                     if np.issubdtype(np.asarray(leaf).dtype, np.floating)))


def rate_from(times: list[float], cpu_times: list[float], per_call: int = 1) -> dict:
    """Rates from the median call time (robust to a neighbour's burst on a shared machine).

    `rate` is from wall-clock time; `cpu_rate` from this process's CPU time (all its threads),
    which other jobs on the machine do not inflate: with one thread it is the speed of one core.
    """
    def median(values):
        ordered = sorted(values)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])

    return dict(rate=per_call / median(times), best_rate=per_call / min(times),
                cpu_rate=per_call / median(cpu_times), calls=len(times))


def timed(call, count: int) -> tuple[list[float], list[float], object]:
    """(wall seconds, process CPU seconds, last output) of `count` calls of `call()`."""
    times, cpu_times, out = [], [], None
    for _ in range(count):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = call()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times, out


def _random_batch(config, seed: int = 0) -> dict:
    import numpy as np

    d, rng = config.data, np.random.default_rng(seed)
    shape = (config.training.batch_size, d.image_size, d.image_size, d.num_channels)
    return {"image": rng.integers(0, 256, shape, dtype=np.uint8),
            "label": rng.integers(0, d.num_classes, shape[:1], dtype=np.int32)}


def train_step_workload(config, steps: int, warmup: int) -> dict:
    """The loop's compiled train step on one fixed batch: steps/s after `warmup` steps."""
    import jax

    from diffjax.experiment import build_experiment, example_input
    from diffjax.parallel.sharding import batch_sharding, replicated
    from diffjax.train_state import count_params, create_state
    from diffjax.training.step import make_train_step

    experiment = build_experiment(config)
    state = create_state(experiment.model, experiment.optimizer, example_input(config),
                         config.seed, experiment.spec)
    batch = jax.device_put(_random_batch(config), batch_sharding(experiment.mesh))
    step = jax.jit(make_train_step(config, experiment.model, experiment.sde, experiment.optimizer),
                   in_shardings=(experiment.spec.shardings, batch_sharding(experiment.mesh)),
                   out_shardings=(experiment.spec.shardings, replicated(experiment.mesh)),
                   donate_argnums=(0,))
    start = time.perf_counter()
    with experiment.activate():
        compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    num_params = count_params(state.params)
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    holder = {"state": state}

    def step():
        holder["state"], metrics = jax.block_until_ready(compiled(holder["state"], batch))
        return metrics

    times, cpu_times, metrics = timed(step, steps)
    return dict(rate_from(times, cpu_times), unit="steps/s", compile_s=compile_s, params=num_params,
                checksum=_checksum(metrics))


def em_sample_workload(config, repeats: int, warmup: int = 0) -> dict:
    """Euler-Maruyama, 100 steps, batch 32, random-initialised network: images/s."""
    import jax

    from diffjax.experiment import build_experiment, example_input, score_fn_for
    from diffjax import sampling
    from diffjax.train_state import count_params, create_state

    experiment = build_experiment(config)
    state = create_state(experiment.model, experiment.optimizer, example_input(config),
                         config.seed, experiment.spec)
    d = config.data
    shape = (config.training.batch_size, d.image_size, d.image_size, d.num_channels)

    def generate(params, rng):
        score_fn = score_fn_for(config, experiment.model, experiment.sde, params)
        return sampling.sample(config.sampling, rng, score_fn, experiment.sde, shape)

    rng = jax.random.key(0)
    start = time.perf_counter()
    with experiment.activate():
        compiled = jax.jit(generate).lower(state.ema_params, rng).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        result = jax.block_until_ready(compiled(state.ema_params, rng))
    times, cpu_times, result = timed(
        lambda: jax.block_until_ready(compiled(state.ema_params, rng)), repeats)
    return dict(rate_from(times, cpu_times, per_call=shape[0]), unit="images/s", compile_s=compile_s,
                nfe=int(result.nfe), params=count_params(state.params),
                checksum=_checksum(result.samples))


def inception_workload(batches: int, warmup: int = 1, image_size: int = 32) -> dict:
    """FID Inception features of 32x32x3 uint8 images (the 299x299 resize included): images/s."""
    import numpy as np

    from diffjax.evaluation.inception import inception_features
    from diffjax.evaluation.inception_weights import load_inception_params

    params = load_inception_params()
    images = np.random.default_rng(0).integers(
        0, 256, (BATCH * batches, image_size, image_size, 3), dtype=np.uint8)
    start = time.perf_counter()
    inception_features(images[:BATCH * warmup], params, batch_size=BATCH)
    compile_s = time.perf_counter() - start
    batches = iter(range(0, images.shape[0], BATCH))
    sums = []

    def features_of_next_batch():
        begin = next(batches)
        features = inception_features(images[begin:begin + BATCH], params, batch_size=BATCH)
        sums.append(float(np.abs(features.astype(np.float64)).sum()))

    times, cpu_times, _ = timed(features_of_next_batch, images.shape[0] // BATCH)
    return dict(rate_from(times, cpu_times, per_call=BATCH), unit="images/s", compile_s=compile_s,
                checksum=sum(sums))


def run_workload(name: str, scale: int = 1) -> dict:
    """One workload in this process; `scale` multiplies the timed amount of work."""
    if name == "ddpmpp_train":
        result = train_step_workload(small_ddpmpp_config(), steps=5 * scale, warmup=2)
    elif name == "em_sample":
        result = em_sample_workload(small_ddpmpp_config(), repeats=scale)
    elif name == "inception":
        result = inception_workload(batches=2 * scale)
    elif name == "dit_train":
        result = train_step_workload(dit_s2_config(), steps=3 * scale, warmup=1)
    else:
        raise ValueError(f"unknown workload {name!r}; one of {sorted(WORKLOADS)}")
    from jaxlib import version

    result.update(peak_rss_mb=_peak_rss_mb(), cores=len(os.sched_getaffinity(0)),
                  jaxlib=version.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""))
    return result


WORKLOADS = ("ddpmpp_train", "em_sample", "inception", "dit_train")


def worker_main() -> None:
    """`python benchmarks/workloads.py WORKLOAD [SCALE]`: one measurement, one RESULT line."""
    name, scale = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
    from diffjax import runtime

    runtime.configure_xla_flags()
    runtime.quiet_library_logs()
    runtime.enable_compilation_cache()
    print("RESULT", json.dumps(run_workload(name, scale)), flush=True)


if __name__ == "__main__":
    worker_main()
