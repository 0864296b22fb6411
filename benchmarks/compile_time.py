"""Time to first step on this host: the train step's compile time, cold and from the cache.

Each config is compiled by `--mode=compile --config.compile.topology=cpu` (the function the
training loop runs, for this host's devices) in a fresh process, twice, with one persistent
cache folder that starts empty (DIFFJAX_COMPILATION_CACHE): the first run compiles (cold), the
second must find the program in the cache (warm). The table shows XLA's compile time as the mode
measures it (lower().compile()), the whole process's wall time, and the cache's entries after each
run (a warm run that adds none hit the cache). With --check_loop, a 1-step training run of the
first config follows in the same cache: when it adds no train-step entry, the loop found the
program the compile mode stored, i.e. both compile the same program.

    .venv/bin/python benchmarks/compile_time.py                 # digits, CIFAR-10 deep, DiT-XL/2
    .venv/bin/python benchmarks/compile_time.py --configs=configs/digits.py --check_loop
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("configs/digits.py", "configs/cifar10_ddpmpp_vp.py:deep",
           "configs/imagenet256_dit.py:XL")


def entries(cache: str, prefix: str = "") -> int:
    return sum(1 for _, _, files in os.walk(cache) for f in files if f.startswith(prefix))


def compile_once(config: str, workdir: str, cache: str) -> dict:
    env = {**os.environ, "DIFFJAX_COMPILATION_CACHE": cache, "JAX_PLATFORMS": "cpu"}
    start = time.perf_counter()
    # No memory verdict here (a large batch need not fit this host to time its compile).
    result = subprocess.run(
        [sys.executable, "-m", "diffjax.main", "--mode=compile", f"--config={config}",
         f"--workdir={workdir}", "--config.compile.topology=cpu",
         "--config.compile.memory_per_chip_gib=1e9"],
        cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{config}: {result.stderr[-2000:]}")
    with open(os.path.join(workdir, "compile", "cpu_train.json")) as f:
        report = json.load(f)
    return {"compile": report["compile_seconds"], "wall": wall, "entries": entries(cache)}


def loop_compile(config: str, workdir: str, cache: str) -> float:
    env = {**os.environ, "DIFFJAX_COMPILATION_CACHE": cache, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "diffjax.main", f"--config={config}", f"--workdir={workdir}",
         "--config.training.num_train_steps=1", "--config.training.sample_every_steps=1000",
         "--config.training.checkpoint_every_steps=1000"],
        cwd=REPO, capture_output=True, text=True, env=env)
    match = re.search(r"Compiled the train step in ([\d.]+)s", result.stderr)
    if not match:
        raise RuntimeError(f"training run: {result.stderr[-2000:]}")
    return float(match.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--check_loop", action="store_true")
    args = parser.parse_args()
    lines = ["| config | cold compile | cold process | warm compile | warm process | "
             "cache entries after cold / warm |", "|---|---:|---:|---:|---:|---|"]
    loop_line = ""
    with tempfile.TemporaryDirectory() as scratch:
        for index, config in enumerate(args.configs.split(",")):
            cache = os.path.join(scratch, f"cache{index}")
            os.makedirs(cache)
            workdir = os.path.join(scratch, f"w{index}")
            cold = compile_once(config, workdir, cache)
            warm = compile_once(config, workdir, cache)
            lines.append(f"| `{config}` | {cold['compile']:.1f} s | {cold['wall']:.1f} s | "
                         f"{warm['compile']:.1f} s | {warm['wall']:.1f} s | "
                         f"{cold['entries']} / {warm['entries']} |")
            print(lines[-1], file=sys.stderr, flush=True)
            if args.check_loop and index == 0:
                before = entries(cache, "jit_train_step")
                seconds = loop_compile(config, os.path.join(scratch, "train"), cache)
                loop_line = (
                    f"Training `{config}` for 1 step in the same cache: the loop's lower+compile "
                    f"of its step took {seconds:.1f} s (the mode's cold compile "
                    f"{cold['compile']:.1f} s); train-step entries in the cache {before} before, "
                    f"{entries(cache, 'jit_train_step')} after (unchanged: the loop found the "
                    f"program --mode=compile stored); all entries {entries(cache)}.")
    print("\n".join(lines + ([loop_line] if loop_line else [])))


if __name__ == "__main__":
    main()
