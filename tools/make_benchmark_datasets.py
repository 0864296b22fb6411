"""Prepares the synthetic benchmark datasets (tools/synthetic_images/) as TFDS ArrayRecord.

    .venv/bin/python tools/make_benchmark_datasets.py --data_dir=/tmp/diffjax_bench_data
    # -> /tmp/diffjax_bench_data/synthetic_images/{rgb32,rgb64,latent32}/1.0.0/
    #    (about 40 s and 60 MB on 2 cores)

diffjax then reads them by name like any prepared TFDS dataset (TFDS opens prepared data without
the builder code): --config.data.dataset=synthetic_images/rgb32 --config.data.data_dir=DIR
--config.data.image_size=32 --config.data.num_channels=3. benchmarks/input_pipeline.py uses them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

TOOLS = os.path.dirname(os.path.abspath(__file__))
CONFIGS = ("rgb32", "rgb64", "latent32")


def prepare(data_dir: str, configs=CONFIGS) -> dict[str, str]:
    """Builds every config that is not prepared yet; {config: dataset directory}."""
    sys.path.insert(0, TOOLS)
    from synthetic_images import Builder

    paths = {}
    for name in configs:
        builder = Builder(config=name, data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            builder.download_and_prepare()
        paths[name] = builder.data_dir
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(),
                                                           "diffjax_bench_data"))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name, path in prepare(args.data_dir, args.configs.split(",")).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
