"""DiT-S/2 training step, diffjax vs facebookresearch/DiT, interleaved on the same cores.

DiT-S/2 on 32x32x4 inputs (the paper's latent shape), 10 classes, batch 32: diffjax's compiled
train step (DSM loss, AdamW, EMA) against DiT's train.py step (create_diffusion("")
.training_losses, AdamW 1e-4, update_ema; DiT's model keeps its learned-sigma output half, as in
the paper). Prints steps/s, peak RSS and the ratios.

    .venv/bin/python benchmarks/vs_dit_train.py                       # ~10 min on 2 cores
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import interleaved  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    interleaved.standard_arguments(parser)
    parser.add_argument("--dit", default="/tmp/ref/DiT")
    args = parser.parse_args()
    print(interleaved.machine_line(), file=sys.stderr)
    results = interleaved.interleave({
        "diffjax": interleaved.diffjax_worker("dit_train", args.scale, cores=args.cores),
        "facebookresearch/DiT": interleaved.torch_worker(
            "dit_train", args.scale, cores=args.cores, extra=(f"--dit={args.dit}",)),
    }, args.repeats)
    print("\n".join(interleaved.comparison_table(
        "DiT-S/2 (32x32x4, batch 32) train step", results, "facebookresearch/DiT")))


if __name__ == "__main__":
    main()
