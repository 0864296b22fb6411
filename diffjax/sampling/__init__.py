"""Samplers: name -> function, and the config entry point used by training, sampling and eval.

Every sampler has the signature
    sampler(rng, score_fn, sde, shape, **options) -> SampleResult(samples, nfe)
runs entirely in-graph (lax.scan / while_loop, no host callbacks), and is jittable with `shape` and
the options static. `score_fn` is a `diffjax.diffusion.parameterization.ModelFn` (or any score function: plain ones
are wrapped by `as_model_fn`); samplers read x0_hat, eps_hat and the score of one network call from
it. `nfe` is the exact number of network evaluations. `sde` is any `diffjax.diffusion.processes` process.

    name               what                                          NFE
    euler_maruyama     reverse SDE, Euler-Maruyama                   N
    reverse_diffusion  reverse SDE with the exact linear transition  N
    pc                 predictor + Langevin corrector                N (1 + corrector_steps)
    ode_euler          PF-ODE Euler in t (flow: SiT's Euler)         N
    ode_heun_t         PF-ODE Heun in t, every step corrected        2N
                       (flow: SiT's Heun; not EDM's)
    ode_adaptive       PF-ODE, adaptive Dopri5/Tsit5/Bosh3           1 + 6 x steps (dopri5, tsit5)
    ddim               DDIM with eta, any grid                       N
    dpm_solver         multistep DPM-Solver(++) orders 1-3           N
    edm_heun           EDM's Heun in sigma~ with churn (Alg. 2),     2N - 1 (18 steps: 35)
                       N = EDM's num_steps, last step to sigma = 0
    ddpm               ancestral, posterior variance beta~/beta/     N (DiT's 250 steps: 250)
                       learned, N = DiT's num_sampling_steps
    sit_sde            SiT's SDE sampler (Euler-Maruyama + last step) N
plus one for the final Tweedie step when `denoise` (samplers that have the option; edm_heun,
ddpm and sit_sde end at the clean data by construction). Inpainting (replacement, score_sde):
`inpaint(rng, score_fn, sde, x_known, mask, method=...)` for the three SDE samplers.

Batch sharding: every sampler treats examples independently (per-example evaluations,
per-example Langevin step sizes); the only cross-example quantities anywhere are the adaptive
ODE's scalar error norm and the Langevin step's batch-mean norms. Jitting a sampler with a
batch-sharded output keeps the whole loop sharded.

On a discrete DDPM schedule, with the raw network and per-step tables (diffusers' schedulers,
built by diffjax.pipelines.schedulers): `ddim_discrete` (ddim_sampler.py), `euler_discrete`
(edm_sampler.py), `dpm_solver_discrete` (dpm_solver_multistep.py), `plms_discrete`
(plms_sampler.py); each can record a `Trajectory` of every network call.

`generate.py` turns an experiment's network into the jitted sampling function every mode uses;
`run.py` is a trained run loaded from its workdir (`diffjax.load(workdir).sample(16)`).
Imports: diffusion (processes, parameterisations), experiment (generate.py, run.py), latents,
data, parallel, config and storage (run.py: the run's config.json); never training, evaluation
or the modes.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from diffjax.diffusion.parameterization import ScoreFn
from diffjax.diffusion.processes import LinearProcess
from diffjax.sampling.adaptive_ode import ode_adaptive
from diffjax.sampling.ddim_sampler import ddim
from diffjax.sampling.ddpm_sampler import ddpm
from diffjax.sampling.dpm_solver_multistep import dpm_solver
from diffjax.sampling.edm_sampler import edm_heun
from diffjax.sampling.inpainting import inpaint
from diffjax.sampling.ode_solvers import ode_euler, ode_heun_t
from diffjax.sampling.result import SampleResult
from diffjax.sampling.sde_solvers import euler_maruyama, predictor_corrector, reverse_diffusion
from diffjax.sampling.sit_sde import sit_sde

SAMPLERS: dict[str, Callable[..., SampleResult]] = {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "pc": predictor_corrector,
    "ode_euler": ode_euler,
    "ode_heun_t": ode_heun_t,
    "ode_adaptive": ode_adaptive,
    "ddim": ddim,
    "dpm_solver": dpm_solver,
    "edm_heun": edm_heun,
    "ddpm": ddpm,
    "sit_sde": sit_sde,
}
# Names that changed, with what to use instead.
RENAMED: dict[str, str] = {
    "ode_heun": "ode_heun_t (Heun in t, 2N evaluations) or edm_heun (EDM's Heun in sigma)",
}

_FIXED_GRID = ("num_steps", "eps", "time_grid", "rho", "denoise")

# The `config.sampling` fields each sampler reads. A test checks these against the signatures.
SAMPLER_OPTIONS: dict[str, tuple[str, ...]] = {
    "euler_maruyama": _FIXED_GRID,
    "reverse_diffusion": _FIXED_GRID,
    "pc": _FIXED_GRID + ("predictor", "snr", "corrector_steps"),
    "ode_euler": _FIXED_GRID,
    "ode_heun_t": _FIXED_GRID,
    "ode_adaptive": ("eps", "solver", "rtol", "atol", "max_steps", "denoise"),
    "ddim": _FIXED_GRID + ("eta",),
    "dpm_solver": _FIXED_GRID + ("order", "algorithm_type", "solver_type", "lower_order_final"),
    "edm_heun": ("num_steps", "eps", "rho", "S_churn", "S_min", "S_max", "S_noise"),
    "ddpm": ("num_steps", "eps", "time_grid", "rho", "variance", "clip_denoised"),
    "sit_sde": ("num_steps", "diffusion_form", "diffusion_norm", "last_step", "last_step_size"),
}


def _optional(cast: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else cast(v)


# Every `config.sampling` key the samplers read: default and type. None means "the sampler's own
# default": eps -> the process's customary end time (1e-3 VP family and flow, 1e-5 VE, 1/N DDPM,
# sigma_min EDM); time_grid -> uniform for the SDE samplers and ode_euler, edm for ode_heun_t,
# log_snr for ddim and dpm_solver, discrete for ddpm on DDPM (log_snr elsewhere).
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
    "algorithm_type": ("dpmsolver++", str),
    "solver_type": ("taylor_exact", str),
    "lower_order_final": (True, bool),
    "eta": (0.0, float),
    "S_churn": (0.0, float),
    "S_min": (0.0, float),
    "S_max": (float("inf"), float),
    "S_noise": (1.0, float),
    "variance": ("beta_tilde", str),
    "clip_denoised": (False, bool),
    "diffusion_form": ("sigma", str),
    "diffusion_norm": (1.0, float),
    "last_step": ("mean", str),
    "last_step_size": (0.04, float),
}


def get_sampler(method: str) -> Callable[..., SampleResult]:
    try:
        return SAMPLERS[method]
    except KeyError:
        hint = f" (renamed: use {RENAMED[method]})" if method in RENAMED else ""
        raise ValueError(
            f"Unknown sampling.method={method!r}{hint}; choose one of {sorted(SAMPLERS)}."
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


def sample(sampling_config, rng: jax.Array, score_fn: ScoreFn, sde: LinearProcess,
           shape: tuple[int, ...]) -> SampleResult:
    """Draws `shape` samples with the sampler that `config.sampling.method` names."""
    sampler = get_sampler(sampling_config.get("method", CONFIG_DEFAULTS["method"][0]))
    return sampler(rng, score_fn, sde, tuple(shape), **sampler_options(sampling_config))


__all__ = [
    "CONFIG_DEFAULTS", "SAMPLERS", "SAMPLER_OPTIONS", "SampleResult", "get_sampler", "inpaint",
    "sample", "sampler_options",
]
