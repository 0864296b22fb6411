"""Interleaved measurements in fresh subprocesses, and the comparison table every script prints.

Each measurement is its own process (its XLA flags, thread pools and peak memory are its own),
pinned to the first `cores` cores; the contenders alternate (A B, then B A, ...) so that a
neighbour's load on a shared machine slows all of them alike. Rates come from the median call of
each run, and the table shows the best run of each contender and the ratio of those.

Two rates are reported: wall clock (what a user sees) and process CPU time (all threads of the
process; other jobs do not inflate it). With --cores=1 the CPU rate is the single-core speed,
the most reproducible figure on a busy machine; with more cores the wall rate is the one to quote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIFFJAX_PYTHON = sys.executable
TORCH_PYTHON = os.environ.get("TORCH_PYTHON", "toolsenv/bin/python")


def run_worker(command: list[str], *, cores: int | None = None, env: dict | None = None,
               timeout: float = 3600) -> dict:
    """Runs `command` (which prints `RESULT {json}`) on the first `cores` cores; that dict."""
    def pin():
        if cores:
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])

    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                            env={**os.environ, **(env or {})}, check=False, preexec_fn=pin)
    lines = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n"
                           f"{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def diffjax_worker(workload: str, scale: int, *, cores: int | None = None,
                   env: dict | None = None) -> Callable[[], dict]:
    command = [DIFFJAX_PYTHON, os.path.join(REPO, "benchmarks", "workloads.py"), workload,
               str(scale)]
    return lambda: run_worker(command, cores=cores, env=env)


def torch_worker(workload: str, scale: int, *, cores: int | None = None,
                 extra: tuple[str, ...] = ()) -> Callable[[], dict]:
    command = [TORCH_PYTHON, os.path.join(REPO, "tools", "torch_reference_bench.py"), workload,
               f"--scale={scale}", *extra]
    return lambda: run_worker(command, cores=cores)


def interleave(runs: dict[str, Callable[[], dict]], repeats: int) -> dict[str, list[dict]]:
    """Every run once per round, the order reversed every other round."""
    results: dict[str, list[dict]] = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(repeats):
        for name in (names if round_index % 2 == 0 else names[::-1]):
            r = runs[name]()
            results[name].append(r)
            print(f"  round {round_index + 1}/{repeats} {name}: {r['rate']:.4g} {r['unit']} "
                  f"(cpu {r['cpu_rate']:.4g}), peak {r['peak_rss_mb']:.0f} MB",
                  file=sys.stderr, flush=True)
    return results


def summary(results: list[dict]) -> dict:
    """The best run by wall rate and by CPU rate; the largest peak RSS of all runs."""
    top = dict(max(results, key=lambda r: r["rate"]))
    top["cpu_rate"] = max(r["cpu_rate"] for r in results)
    top["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
    top["run_peak_rss_mb"] = max(r.get("run_peak_rss_mb") or r["peak_rss_mb"] for r in results)
    top["wall_rates"] = [round(r["rate"], 4) for r in results]
    return top


def comparison_table(title: str, results: dict[str, list[dict]], baseline: str) -> list[str]:
    """Markdown table: each contender's rates, peak RSS and ratios to `baseline`.

    "run peak" is the peak RSS while running (the counter is reset after compilation or model
    set-up); "peak" includes compilation (XLA) or set-up.
    """
    rows = {name: summary(runs) for name, runs in results.items()}
    base = rows[baseline]
    unit = base["unit"]
    lines = [f"### {title}", "",
             f"| contender | {unit} (wall) | ratio | {unit.split('/')[0]} per CPU-s | ratio | "
             f"run peak RSS MB | ratio | peak RSS MB | params |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['rate']:.4g} | {row['rate'] / base['rate']:.2f}x | "
            f"{row['cpu_rate']:.4g} | {row['cpu_rate'] / base['cpu_rate']:.2f}x | "
            f"{row['run_peak_rss_mb']:.0f} | "
            f"{row['run_peak_rss_mb'] / base['run_peak_rss_mb']:.2f}x | "
            f"{row['peak_rss_mb']:.0f} | {row.get('params', '')} |")
    runs = "; ".join(f"{name}: {', '.join(str(r) for r in row['wall_rates'])}"
                     for name, row in rows.items())
    cores = {row.get("cores", row.get("threads")) for row in rows.values()}
    lines += ["", f"Cores per process: {', '.join(str(c) for c in sorted(cores, key=str))}; "
              f"best of {len(next(iter(results.values())))} interleaved runs; "
              f"wall rates of every run: {runs}."]
    return lines


def standard_arguments(parser, repeats: int = 3) -> None:
    parser.add_argument("--repeats", type=int, default=repeats, help="interleaved rounds")
    parser.add_argument("--scale", type=int, default=1, help="multiplies the timed work per run")
    parser.add_argument("--cores", type=int, default=None,
                        help="pin every run to this many cores (default: all)")


def machine_line() -> str:
    import platform

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    return (f"Machine: {model or platform.processor()}, {os.cpu_count()} cores, "
            f"load average {os.getloadavg()[0]:.1f} at the start.")
