"""Adaptive, in-graph probability-flow ODE solves with diffrax, with an exact evaluation count.

score_sde solved the PF-ODE with scipy's RK45 on the host: one device-to-host copy and one Python
round trip per function evaluation. Here the whole solve is one `lax.while_loop` (diffrax), so it
jits, shards over the batch, and costs nothing per step beyond the network itself.

Counting evaluations exactly. Dopri5 and Tsit5 are 7-stage FSAL ("first same as last") methods:
the last stage of a step is the derivative at its end point, reused as the first stage of the next
step. diffrax, left to itself, (a) spends 2 evaluations choosing the first step size and
(b) evaluates the first stage again on the first step and after every rejection of it, so its
step statistics do not determine the count. We therefore
  1. evaluate f0 = f(t0, y0) ourselves and choose dt0 with the Hairer–Norsett–Wanner heuristic,
     which needs one more evaluation (f at t0 + h0);
  2. hand f0 to diffrax as the FSAL solver state, so that every attempted step, accepted or
     rejected, costs exactly `stages - 1` new evaluations.
Hence NFE = 2 + (stages - 1) * num_steps, with num_steps counting rejected steps too. A test counts
the real evaluations with a callback and checks this formula.

Failure is reported in-graph: with throw=False diffrax sets a result code instead of raising
through a host callback, and we turn an unsuccessful solve (max_steps reached) into NaNs.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from diffjax.sampling.ode_solvers import pf_ode_drift
from diffjax.sampling.result import SampleResult, finish
from diffjax.sampling.time_grids import resolve_eps
from diffjax.sde import LinearSDE
from diffjax.score import ScoreFn

Array = jax.Array
PyTree = object
# vector_field(t, y) -> dy/dt for a pytree state y and scalar time t.
VectorField = Callable[[Array, PyTree], PyTree]


class SolverSpec(NamedTuple):
    make: Callable[[], diffrax.AbstractAdaptiveSolver]
    new_evals_per_step: int  # stages minus the FSAL-reused one
    error_order: int  # order of the embedded error estimate, for the first-step heuristic


ADAPTIVE_SOLVERS: dict[str, SolverSpec] = {
    "dopri5": SolverSpec(diffrax.Dopri5, 6, 5),  # scipy's RK45 tableau
    "tsit5": SolverSpec(diffrax.Tsit5, 6, 5),
    "bosh3": SolverSpec(diffrax.Bosh3, 3, 3),  # scipy's RK23 tableau
}


def get_solver_spec(name: str) -> SolverSpec:
    try:
        return ADAPTIVE_SOLVERS[name]
    except KeyError:
        raise ValueError(
            f"Unknown sampling.solver={name!r}; choose one of {sorted(ADAPTIVE_SOLVERS)}."
        ) from None


class AdaptiveSolution(NamedTuple):
    y: PyTree  # state at t1, NaN everywhere if the solve failed
    nfe: Array  # int32, exact number of vector-field evaluations
    num_steps: Array  # int32, attempted steps (accepted + rejected)
    ok: Array  # bool, the solve reached t1 within max_steps


def _rms(tree) -> Array:
    leaves = jax.tree_util.tree_leaves(tree)
    total = sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)
    size = sum(leaf.size for leaf in leaves)
    return jnp.sqrt(total / size)


def _initial_step(vector_field, t0, t1, y0, f0, rtol, atol, error_order):
    """Hairer, Norsett & Wanner (Solving ODEs I, II.4) starting step; one evaluation."""
    direction = 1.0 if t1 > t0 else -1.0
    scale = jax.tree_util.tree_map(lambda y: atol + rtol * jnp.abs(y), y0)
    ratio = lambda a: jax.tree_util.tree_map(jnp.divide, a, scale)  # noqa: E731
    d0, d1 = _rms(ratio(y0)), _rms(ratio(f0))
    tiny = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = jnp.where(tiny, 1e-6, 0.01 * d0 / jnp.where(tiny, 1.0, d1))
    y1 = jax.tree_util.tree_map(lambda y, f: y + direction * h0 * f, y0, f0)
    f1 = vector_field(t0 + direction * h0, y1)
    d2 = _rms(ratio(jax.tree_util.tree_map(jnp.subtract, f1, f0))) / h0
    d_max = jnp.maximum(d1, d2)
    h1 = jnp.where(
        d_max <= 1e-15, jnp.maximum(1e-6, 1e-3 * h0), (0.01 / d_max) ** (1.0 / error_order)
    )
    h = jnp.minimum(jnp.minimum(100.0 * h0, h1), abs(t1 - t0))
    return direction * h


def solve_adaptive(
    vector_field: VectorField,
    y0: PyTree,
    t0: float,
    t1: float,
    *,
    solver: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
) -> AdaptiveSolution:
    """Integrates dy/dt = vector_field(t, y) from t0 to t1 (either direction), in-graph."""
    spec = get_solver_spec(solver)
    t0, t1 = float(t0), float(t1)
    f0 = vector_field(jnp.float32(t0), y0)
    dt0 = _initial_step(vector_field, t0, t1, y0, f0, rtol, atol, spec.error_order)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: vector_field(t, y)),
        spec.make(),
        t0=t0,
        t1=t1,
        dt0=dt0,
        y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=int(max_steps),
        # (first_step=False, f0): the FSAL slot is already valid, see the module docstring.
        solver_state=(jnp.array(False), f0),
        throw=False,
    )
    ok = sol.result == diffrax.RESULTS.successful
    y = jax.tree_util.tree_map(lambda ys: jnp.where(ok, ys[-1], jnp.nan), sol.ys)
    num_steps = jnp.asarray(sol.stats["num_steps"], jnp.int32)
    nfe = 2 + spec.new_evals_per_step * num_steps
    return AdaptiveSolution(y=y, nfe=nfe, num_steps=num_steps, ok=ok)


def ode_adaptive(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearSDE,
    shape: tuple[int, ...],
    *,
    eps: float | None = None,
    solver: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
    denoise: bool = True,
) -> SampleResult:
    """Adaptive PF-ODE solve from a prior draw at T to eps. NFE from the step count (+1 denoise).

    The error norm is the RMS over the whole batch, so all examples share one step-size
    sequence (as in score_sde's flattened solve_ivp); under batch sharding that is a scalar
    all-reduce per step, never a gather of x.
    """
    eps = resolve_eps(sde, eps)
    x_T = sde.prior_sample(rng, shape)
    sol = solve_adaptive(
        lambda t, x: pf_ode_drift(score_fn, sde, x, t),
        x_T, sde.T, eps, solver=solver, rtol=rtol, atol=atol, max_steps=max_steps,
    )
    return finish(sde, score_fn, sol.y, sol.nfe, eps, denoise)
