"""DDPM++ training step, diffjax vs score_sde_pytorch, interleaved on the same cores.

DDPM++ cont. (score_sde's configs/vp/cifar10_ddpmpp_continuous.py) with nf=32 on 32x32x3, batch
32: loss, backward, Adam (warm-up, clipping) and EMA, on a fixed batch (benchmarks/workloads.py,
tools/torch_reference_bench.py). Prints steps/s, peak RSS and the ratios.

    .venv/bin/python benchmarks/vs_score_sde_train.py                 # ~10 min on 2 cores
    .venv/bin/python benchmarks/vs_score_sde_train.py --cores=1       # single-core figures
Needs the score_sde_pytorch checkout and `make toolsenv` (tools/torch_reference_bench.py says how).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import interleaved  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    interleaved.standard_arguments(parser)
    parser.add_argument("--score_sde", default="/tmp/ref/score_sde_pytorch")
    args = parser.parse_args()
    print(interleaved.machine_line(), file=sys.stderr)
    results = interleaved.interleave({
        "diffjax": interleaved.diffjax_worker("ddpmpp_train", args.scale, cores=args.cores),
        "score_sde_pytorch": interleaved.torch_worker(
            "ddpmpp_train", args.scale, cores=args.cores, extra=(f"--score_sde={args.score_sde}",)),
    }, args.repeats)
    print("\n".join(interleaved.comparison_table(
        "DDPM++ (nf 32, 32x32x3, batch 32) train step", results, "score_sde_pytorch")))


if __name__ == "__main__":
    main()
