"""Classifier-free guidance (Ho & Salimans, 2021) as a wrapper around the network.

Convention (DiT, SiT, diffusers, EDM2): the guided output is
    out_null + s (out_c - out_null),
so s = 1 is plain conditional sampling, s = 0 unconditional, and s > 1 strengthens the condition.
`sampling.guidance_scale` is this s: DiT's "cfg scale 1.5" is --config.sampling.guidance_scale=1.5.
(Ho & Salimans write (1 + w) out_c - w out_null, i.e. w = s - 1.)

Because the score is an affine function of the network output at fixed (x, t) for every
parameterisation in `diffjax.diffusion.parameterization`, guiding the output guides the score. The conditional and the
null halves go through the network as one batch of 2B, so guidance costs one (larger) call, not
two; with s = 1 no null half is computed at all.

Which channels: `guided_channels` limits guidance to the first k output channels and takes the
rest from the conditional half. A network with a learned variance (DiT's learn_sigma) guides its
prediction channels only; DiT itself guides just the first 3 of its 4 latent channels (its
`forward_with_cfg`, documented in the paper's appendix), which `sampling.guidance_channels=3`
reproduces for converted DiT checkpoints.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.diffusion.parameterization import NetFn

# The guidance scale of plain conditional sampling (no null-label evaluation).
CONDITIONAL = 1.0


def classifier_free_guidance(net: NetFn, guidance_scale: float, *, null_label: int,
                             guided_channels: int | None = None) -> NetFn:
    def guided(x_in, noise_cond, labels):
        null = jnp.full_like(labels, null_label)
        out = net(jnp.concatenate([x_in, x_in]), jnp.concatenate([noise_cond, noise_cond]),
                  jnp.concatenate([labels, null]))
        conditional, unconditional = jnp.split(out, 2)
        mixed = unconditional + guidance_scale * (conditional - unconditional)
        if guided_channels is None or guided_channels >= out.shape[-1]:
            return mixed
        return jnp.concatenate([mixed[..., :guided_channels],
                                conditional[..., guided_channels:]], axis=-1)

    return guided


def grid_labels(num_images: int, num_classes: int) -> jax.Array:
    """Labels for a sample grid with one row per class: 0,0,..,0,1,1,..,1,..."""
    per_class = max(num_images // num_classes, 1)
    return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), per_class)[:num_images]
