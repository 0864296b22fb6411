"""Classifier-free guidance (Ho & Salimans, 2021) as a wrapper around the network.

The guided output is out_c + w (out_c - out_null): w = 0 is plain conditional sampling. Because
the score is a linear function of the network output at fixed (x, t) for every parameterisation
in `diffjax.score`, guiding the output guides the score. The conditional and the null halves go
through the network as one batch of 2B, so guidance costs one (larger) call, not two.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.score import NetFn


def classifier_free_guidance(net: NetFn, guidance_scale: float, *, null_label: int) -> NetFn:
    def guided(x_in, noise_cond, labels):
        null = jnp.full_like(labels, null_label)
        out = net(jnp.concatenate([x_in, x_in]), jnp.concatenate([noise_cond, noise_cond]),
                  jnp.concatenate([labels, null]))
        conditional, unconditional = jnp.split(out, 2)
        return conditional + guidance_scale * (conditional - unconditional)

    return guided


def grid_labels(num_images: int, num_classes: int) -> jax.Array:
    """Labels for a sample grid with one row per class: 0,0,..,0,1,1,..,1,..."""
    per_class = max(num_images // num_classes, 1)
    return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), per_class)[:num_images]
