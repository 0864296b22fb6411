"""Samplers: name -> function, and the config entry point used by training, sampling and eval.

Every sampler has the signature
    sampler(rng, score_fn, sde, shape, **options) -> SampleResult(samples, nfe)
runs entirely in-graph (lax.scan / while_loop, no host callbacks), and is jittable with `shape` and
the options static. `nfe` is the exact number of score-network evaluations.

    name               options (besides eps, denoise)              NFE
    euler_maruyama     num_steps, time_grid, rho                   N
    reverse_diffusion  num_steps, time_grid, rho                   N
    pc                 num_steps, predictor, snr, corrector_steps,  N (1 + corrector_steps)
                       time_grid, rho
    ode_euler          num_steps, time_grid, rho                   N
    ode_heun           num_steps, time_grid, rho                   2N - 1
    ode_adaptive       solver, rtol, atol, max_steps               1 + 6 * steps (dopri5, tsit5)
    ddim               num_steps, time_grid, rho                   N
    dpm_solver         num_steps, order, time_grid, rho            N
plus one for the final Tweedie step when `denoise`. Inpainting (replacement, score_sde):
`inpaint(rng, score_fn, sde, x_known, mask, method=...)` for the three SDE samplers.

Batch sharding: every sampler treats examples independently (per-example score evaluations,
per-example Langevin step sizes); the only cross-example quantity anywhere is the adaptive ODE's
scalar error norm. Jitting a sampler with a batch-sharded output keeps the whole loop sharded.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from diffjax.sampling.adaptive_ode import ode_adaptive
from diffjax.sampling.ddim_sampler import ddim
from diffjax.sampling.dpm_solver_multistep import dpm_solver
from diffjax.sampling.inpainting import inpaint
from diffjax.sampling.ode_solvers import ode_euler, ode_heun
from diffjax.sampling.result import SampleResult
from diffjax.sampling.sde_solvers import euler_maruyama, predictor_corrector, reverse_diffusion
from diffjax.sde import LinearSDE
from diffjax.score import ScoreFn

SAMPLERS: dict[str, Callable[..., SampleResult]] = {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "pc": predictor_corrector,
    "ode_euler": ode_euler,
    "ode_heun": ode_heun,
    "ode_adaptive": ode_adaptive,
    "ddim": ddim,
    "dpm_solver": dpm_solver,
}

_FIXED_GRID = ("num_steps", "eps", "time_grid", "rho", "denoise")

# The `config.sampling` fields each sampler reads. A test checks these against the signatures.
SAMPLER_OPTIONS: dict[str, tuple[str, ...]] = {
    "euler_maruyama": _FIXED_GRID,
    "reverse_diffusion": _FIXED_GRID,
    "pc": _FIXED_GRID + ("predictor", "snr", "corrector_steps"),
    "ode_euler": _FIXED_GRID,
    "ode_heun": _FIXED_GRID,
    "ode_adaptive": ("eps", "solver", "rtol", "atol", "max_steps", "denoise"),
    "ddim": _FIXED_GRID,
    "dpm_solver": _FIXED_GRID + ("order",),
}


def _optional(cast: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else cast(v)


# Every `config.sampling` key the samplers read: default and type. None means "the sampler's own
# default": eps -> 1e-3 (VP, sub-VP) or 1e-5 (VE); time_grid -> uniform for the SDE samplers and
# ode_euler, edm for ode_heun, log_snr for ddim and dpm_solver.
CONFIG_DEFAULTS: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "method": ("pc", str),
    "num_steps": (1000, int),
    "eps": (None, _optional(float)),
    "denoise": (True, bool),
    "predictor": ("reverse_diffusion", str),
    "snr": (0.16, float),
    "corrector_steps": (1, int),
    "time_grid": (None, _optional(str)),
    "rho": (7.0, float),
    "solver": ("dopri5", str),
    "rtol": (1e-5, float),
    "atol": (1e-5, float),
    "max_steps": (4096, int),
    "order": (3, int),
}


def get_sampler(method: str) -> Callable[..., SampleResult]:
    try:
        return SAMPLERS[method]
    except KeyError:
        raise ValueError(
            f"Unknown sampling.method={method!r}; choose one of {sorted(SAMPLERS)}."
        ) from None


def sampler_options(sampling_config) -> dict:
    """The keyword options of the configured sampler, taken from `config.sampling`.

    Keys missing from the config fall back to CONFIG_DEFAULTS; keys the chosen method does not
    accept are left out. Values that are None are dropped so that the sampler's own default
    applies.
    """
    method = sampling_config.get("method", CONFIG_DEFAULTS["method"][0])
    get_sampler(method)  # validates the name with a helpful message
    options = {}
    for key in SAMPLER_OPTIONS[method]:
        default, cast = CONFIG_DEFAULTS[key]
        value = cast(sampling_config.get(key, default))
        if value is not None:
            options[key] = value
    return options


def sample(sampling_config, rng: jax.Array, score_fn: ScoreFn, sde: LinearSDE,
           shape: tuple[int, ...]) -> SampleResult:
    """Draws `shape` samples with the sampler that `config.sampling.method` names."""
    sampler = get_sampler(sampling_config.get("method", CONFIG_DEFAULTS["method"][0]))
    return sampler(rng, score_fn, sde, tuple(shape), **sampler_options(sampling_config))


__all__ = [
    "CONFIG_DEFAULTS", "SAMPLERS", "SAMPLER_OPTIONS", "SampleResult", "get_sampler", "inpaint",
    "sample", "sampler_options",
]
