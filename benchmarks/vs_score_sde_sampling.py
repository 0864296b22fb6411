"""Euler-Maruyama sampling (100 steps), diffjax vs score_sde_pytorch, interleaved.

The DDPM++ nf=32 network of benchmarks/vs_score_sde_train.py (random weights), batch 32, 100
network evaluations per image: diffjax's in-graph `euler_maruyama` (denoise=False, so no extra
evaluation) against score_sde's `get_pc_sampler(EulerMaruyamaPredictor, NoneCorrector)` with
VPSDE(N=100). Prints images/s, peak RSS and the ratios.

    .venv/bin/python benchmarks/vs_score_sde_sampling.py              # ~10 min on 2 cores
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
        "diffjax": interleaved.diffjax_worker("em_sample", args.scale, cores=args.cores),
        "score_sde_pytorch": interleaved.torch_worker(
            "em_sample", args.scale, cores=args.cores, extra=(f"--score_sde={args.score_sde}",)),
    }, args.repeats)
    print("\n".join(interleaved.comparison_table(
        "Euler-Maruyama, 100 steps, DDPM++ nf 32, batch 32", results, "score_sde_pytorch")))


if __name__ == "__main__":
    main()
