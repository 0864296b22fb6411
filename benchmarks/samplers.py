"""Sampler accuracy per network evaluation on every process, and in-graph vs host-side adaptive ODE.

Part 1. Every sampler draws from a Gaussian mixture through its exact model
(tests/gaussian_mixture.py: exact x0_hat, eps_hat and score), so the only error is the sampler's
own. Error = sliced Wasserstein-2 distance between the samples and 4x as many exact draws of
p_end (stratified over components), where end is the sampler's final time: eps for the samplers
run without their final Tweedie step, 0 for those that end at the data by construction (edm_heun,
ddpm, sit_sde, and flow's ODE integrated to t = 0). The "MC floor" row is the same distance for
n i.i.d. exact draws, below which a sampler cannot be told apart from perfect. Wall time is the
jitted run (compilation excluded). NFE is the exact number of network evaluations.

Part 2. The same adaptive Dopri5 / RK45 tableau, same tolerances, on a small random MLP score
model: diffrax inside one jitted while loop vs score_sde's recipe, scipy.integrate.solve_ivp on the
host calling a jitted drift once per evaluation. (Our error norm is the max over examples of
each example's RMS, scipy's the RMS over the flattened batch: ours is the stricter of the two,
which is why it takes a few more evaluations.)

    .venv/bin/python benchmarks/samplers.py            # ~15 minutes on 2 CPU cores
    .venv/bin/python benchmarks/samplers.py --quick    # 2-D tables only
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

from diffjax.sampling import SAMPLERS  # noqa: E402
from diffjax.sampling.adaptive_ode import solve_adaptive  # noqa: E402
from diffjax.sampling.ode_solvers import pf_ode_drift  # noqa: E402
from diffjax.sampling.time_grids import resolve_eps  # noqa: E402
from diffjax.diffusion.processes import PROCESSES  # noqa: E402
from gaussian_mixture import random_mixture, two_d_mixture  # noqa: E402

# (label, sampler, options), per process; NFE follows from the options (diffjax/sampling/).
NO_TWEEDIE = dict(denoise=False)
DPM = [
    ("dpm_solver++ 3 (taylor_exact)", "dpm_solver", dict(num_steps=10, **NO_TWEEDIE)),
    ("dpm_solver++ 3 (taylor_exact)", "dpm_solver", dict(num_steps=20, **NO_TWEEDIE)),
    ("dpm_solver++ 3M (official)", "dpm_solver", dict(num_steps=10, solver_type="dpmsolver",
                                                      **NO_TWEEDIE)),
    ("dpm_solver++ 3M (official)", "dpm_solver", dict(num_steps=20, solver_type="dpmsolver",
                                                      **NO_TWEEDIE)),
    ("dpm_solver 3 noise (taylor_exact)", "dpm_solver",
     dict(num_steps=10, algorithm_type="dpmsolver", **NO_TWEEDIE)),
    ("dpm_solver 3 noise (taylor_exact)", "dpm_solver",
     dict(num_steps=20, algorithm_type="dpmsolver", **NO_TWEEDIE)),
    ("dpm_solver 3M noise (official)", "dpm_solver", dict(num_steps=20, algorithm_type="dpmsolver",
                                                          solver_type="dpmsolver", **NO_TWEEDIE)),
    ("dpm_solver++ 2M (official)", "dpm_solver", dict(num_steps=20, order=2,
                                                      solver_type="dpmsolver", **NO_TWEEDIE)),
]
EDM = [
    ("edm_heun 18 steps", "edm_heun", dict(num_steps=18)),
    ("edm_heun 18, churn 40/0.05/50", "edm_heun", dict(num_steps=18, S_churn=40.0, S_min=0.05,
                                                       S_max=50.0, S_noise=1.003)),
]
SCORE_SDE = [
    ("euler_maruyama", "euler_maruyama", dict(num_steps=100, **NO_TWEEDIE)),
    ("euler_maruyama", "euler_maruyama", dict(num_steps=250, **NO_TWEEDIE)),
    ("pc (rev.diff + langevin)", "pc", dict(num_steps=50, **NO_TWEEDIE)),
    ("ode_euler (uniform t)", "ode_euler", dict(num_steps=100, **NO_TWEEDIE)),
    ("ode_heun_t (edm grid)", "ode_heun_t", dict(num_steps=5, **NO_TWEEDIE)),
    ("ode_heun_t (edm grid)", "ode_heun_t", dict(num_steps=17, **NO_TWEEDIE)),
    ("ddim = dpm_solver-1", "ddim", dict(num_steps=10, **NO_TWEEDIE)),
    *DPM, *EDM,
    ("ddpm ancestral (log-SNR grid)", "ddpm", dict(num_steps=100)),
    ("ode_adaptive dopri5 tol 1e-3", "ode_adaptive", dict(rtol=1e-3, atol=1e-3, **NO_TWEEDIE)),
    ("ode_adaptive dopri5 tol 1e-5", "ode_adaptive", dict(rtol=1e-5, atol=1e-5, **NO_TWEEDIE)),
]
FLOW_ODE = dict(time_grid="uniform", eps=0.0, denoise=False)
CASES = {
    "vp": SCORE_SDE,
    "ve": SCORE_SDE,
    "edm": [*EDM, ("edm_heun 35 steps", "edm_heun", dict(num_steps=35)), *DPM],
    "flow": [
        ("flow euler", "ode_euler", dict(num_steps=10, **FLOW_ODE)),
        ("flow euler", "ode_euler", dict(num_steps=20, **FLOW_ODE)),
        ("flow euler", "ode_euler", dict(num_steps=50, **FLOW_ODE)),
        ("flow heun", "ode_heun_t", dict(num_steps=5, **FLOW_ODE)),
        ("flow heun", "ode_heun_t", dict(num_steps=10, **FLOW_ODE)),
        ("flow heun", "ode_heun_t", dict(num_steps=25, **FLOW_ODE)),
        ("sit_sde (SiT defaults)", "sit_sde", dict(num_steps=250)),
        *EDM, *DPM,
    ],
    "ddpm": [
        ("ddpm ancestral, beta~", "ddpm", dict(num_steps=25)),
        ("ddpm ancestral, beta~", "ddpm", dict(num_steps=250)),
        ("ddpm ancestral, beta~", "ddpm", dict(num_steps=1000)),
        ("ddpm ancestral, beta", "ddpm", dict(num_steps=250, variance="beta")),
        ("ddim (discrete grid) + tweedie", "ddim", dict(num_steps=9, time_grid="discrete")),
        ("ddim (discrete grid) + tweedie", "ddim", dict(num_steps=19, time_grid="discrete")),
        *EDM, *DPM,
    ],
}
ENDS_AT_DATA = ("edm_heun", "ddpm", "sit_sde")
REFERENCE_FACTOR = 4  # exact reference draws per sample


class SlicedWasserstein:
    """SW_2 of n samples to a fixed, larger reference set (quantile matching per direction).

    The reference projections are sorted once; each evaluation sorts only the n samples.
    """

    def __init__(self, reference, rng, num_projections=128):
        directions = jax.random.normal(rng, (reference.shape[1], num_projections))
        self.directions = directions / jnp.linalg.norm(directions, axis=0, keepdims=True)
        self.sorted_reference = jnp.sort(reference @ self.directions, axis=0)

    def __call__(self, x):
        n, m = x.shape[0], self.sorted_reference.shape[0]
        quantile_index = ((jnp.arange(n) + 0.5) * m / n).astype(jnp.int32)
        projected = jnp.sort(x @ self.directions, axis=0)
        return float(jnp.sqrt(jnp.mean((projected - self.sorted_reference[quantile_index]) ** 2)))


def stratified_draws(mixture, rng, m, sde, t):
    """Exact draws of p_t with exactly round(w_k m) per component.

    W_2 is very sensitive to how much mass sits in each mode; i.i.d. component labels would
    add that multinomial noise to the reference, stratifying removes it.
    """
    alpha, sigma = (float(v) for v in sde.marginal_coeffs(jnp.asarray(t, jnp.float32)))
    chol = np.linalg.cholesky(mixture.covs)
    parts = []
    for k, count in enumerate(np.round(mixture.weights * m).astype(int)):
        rng, k_data, k_noise = jax.random.split(rng, 3)
        x0 = mixture.means[k] + jax.random.normal(k_data, (count, mixture.dim)) @ chol[k].T
        parts.append(alpha * x0 + sigma * jax.random.normal(k_noise, x0.shape))
    return jnp.concatenate(parts).astype(jnp.float32)


def end_time(name, options, sde):
    """Where a sampler's output lives: p_0 for those that end at the data, else p_eps."""
    if name in ENDS_AT_DATA or options.get("denoise", True):
        return 0.0
    return resolve_eps(sde, options.get("eps"))


def accuracy_table(sde, mixture, n, seed=0):
    model = mixture.model_fn(sde)
    swds = {}

    def swd_at(t):
        if t not in swds:
            reference = stratified_draws(mixture, jax.random.PRNGKey(seed + 100),
                                         REFERENCE_FACTOR * n, sde, t)
            swds[t] = SlicedWasserstein(reference, jax.random.PRNGKey(seed + 3))
        return swds[t]

    eps = resolve_eps(sde, None)
    # The floor: how far n perfect (i.i.d.) samples are from the reference, over 3 draws.
    floor = np.mean([
        swd_at(eps)(mixture.sample(jax.random.PRNGKey(seed + 10 + i), n, sde, eps)[0])
        for i in range(3)
    ])
    rows = [("exact i.i.d. draws (MC floor)", 0, floor, 0.0)]
    for label, name, options in CASES[sde.name]:
        fn = jax.jit(functools.partial(SAMPLERS[name], score_fn=model, sde=sde,
                                       shape=(n, mixture.dim), **options))
        key = jax.random.PRNGKey(seed)
        jax.block_until_ready(fn(key))  # compile
        start = time.perf_counter()
        result = jax.block_until_ready(fn(key))
        wall = time.perf_counter() - start
        rows.append((label, int(result.nfe), swd_at(end_time(name, options, sde))(result.samples),
                     wall))
    return rows


def print_table(title, rows):
    print(f"\n{title}", flush=True)
    print(f"{'sampler':36s} {'NFE':>5s} {'SWD':>9s} {'wall s':>8s}")
    for label, nfe, swd, wall in rows:
        print(f"{label:36s} {nfe:5d} {swd:9.4f} {wall:8.3f}", flush=True)


# --- in-graph vs host-side adaptive ODE ------------------------------------------------------


def mlp_score_fn(dim, hidden, seed=0):
    """A 2-layer tanh MLP on [x, t] with random weights: a stand-in for a small score network."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    w1 = jax.random.normal(k1, (dim + 1, hidden)) / np.sqrt(dim + 1)
    w2 = jax.random.normal(k2, (hidden, dim)) / np.sqrt(hidden)

    def score_fn(x, t):
        t_col = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])[:, None]
        return jnp.tanh(jnp.concatenate([x, t_col], axis=1) @ w1) @ w2 - x

    return score_fn


def adaptive_timing(sde, batch, dim, hidden, tol, repeats=3):
    score_fn = mlp_score_fn(dim, hidden)
    eps = resolve_eps(sde, None)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (batch, dim))

    in_graph = jax.jit(lambda x: solve_adaptive(
        lambda t, y: pf_ode_drift(score_fn, sde, y, t), x, sde.T, eps, solver="dopri5",
        rtol=tol, atol=tol))
    jax.block_until_ready(in_graph(x_T))
    start = time.perf_counter()
    for _ in range(repeats):
        sol = jax.block_until_ready(in_graph(x_T))
    in_graph_s = (time.perf_counter() - start) / repeats

    # score_sde's recipe: a jitted drift, called from scipy with a device<->host copy each time.
    drift = jax.jit(lambda x, t: pf_ode_drift(score_fn, sde, x, t))

    def host_fun(t, y):
        x = jnp.asarray(y.reshape(batch, dim), jnp.float32)
        return np.asarray(drift(x, jnp.float32(t)), np.float64).reshape(-1)

    host_fun(sde.T, np.asarray(x_T).reshape(-1))  # compile
    start = time.perf_counter()
    for _ in range(repeats):
        host = solve_ivp(host_fun, (sde.T, eps), np.asarray(x_T, np.float64).reshape(-1),
                         method="RK45", rtol=tol, atol=tol)
    host_s = (time.perf_counter() - start) / repeats
    diff = np.abs(np.asarray(sol.y) - host.y[:, -1].reshape(batch, dim)).max()
    return dict(in_graph_s=in_graph_s, in_graph_nfe=int(sol.nfe), host_s=host_s,
                host_nfe=int(host.nfev), max_abs_diff=float(diff))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n2d", type=int, default=40_000, help="samples in 2-D")
    parser.add_argument("--n64d", type=int, default=4_000, help="samples in 64-D")
    parser.add_argument("--quick", action="store_true", help="the 2-D tables only")
    args = parser.parse_args()
    print(f"devices {jax.devices()}; error = sliced W2 to exact draws of p_end")
    for name in ("vp", "ve", "edm", "flow", "ddpm"):
        sde = PROCESSES[name]()
        print_table(f"{name} (eps {resolve_eps(sde, None)}), 2-D mixture (2 components), "
                    f"{args.n2d} samples", accuracy_table(sde, two_d_mixture(), args.n2d))
    if args.quick:
        return
    for name in ("vp", "edm", "flow", "ddpm"):
        sde = PROCESSES[name]()
        print_table(f"{name}, 64-D mixture (4 components, full covariances), {args.n64d} samples",
                    accuracy_table(sde, random_mixture(0, 64, 4), args.n64d))

    sde = PROCESSES["vp"]()
    print("\nAdaptive PF-ODE, Dopri5 (diffrax, in-graph) vs RK45 (scipy on host), MLP score")
    print(f"{'batch x dim':>12s} {'tol':>6s} {'in-graph s':>11s} {'NFE':>5s} {'host s':>8s} "
          f"{'NFE':>5s} {'speed-up':>8s} {'max |dx|':>9s}")
    for batch, dim, tol in ((64, 16, 1e-5), (256, 64, 1e-5), (256, 64, 1e-3)):
        r = adaptive_timing(sde, batch, dim, hidden=128, tol=tol)
        print(f"{f'{batch} x {dim}':>12s} {tol:6.0e} {r['in_graph_s']:11.4f} "
              f"{r['in_graph_nfe']:5d} {r['host_s']:8.4f} {r['host_nfe']:5d} "
              f"{r['host_s'] / r['in_graph_s']:7.1f}x {r['max_abs_diff']:9.1e}")


if __name__ == "__main__":
    main()
