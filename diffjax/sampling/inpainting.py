"""Inpainting by replacement (score_sde's controllable generation, Song et al., 2021, App. I.2).

Given known values `x_known` where `mask` is 1, run an unconditional reverse-SDE sampler and, after
every predictor and corrector update that leaves x at time t, overwrite the known region with a
fresh draw of its forward marginal,
    x[mask] <- alpha(t) x_known + sigma(t) z,   z ~ N(0, I) fresh each time,
so that the known coordinates always look like a noisy version of the data at the current noise
level. At the end the known region is set to x_known itself (after the optional Tweedie step).

What this does and does not guarantee. The unknown coordinates are driven by the joint score
grad log p_t(x_known_t, x_unknown_t) evaluated at a *noisy* x_known_t, not by the conditional
score grad log p_t(x_unknown_t | x_known_0). The two differ whenever known and unknown coordinates
are correlated: at noise level sigma the joint score shrinks the regression on x_known by a
factor alpha^2 Var / (alpha^2 Var + sigma^2). The final law of the unknowns is therefore close to,
but in general not exactly, p(x_unknown | x_known). Langevin corrector steps reduce the gap: at
the last times they mix towards p_eps(x_unknown | x_known_eps), which is the exact conditional as
eps -> 0. `tests/test_inpainting.py` measures this against the exact Gaussian conditional.

Only the SDE samplers support replacement here: it needs fresh noise at every step, which the
deterministic ODE samplers do not have.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.diffusion.parameterization import ScoreFn
from diffjax.diffusion.processes import LinearProcess as LinearSDE, broadcast_to_data
from diffjax.sampling.result import SampleResult, finish
from diffjax.sampling.sde_solvers import reverse_sde_loop
from diffjax.sampling.time_grids import resolve_eps

Array = jax.Array

# method -> (predictor, whether the Langevin corrector runs)
INPAINT_METHODS: dict[str, tuple[str, bool]] = {
    "euler_maruyama": ("euler_maruyama", False),
    "reverse_diffusion": ("reverse_diffusion", False),
    "pc": ("reverse_diffusion", True),
}


def replacement_constraint(sde: LinearSDE, x_known: Array, mask: Array):
    """constrain(x, t, rng): the known region <- a fresh draw of N(alpha(t) x_known, sigma(t)^2)."""
    known = mask.astype(bool)

    def constrain(x, t, rng):
        t_batch = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        alpha, sigma = sde.marginal_coeffs(t_batch)
        noise = jax.random.normal(rng, x.shape, x.dtype)
        noisy_known = broadcast_to_data(alpha, x) * x_known + broadcast_to_data(sigma, x) * noise
        return jnp.where(known, noisy_known, x)

    return constrain


def inpaint(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearSDE,
    x_known: Array,
    mask: Array,
    *,
    method: str = "pc",
    num_steps: int = 1000,
    eps: float | None = None,
    predictor: str | None = None,
    snr: float = 0.16,
    corrector_steps: int = 1,
    time_grid: str = "uniform",
    rho: float = 7.0,
    denoise: bool = True,
) -> SampleResult:
    """Fills in x where mask == 0, keeping x_known where mask == 1.

    `x_known` is [B, ...] (its values under mask == 0 are ignored); `mask` broadcasts against it.
    `method` is one of INPAINT_METHODS; for "pc", `predictor` may override reverse_diffusion.
    NFE as for the unconditional sampler of the same name.
    """
    try:
        default_predictor, use_corrector = INPAINT_METHODS[method]
    except KeyError:
        raise ValueError(
            f"Unknown inpainting method={method!r}; choose one of {sorted(INPAINT_METHODS)}."
        ) from None
    if predictor is not None and not use_corrector:
        raise ValueError(f"`predictor` only applies to method='pc', not {method!r}.")
    eps = resolve_eps(sde, eps)
    mask = jnp.broadcast_to(jnp.asarray(mask, x_known.dtype), x_known.shape)
    x, nfe = reverse_sde_loop(
        rng, score_fn, sde, x_known.shape,
        predictor=predictor or default_predictor,
        num_steps=num_steps, eps=eps, time_grid_name=time_grid, rho=rho,
        snr=snr, corrector_steps=corrector_steps if use_corrector else 0,
        constrain=replacement_constraint(sde, x_known, mask),
    )
    result = finish(sde, score_fn, x, nfe, eps, denoise)
    samples = jnp.where(mask.astype(bool), x_known, result.samples)
    return SampleResult(samples=samples, nfe=result.nfe)
