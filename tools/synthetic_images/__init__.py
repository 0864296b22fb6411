"""Synthetic CIFAR-10-like and latent datasets for loader benchmarks (tools/make_benchmark_datasets.py)."""

from synthetic_images.synthetic_images_dataset_builder import Builder

__all__ = ["Builder"]
