"""The diagonal Gaussian posterior of a KL autoencoder and the latent space diffusion runs in.

The encoder's last layer gives 2C channels: the posterior mean and log-variance (clamped to
[-30, 20], as diffusers' / LDM's `DiagonalGaussianDistribution`). A latent is
z = mean + std * noise. Diffusion models see the latent in *model space*,

    z_model = (z - shift) * scale,

with `scale` / `shift` from the VAE's config.json (`scaling_factor`, `shift_factor`: 0.18215
and 0 for the SD-VAE; SD3 / Flux VAEs have a shift) so that z_model has roughly unit variance.

All functions are pure and jittable; the training step draws `noise` from its own (seed, step)
rng with `sample_model_latents`, so resuming from a checkpoint replays the same latents.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


def split_moments(moments: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[..., 2C] encoder output -> (mean, logvar), each [..., C], logvar clamped."""
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)


def std_from_logvar(logvar: jax.Array) -> jax.Array:
    return jnp.exp(0.5 * logvar)


def sample(rng: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """One posterior sample mean + std * noise (VAE space), in float32."""
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    return mean + std * jax.random.normal(rng, mean.shape, jnp.float32)


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) per example, summed over the latent dimensions.

    0.5 * sum(mean^2 + var - 1 - logvar), LDM's `DiagonalGaussianDistribution.kl()`.
    """
    terms = jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar
    return 0.5 * jnp.sum(terms.reshape(terms.shape[0], -1), axis=-1)


def to_model_space(z: jax.Array, *, scale: float, shift: float = 0.0) -> jax.Array:
    return (z - shift) * scale


def from_model_space(z_model: jax.Array, *, scale: float, shift: float = 0.0) -> jax.Array:
    return z_model / scale + shift


def sample_model_latents(rng: jax.Array, mean: jax.Array, std: jax.Array, *, scale: float,
                         shift: float = 0.0) -> jax.Array:
    """z_model = (mean + std * noise - shift) * scale, noise ~ N(0, I) from `rng` (float32).

    `mean` and `std` may be stored float16 records (a latent dataset); the arithmetic is float32.
    """
    return to_model_space(sample(rng, mean, std), scale=scale, shift=shift)
