"""The first-stage objective of latent diffusion (Rombach et al., 2022), without its GAN parts.

Per example,

    loss = sum_pixels rec(x, D(z)) + kl_weight * KL(q(z | x) || N(0, I)),

rec = |x - x_hat| ("l1", LDM) or (x - x_hat)^2 ("l2"), summed over pixels and channels, z a
posterior sample (`autoencoder.sample_posterior`, LDM's training setting) or the mean, the KL
summed over latent dimensions (LDM's `DiagonalGaussianDistribution.kl`). LDM divides both sums
by the batch size, i.e. takes the batch mean of these per-example values.

Not included (they may come later): LDM's LPIPS perceptual term, its patch discriminator
(adversarial loss with adaptive weight, started after `disc_start` steps) and its learned scalar
log-variance on the reconstruction term (initialised at 0, where this objective keeps it). A first
stage trained with this loss alone reconstructs blurrier than the SD-VAE; for small images
(digits, CIFAR-10) the difference is small.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.latents import posterior

RECONSTRUCTION_LOSSES = {
    "l1": lambda error: jnp.abs(error),
    "l2": lambda error: jnp.square(error),
}


def reconstruction_error(images: jax.Array, reconstructions: jax.Array, kind: str) -> jax.Array:
    """Per-example sum over pixels of |x - x_hat| or (x - x_hat)^2."""
    try:
        loss_fn = RECONSTRUCTION_LOSSES[kind]
    except KeyError:
        raise ValueError(f"autoencoder.reconstruction_loss={kind!r}; choose one of "
                         f"{sorted(RECONSTRUCTION_LOSSES)}.") from None
    error = reconstructions.astype(jnp.float32) - images.astype(jnp.float32)
    return jnp.sum(loss_fn(error).reshape(images.shape[0], -1), axis=-1)


def autoencoder_loss(params: Any, module: nn.Module, images: jax.Array, rng: jax.Array,
                     config) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(per-example loss [B], per-example metrics) of `module` on float images in [-1, 1].

    `config` is the full config (`config.autoencoder` is read). Metrics: `reconstruction` (the
    summed error), `kl`, `mse` (mean squared error per pixel of the reconstruction) and
    `posterior_std` (mean posterior standard deviation), each [B]. Pure and jittable; `rng`
    draws the posterior sample.
    """
    a = config.autoencoder
    reconstructions, mean, logvar = module.apply(
        {"params": params}, images, sample_posterior=bool(a.sample_posterior), rng=rng)
    rec = reconstruction_error(images, reconstructions, a.reconstruction_loss)
    kl = posterior.kl_to_standard_normal(mean, logvar)
    batch = images.shape[0]
    error = (reconstructions - images.astype(jnp.float32)).reshape(batch, -1)
    metrics = {
        "reconstruction": rec,
        "kl": kl,
        "mse": jnp.mean(jnp.square(error), axis=-1),
        "posterior_std": jnp.mean(posterior.std_from_logvar(logvar).reshape(batch, -1), -1),
    }
    return rec + float(a.kl_weight) * kl, metrics


def reconstruct(params: Any, module: nn.Module, images: jax.Array) -> jax.Array:
    """Reconstructions through the posterior mean (for TensorBoard grids and evaluation)."""
    reconstructions, _, _ = module.apply({"params": params}, images, sample_posterior=False)
    return reconstructions
