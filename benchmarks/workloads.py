"""The diffjax side of the CPU comparisons: each workload compiled once, then timed.

Every benchmark script runs each measurement in a fresh subprocess (benchmarks/interleaved.py), so
XLA flags, thread pools and peak memory belong to that one measurement:
`python benchmarks/workloads.py WORKLOAD [SCALE]` prints one line `RESULT {json}`: rates (from the
median call, wall clock and process CPU time), peak RSS (of the whole process, and of the run
alone: the kernel's counter is reset after compilation, `run_peak_rss_mb`), compile seconds,
parameter count, and a checksum of the outputs (to see that flag sets compute the same thing).

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
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
BATCH = 32
EM_STEPS = 100


def small_ddpmpp_config():
    """score_sde's DDPM++ cont. (VP) layout at nf=32 on 32x32x3, batch 32, through config keys."""
    from diffjax.config.schema import base_config

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
    from diffjax.config.schema import base_config

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


_SETUP_PEAK: list[float] = []  # peaks before each reset (compilation, model set-up)


def _release_free_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def reset_peak_rss() -> None:
    """Restarts the kernel's peak-RSS counter (VmHWM), so the run's peak excludes compilation.
    The heap that compilation freed is first handed back to the OS (glibc keeps it otherwise,
    ~0.9 GB for the DDPM++ step, and the run's peak would count it)."""
    _SETUP_PEAK.append(run_peak_rss_mb() or 0.0)
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def run_peak_rss_mb() -> float | None:
    """Peak RSS since the last `reset_peak_rss` (VmHWM), in MB."""
    try:
        with open("/proc/self/status") as f:
            line = next(l for l in f if l.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024.0
    except (OSError, StopIteration):
        return None


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
        if len(ordered) % 2:
            return ordered[middle]
        return 0.5 * (ordered[middle - 1] + ordered[middle])

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


class Prepared:
    """A compiled workload: `call()` runs one timed unit (blocking) and returns its output."""

    def __init__(self, call, *, per_call: int, unit: str, compiled=None, checksum=None, **info):
        self.call, self.per_call, self.unit, self.compiled = call, per_call, unit, compiled
        self.checksum = checksum or _checksum
        self.info = info

    def measure(self, count: int, warmup: int) -> dict:
        reset_peak_rss()
        for _ in range(warmup):
            self.call()
        times, cpu_times, out = timed(self.call, count)
        return dict(rate_from(times, cpu_times, per_call=self.per_call), unit=self.unit,
                    checksum=self.checksum(out), run_peak_rss_mb=run_peak_rss_mb(), **self.info)


def prepare_train_step(config) -> Prepared:
    """The loop's compiled train step (donated state) on one fixed batch; unit: steps."""
    import jax

    from diffjax.experiment import build_experiment, example_input
    from diffjax.parallel.sharding import batch_sharding, replicated
    from diffjax.state.train_state import count_params, create_state
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
    holder = {"state": state}

    def call():
        holder["state"], metrics = jax.block_until_ready(compiled(holder["state"], batch))
        return metrics

    return Prepared(call, per_call=1, unit="steps/s", compiled=compiled, compile_s=compile_s,
                    params=count_params(state.params))


def prepare_em_sampler(config) -> Prepared:
    """Euler-Maruyama (config.sampling), random-initialised network; unit: images."""
    import jax

    from diffjax import sampling
    from diffjax.experiment import build_experiment, example_input, score_fn_for
    from diffjax.state.train_state import count_params, create_state

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
    nfe = []

    def call():
        result = jax.block_until_ready(compiled(state.ema_params, rng))
        nfe.append(int(result.nfe))
        return result.samples

    return Prepared(call, per_call=shape[0], unit="images/s", compiled=compiled,
                    compile_s=compile_s, params=count_params(state.params),
                    nfe=config.sampling.num_steps)


def prepare_inception(image_size: int = 32) -> Prepared:
    """FID Inception features of uint8 images (the 299x299 resize included); unit: images."""
    import numpy as np

    from diffjax.evaluation import inception
    from diffjax.evaluation.inception_weights import load_inception_params

    params = load_inception_params()
    images = np.random.default_rng(0).integers(0, 256, (BATCH, image_size, image_size, 3),
                                               dtype=np.uint8)
    start = time.perf_counter()
    inception.inception_features(images, params, batch_size=BATCH)  # compiles
    compile_s = time.perf_counter() - start
    compiled = inception._network_forward.lower(  # for the profile's op names
        params.get("params", params), inception._preprocess_batch(images), False).compile()

    def call():
        return inception.inception_features(images, params, batch_size=BATCH)

    return Prepared(call, per_call=BATCH, unit="images/s", compiled=compiled, compile_s=compile_s,
                    checksum=lambda f: float(np.abs(np.asarray(f, np.float64)).sum()))


def prepare(name: str) -> Prepared:
    if name in ("ddpmpp_train", "dit_train"):
        return prepare_train_step(small_ddpmpp_config() if name == "ddpmpp_train"
                                  else dit_s2_config())
    if name == "em_sample":
        return prepare_em_sampler(small_ddpmpp_config())
    if name == "inception":
        return prepare_inception()
    raise ValueError(f"unknown workload {name!r}; one of {sorted(WORKLOADS)}")


# (timed calls, warm-up calls) per unit of --scale.
COUNTS = {"ddpmpp_train": (5, 2), "em_sample": (1, 0), "inception": (2, 1), "dit_train": (3, 1)}


def run_workload(name: str, scale: int = 1) -> dict:
    """One workload in this process; `scale` multiplies the timed amount of work."""
    count, warmup = COUNTS[name]
    result = prepare(name).measure(count * scale, warmup)
    from jaxlib import version

    result.update(peak_rss_mb=max(_SETUP_PEAK + [run_peak_rss_mb() or 0.0]),
                  setup_peak_rss_mb=max(_SETUP_PEAK), cores=len(os.sched_getaffinity(0)),
                  jaxlib=version.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""))
    return result


WORKLOADS = ("ddpmpp_train", "em_sample", "inception", "dit_train")


def worker_main() -> None:
    """`python benchmarks/workloads.py WORKLOAD [SCALE]`: one measurement, one RESULT line."""
    name, scale = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
    from diffjax.runtime import logs, xla
    xla.configure_xla_flags()
    logs.quiet_library_logs()
    xla.enable_compilation_cache()
    print("RESULT", json.dumps(run_workload(name, scale)), flush=True)


if __name__ == "__main__":
    worker_main()
