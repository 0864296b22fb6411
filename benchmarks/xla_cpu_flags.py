"""XLA:CPU flags: each workload with XLA's defaults and with candidate flags, interleaved.

The workloads of benchmarks/workloads.py (DDPM++ nf=32 train step, Euler-Maruyama 100 steps, FID
Inception features, DiT-S/2 train step), each run in a fresh process per flag set (XLA reads
XLA_FLAGS once per process). "xla defaults" runs with DIFFJAX_XLA_CPU_DEFAULTS=off and no
XLA_FLAGS; "diffjax defaults" with what diffjax.runtime.xla sets on this jaxlib. Ratios are to XLA's
defaults; the checksum column is the relative difference of the outputs' absolute sum (float32
rounding differences only). This decides diffjax.runtime.xla.XLA_CPU_DEFAULTS.

    .venv/bin/python benchmarks/xla_cpu_flags.py                                  # ~30 min
    .venv/bin/python benchmarks/xla_cpu_flags.py --workloads=inception --candidates=ynn_off
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import interleaved  # noqa: E402

CANDIDATES = {
    "ynn_off": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynn_no_conv": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "ynn_no_dot": "--xla_cpu_experimental_ynn_fusion_type=-individual_dot",
    "ynn_reduce_only": "--xla_cpu_experimental_ynn_fusion_type=reduce",
    "onednn": "--xla_cpu_use_onednn=true",
}
WORKLOADS = ("ddpmpp_train", "em_sample", "inception", "dit_train")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    interleaved.standard_arguments(parser, repeats=2)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--candidates", default="ynn_off",
                        help=f"comma-separated names from {sorted(CANDIDATES)}, or raw flags")
    args = parser.parse_args()
    print(interleaved.machine_line(), file=sys.stderr)
    off = {"DIFFJAX_XLA_CPU_DEFAULTS": "off", "XLA_FLAGS": ""}
    sys.path.insert(0, interleaved.REPO)
    os.environ.pop("DIFFJAX_XLA_CPU_DEFAULTS", None)
    from diffjax.runtime.xla import default_xla_flags  # imports jax; starts no backend

    defaults = " ".join(default_xla_flags())  # a candidate with the same flags stands for it
    tables = []
    for workload in args.workloads.split(","):
        runs = {"xla defaults": interleaved.diffjax_worker(workload, args.scale, cores=args.cores,
                                                           env=off)}
        for candidate in filter(None, args.candidates.split(",")):
            flags = CANDIDATES.get(candidate, candidate)
            runs[candidate] = interleaved.diffjax_worker(
                workload, args.scale, cores=args.cores, env={**off, "XLA_FLAGS": flags})
        if defaults not in [CANDIDATES.get(c, c) for c in args.candidates.split(",")]:
            runs["diffjax defaults"] = interleaved.diffjax_worker(
                workload, args.scale, cores=args.cores,
                env={"XLA_FLAGS": "", "DIFFJAX_XLA_CPU_DEFAULTS": "on"})
        print(f"{workload}:", file=sys.stderr, flush=True)
        results = interleaved.interleave(runs, args.repeats)
        base = results["xla defaults"][0]["checksum"]
        lines = interleaved.comparison_table(f"{workload}", results, "xla defaults")
        lines.append("Output checksum vs xla defaults: " + ", ".join(
            f"{name} {abs(runs_[0]['checksum'] - base) / max(abs(base), 1e-30):.1e}"
            for name, runs_ in results.items()) + "; flags: " + ", ".join(
            f"{name} `{runs_[0]['xla_flags']}`" for name, runs_ in results.items()))
        tables.append("\n".join(lines))
        print(tables[-1] + "\n", flush=True)


if __name__ == "__main__":
    main()
