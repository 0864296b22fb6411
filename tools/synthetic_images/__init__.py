"""Synthetic CIFAR-10-like and latent datasets for the input-pipeline benchmarks."""

from synthetic_images.synthetic_images_dataset_builder import Builder

__all__ = ["Builder"]
