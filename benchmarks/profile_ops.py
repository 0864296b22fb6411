"""Where a workload's time goes on XLA:CPU: a jax.profiler trace, summed per HLO op and category.

Runs one workload of benchmarks/workloads.py (compiled as in the comparisons), traces `--calls`
calls with per-thunk events (XLA flag --xla_cpu_enable_xprof_traceme), and joins the event names
with the compiled HLO (its op names) to print the top ops and the share of each category:
convolution (XLA's own or YNNPACK's `ynn_fusion`), dot, layout copies/transposes, reductions
(GroupNorm/LayerNorm statistics, softmax), elementwise loop fusions, other. Use it under the same
XLA_FLAGS as the measurement you explain, e.g.

    .venv/bin/python benchmarks/profile_ops.py ddpmpp_train
    DIFFJAX_XLA_CPU_DEFAULTS=off .venv/bin/python benchmarks/profile_ops.py inception
    .venv/bin/python benchmarks/profile_ops.py ddpmpp_train --dump=/tmp/hlo   # also the HLO text
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Runtime events that enclose op events (counting them would count the ops twice).
_ENCLOSING = ("ThunkExecutor", "PjitFunction", "PjRt", "CommonPjRt", "Execute", "$",
              "ParseArguments", "Handle input", "AllocateOutputBuffers", "PythonRefManager",
              "while", "call", "conditional", "end: ", "Wait for", "ThreadpoolListener")


def op_categories(hlo_text: str) -> dict[str, str]:
    """{instruction name: category} from the compiled HLO text."""
    computations: dict[str, list[str]] = collections.defaultdict(list)
    current = None
    for line in hlo_text.splitlines():
        header = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if header and "=" not in line.split("{")[0]:
            current = header.group(1)
        elif current:
            computations[current].append(line)

    def body_ops(name: str) -> set[str]:
        return {m.group(1) for l in computations.get(name, [])
                for m in [re.search(r"=\s*\S+\s+([\w\-]+)\(", l)] if m}

    categories = {}
    for lines in computations.values():
        for line in lines:
            m = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+\s+([\w\-]+)\(", line)
            if not m:
                continue
            name, opcode = m.groups()
            ops = {opcode}
            called = re.search(r"calls=%?([\w.\-]+)", line)
            if called:
                ops |= body_ops(called.group(1))
            if "__ynn_fusion" in line or "ynn" in name:
                category = "convolution (YNNPACK)" if "convolution" in ops else "YNNPACK fusion"
            elif "convolution" in ops:
                category = "convolution"
            elif "dot" in ops:
                category = "dot"
            elif ops & {"transpose", "copy"} and not ops & {"reduce", "exponential"}:
                category = "transpose/copy"
            elif "reduce" in ops or "reduce-window" in ops:
                category = "reduction"
            elif opcode in ("fusion",):
                category = "elementwise fusion"
            else:
                category = opcode
            categories[name] = category
    return categories


def category_of(name: str, categories: dict[str, str]) -> str:
    """The HLO's category of a traced op, or one from the op's name (thunks of other names)."""
    if name in categories:
        return categories[name]
    base = name.rstrip("0123456789.")
    if "ynn" in base:
        return "YNNPACK fusion"
    if base.startswith(("convolution", "conv_general_dilated")):
        return "convolution"
    if "transpose" in base or base.startswith("copy"):
        return "transpose/copy"
    if base.startswith("dot"):
        return "dot"
    if "reduce" in base:
        return "reduction"
    if base.endswith("fusion"):
        return "elementwise fusion"
    return f"other ({base})"


def trace_events(log_dir: str) -> collections.Counter:
    path = sorted(glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"),
                            recursive=True))[-1]
    with gzip.open(path) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    totals: collections.Counter = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and not event["name"].startswith(_ENCLOSING):
            totals[event["name"]] += event.get("dur", 0) / 1e3  # ms
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["ddpmpp_train", "em_sample", "inception",
                                             "dit_train"])
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--dump", default="", help="folder for the compiled HLO text")
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_enable_xprof_traceme=true").strip()
    from diffjax.runtime import logs, xla
    xla.configure_xla_flags()
    logs.quiet_library_logs()
    xla.enable_compilation_cache()
    import jax
    import workloads

    prepared = workloads.prepare(args.workload)
    prepared.call()  # warm-up
    hlo = prepared.compiled.as_text()
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
        with open(os.path.join(args.dump, f"{args.workload}.hlo.txt"), "w") as f:
            f.write(hlo)
    categories = op_categories(hlo)
    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir, create_perfetto_trace=True):
            for _ in range(args.calls):
                prepared.call()
        totals = trace_events(log_dir)
    if args.dump:
        with open(os.path.join(args.dump, f"{args.workload}.op_ms.json"), "w") as f:
            json.dump(dict(totals.most_common()), f, indent=0)
    total = sum(totals.values())
    by_category: collections.Counter = collections.Counter()
    for name, ms in totals.items():
        by_category[category_of(name, categories)] += ms
    print(f"{args.workload}: {total / args.calls:.0f} ms of op time per call "
          f"(summed over threads); XLA_FLAGS={os.environ['XLA_FLAGS']}\n")
    print("| category | share |\n|---|---:|")
    for category, ms in by_category.most_common(12):
        print(f"| {category} | {ms / total:.1%} |")
    print("\n| top op | category | ms per call | share |\n|---|---|---:|---:|")
    for name, ms in totals.most_common(args.top):
        print(f"| {name} | {category_of(name, categories)} | {ms / args.calls:.1f} | "
              f"{ms / total:.1%} |")


if __name__ == "__main__":
    main()
