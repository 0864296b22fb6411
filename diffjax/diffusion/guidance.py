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

The null condition is one mechanism for every kind of conditioning: `null` is a pytree shaped
like ONE example of the conditioning, broadcast to the batch (`null_like`). Class labels: the
null class id (a scalar; the network's table has a learned row for it). Text: {"states" [L, D],
"mask" [L], "pooled" [P]} of the null caption (the empty prompt's encoding, or zeros; see
diffjax.latents.text_cache). Caption dropout in training replaces whole examples by the same
null (`drop_to_null`), so the network learns exactly the unconditional model guidance asks for.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.diffusion.parameterization import NetFn

# The guidance scale of plain conditional sampling (no null-label evaluation).
CONDITIONAL = 1.0


def null_like(cond, null):
    """`null` (one example's conditioning) broadcast to the batch of `cond`, leaf by leaf."""
    return jax.tree.map(lambda c, n: jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape), cond,
                        null)


def drop_to_null(rng: jax.Array, cond, null, probability: float):
    """Each example's conditioning replaced by `null` with `probability` (one draw per example,
    from `rng`): caption / label dropout for classifier-free guidance."""
    leaves = jax.tree.leaves(cond)
    drop = jax.random.bernoulli(rng, probability, (leaves[0].shape[0],))

    def choose(c, n):
        keep = drop.reshape((-1,) + (1,) * (c.ndim - 1))
        return jnp.where(keep, n, c)

    return jax.tree.map(choose, cond, null_like(cond, null))


def classifier_free_guidance(net: NetFn, guidance_scale: float, *, null,
                             guided_channels: int | None = None) -> NetFn:
    """`net` guided toward its conditioning and away from `null` (see `null_like`)."""

    def guided(x_in, noise_cond, labels):
        both = jax.tree.map(lambda c, n: jnp.concatenate([c, n]), labels,
                            null_like(labels, null))
        out = net(jnp.concatenate([x_in, x_in]), jnp.concatenate([noise_cond, noise_cond]),
                  both)
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
