"""Training throughput: the full loop against a bare jitted step, and FSDP state memory.

Part 1. The same model, batch size and mesh, timed two ways over the same number of warm steps:
  train loop  `train()` itself (data loading from the Grain iterator, global-batch assembly,
              dispatch, progress hooks, metrics) over steps N+1..2N of a 2N-step run; steps 1..N
              warm up. Its own throughput logger measures the interval (compilation, the final
              sample grid and checkpoint fall outside it);
  bare step   the compiled step called in a Python loop on a random state and one fixed batch
              already on the devices, after N warm-up steps;
and the loop's overhead = 1 - loop rate / bare rate (target: at most 2%). Each is measured
`--repeats` times, alternating, and the best rate of each is kept (the machine is shared).
FLOPs per step come from XLA's cost analysis of the compiled train step (what the compiler will
run, remat recomputation included), divided over the devices; MFU only where the device kind
has a known peak (diffjax/training/throughput.py), n/a elsewhere (CPU).

Part 2. Per-device bytes of the training state (parameters, EMA, Adam moments) for fsdp = 1, 2,
4, 8 on 8 simulated CPU devices (data = 8 / fsdp), against total / fsdp (target: within 5%).

    .venv/bin/python benchmarks/train_throughput.py --config=configs/digits.py      # ~4 min
    .venv/bin/python benchmarks/train_throughput.py --config=configs/digits.py:dit --steps=50
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def load_config(spec: str):
    """`path/to/config.py[:arg]` -> the ConfigDict its get_config(arg) returns."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("benchmark_config",
                                                         os.path.join(REPO, path))
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def loop_rate(config, steps: int) -> float:
    """Steps/s of `train()` over its warm second half (its own throughput logger)."""
    from diffjax.training.loop import train

    config = config.copy_and_resolve_references()
    t = config.training
    t.num_train_steps, t.log_every_steps = 2 * steps, steps
    t.checkpoint_every_steps = t.sample_every_steps = 10 * steps  # only the final ones, after
    t.num_sample_images = min(t.num_sample_images, 10)
    config.sampling.num_steps = min(config.sampling.num_steps, 10)
    with tempfile.TemporaryDirectory() as workdir:
        return float(train(config, workdir)["steps_per_sec"])


class BareStep:
    """The compiled train step of `config` on a random state and one fixed on-device batch."""

    def __init__(self, config):
        import flax.linen as nn
        import jax
        import numpy as np

        from diffjax.experiment import build_experiment, example_input
        from diffjax.parallel.sharding import batch_sharding, replicated
        from diffjax.state.train_state import create_state
        from diffjax.training.step import make_train_step
        from diffjax.training.throughput import compiled_flops

        experiment = build_experiment(config)
        self.mesh = experiment.mesh
        self.state = create_state(experiment.model, experiment.optimizer, example_input(config),
                                  config.seed, experiment.spec)
        d, rng = config.data, np.random.default_rng(0)
        b = config.training.batch_size
        local = {"image": rng.integers(0, 256, (b, d.image_size, d.image_size, d.num_channels),
                                       dtype=np.uint8),
                 "label": rng.integers(0, d.num_classes, (b,), dtype=np.int32)}
        self.batch = jax.device_put(local, batch_sharding(self.mesh))
        step = jax.jit(make_train_step(config, experiment.model, experiment.sde,
                                       experiment.optimizer),
                       in_shardings=(experiment.spec.shardings, batch_sharding(self.mesh)),
                       out_shardings=(experiment.spec.shardings, replicated(self.mesh)),
                       donate_argnums=(0,))
        # As in the loop: the mesh and rules are active while the network is traced, and only
        # then (train() itself must not start inside them).
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(experiment.rules):
            self.compiled = step.lower(self.state, self.batch).compile()
        self.flops = compiled_flops(self.compiled)

    def run(self, steps: int) -> None:
        import jax

        for _ in range(steps):
            self.state, metrics = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))

    def rate(self, steps: int) -> float:
        self.run(steps)  # warm-up: same count as the loop's discarded first half
        start = time.perf_counter()
        self.run(steps)
        return steps / (time.perf_counter() - start)


def throughput_table(config, steps: int, repeats: int) -> list[str]:
    import jax

    from diffjax.training.throughput import peak_tflops

    bare = BareStep(config)
    loop_rates, bare_rates = [], []
    for _ in range(repeats):
        loop_rates.append(loop_rate(config, steps))
        bare_rates.append(bare.rate(steps))
    devices = bare.mesh.size
    batch = config.training.batch_size
    peak = peak_tflops(jax.devices()[0])

    def row(name, rate):
        tflops = bare.flops * rate / devices / 1e12 if bare.flops else None
        mfu = f"{tflops / peak:.1%}" if tflops and peak else "n/a"
        tflops_text = f"{tflops:.4g}" if tflops is not None else "n/a"
        return (f"| {name:<10} | {rate:9.2f} | {rate * batch:11.1f} | {tflops_text:>14} | "
                f"{mfu:>5} |")

    best_loop, best_bare = max(loop_rates), max(bare_rates)
    flops_text = (f"{bare.flops:.4g} FLOPs/step from XLA cost analysis of the compiled step"
                  if bare.flops else "FLOPs unavailable (no XLA cost analysis on this backend)")
    return [
        f"Device: {devices} x {jax.devices()[0].device_kind} ({jax.devices()[0].platform}); "
        f"mesh {dict(bare.mesh.shape)}; batch {batch}; {steps} timed steps, best of {repeats}.",
        flops_text + ".",
        "",
        "| path       |   steps/s |  examples/s | TFLOP/s/device |   MFU |",
        "|------------|----------:|------------:|---------------:|------:|",
        row("train loop", best_loop),
        row("bare step", best_bare),
        "",
        f"Loop overhead: 1 - loop/bare = {1 - best_loop / best_bare:+.2%} (target <= 2%); "
        f"all runs: loop {', '.join(f'{r:.2f}' for r in loop_rates)}, "
        f"bare {', '.join(f'{r:.2f}' for r in bare_rates)} steps/s.",
    ]


def fsdp_memory(config_spec: str) -> dict:
    """Runs in a subprocess with 8 CPU devices: {fsdp: (total bytes, bytes on device 0)}."""
    import jax

    from diffjax.experiment import build_experiment, example_input
    from diffjax.parallel.sharding import per_device_bytes
    from diffjax.state.train_state import create_state

    report = {}
    for fsdp in (1, 2, 4, 8):
        config = load_config(config_spec)
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 8 // fsdp, fsdp, 1
        experiment = build_experiment(config)
        state = create_state(experiment.model, experiment.optimizer, example_input(config),
                             config.seed, experiment.spec)
        total = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
        report[fsdp] = (total, per_device_bytes(state))
        del state
    return report


def fsdp_table(config_spec: str) -> list[str]:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, os.path.abspath(__file__),
                             f"--config={config_spec}", "--fsdp_memory_worker"],
                            capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"FSDP memory subprocess failed:\n{result.stderr[-3000:]}")
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1]
    report = {int(k): v for k, v in json.loads(line[len("RESULT "):]).items()}
    lines = ["| fsdp | data | state bytes/device | total / fsdp | deviation |",
             "|-----:|-----:|-------------------:|-------------:|----------:|"]
    for fsdp, (total, per_device) in sorted(report.items()):
        ideal = total / fsdp
        lines.append(f"| {fsdp:4d} | {8 // fsdp:4d} | {per_device:18,d} | {ideal:12,.0f} | "
                     f"{per_device / ideal - 1:+9.3%} |")
    total = report[1][0]
    return [f"Training state: {total:,} bytes in total (params + EMA + Adam moments, float32); "
            f"8 simulated CPU devices, target deviation within 5%.", ""] + lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits.py",
                        help="config file, optionally with its argument: configs/digits.py:dit")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="alternating measurements")
    parser.add_argument("--fsdp_memory_worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from diffjax.runtime import logs, xla
    logs.quiet_library_logs()
    xla.enable_compilation_cache()
    if args.fsdp_memory_worker:
        print("RESULT", json.dumps(fsdp_memory(args.config)))
        return
    config = load_config(args.config)
    start = time.perf_counter()
    lines = [f"## Training throughput: {args.config}", ""]
    lines += throughput_table(config, args.steps, args.repeats)
    lines += ["", f"## FSDP state memory: {args.config}", ""]
    lines += fsdp_table(args.config)
    lines += ["", f"(benchmark took {time.perf_counter() - start:.0f} s)"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
