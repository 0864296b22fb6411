"""A network plus a learned log-variance of its loss per noise level: EDM2's uncertainty-based
loss weighting (Karras et al., 2024), which sCM uses as its adaptive weighting w_phi(t).

`WithLogVariance(net)` is called exactly like `net` (`net(x, noise_cond, labels, *, train)`);
`module.apply(variables, noise_level, method="log_variance")` gives u(noise_level), [B] -> [B],
from fixed Fourier features of the noise level and one zero-initialised Linear (EDM2's
`logvar_fourier` + `logvar_linear`; EDM2's features are cos(2 pi (f x + phi)), these are the
equivalent sin/cos pairs). The loss that learns it is L / exp(u) + u per example: minimised by
u = E[L | noise level], so each level's loss is normalised by its own expected size.

Its parameters sit beside the network's: {"net": <the network's>, "head": ...}. Only
objectives that use it build it (`training.consistency.adaptive_weighting`), so every other
config keeps its parameter count.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.embeddings import GaussianFourierEmbedding


class LogVarianceHead(nn.Module):
    channels: int = 128

    @nn.compact
    def __call__(self, noise_level: jax.Array) -> jax.Array:
        features = GaussianFourierEmbedding(self.channels, scale=1.0, name="features")(
            jnp.asarray(noise_level, jnp.float32))
        out = nn.Dense(1, param_dtype=jnp.float32,
                       kernel_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                                (None, None)),
                       bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                       name="linear")(features)
        return out[:, 0]


class WithLogVariance(nn.Module):
    net: nn.Module
    channels: int = 128

    def setup(self):
        self.head = LogVarianceHead(self.channels)

    def __call__(self, x, noise_cond, labels=None, *, train: bool = False):
        if self.is_initializing():  # create the head's parameters with the network's
            self.head(jnp.zeros((x.shape[0],), jnp.float32))
        return self.net(x, noise_cond, labels, train=train)

    def log_variance(self, noise_level: jax.Array) -> jax.Array:
        return self.head(noise_level)
