"""Sampler accuracy per network evaluation, and in-graph vs host-side adaptive ODE solves.

Part 1. Every sampler draws from a Gaussian mixture through its exact score
(tests/gaussian_mixture.py), so the only error is the sampler's own. Error = sliced
Wasserstein-2 distance between the samples and 4x as many exact draws of p_eps (stratified over
components); the "MC floor" row is the same distance for n i.i.d. exact draws, below which a
sampler cannot be told apart from perfect.
Wall time is the jitted run (compilation excluded). No Tweedie step, so NFE is the solver's own.

Part 2. The same adaptive Dopri5 / RK45 tableau, same tolerances, on a small random MLP score
model: diffrax inside one jitted while loop vs score_sde's recipe, scipy.integrate.solve_ivp on the
host calling a jitted drift once per evaluation. (Our error norm is the max over examples of
each example's RMS, scipy's the RMS over the flattened batch: ours is the stricter of the two,
which is why it takes a few more evaluations.)

    .venv/bin/python benchmarks/samplers.py            # a few minutes on 2 CPU cores
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
from diffjax.sde import SDES  # noqa: E402
from gaussian_mixture import random_mixture, two_d_mixture  # noqa: E402

# (label, sampler, options); NFE follows from the options (see diffjax/sampling/__init__.py).
CASES = [
    ("euler_maruyama", "euler_maruyama", dict(num_steps=100)),
    ("euler_maruyama", "euler_maruyama", dict(num_steps=250)),
    ("pc (rev.diff + langevin)", "pc", dict(num_steps=50)),
    ("ode_euler (uniform t)", "ode_euler", dict(num_steps=10)),
    ("ode_euler (uniform t)", "ode_euler", dict(num_steps=100)),
    ("ode_heun (edm grid)", "ode_heun", dict(num_steps=5)),
    ("ode_heun (edm grid)", "ode_heun", dict(num_steps=10)),
    ("ode_heun (edm grid)", "ode_heun", dict(num_steps=25)),
    ("ddim = dpm_solver-1", "ddim", dict(num_steps=10)),
    ("dpm_solver-2 multistep", "dpm_solver", dict(num_steps=10, order=2)),
    ("dpm_solver-2 multistep", "dpm_solver", dict(num_steps=20, order=2)),
    ("dpm_solver-3 multistep", "dpm_solver", dict(num_steps=10, order=3)),
    ("dpm_solver-3 multistep", "dpm_solver", dict(num_steps=15, order=3)),
    ("dpm_solver-3 multistep", "dpm_solver", dict(num_steps=20, order=3)),
    ("ode_adaptive dopri5 tol 1e-3", "ode_adaptive", dict(rtol=1e-3, atol=1e-3)),
    ("ode_adaptive dopri5 tol 1e-5", "ode_adaptive", dict(rtol=1e-5, atol=1e-5)),
]
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
    alpha, sigma = (float(v) for v in sde.marginal_coeffs(jnp.float32(t)))
    chol = np.linalg.cholesky(mixture.covs)
    parts = []
    for k, count in enumerate(np.round(mixture.weights * m).astype(int)):
        rng, k_data, k_noise = jax.random.split(rng, 3)
        x0 = mixture.means[k] + jax.random.normal(k_data, (count, mixture.dim)) @ chol[k].T
        parts.append(alpha * x0 + sigma * jax.random.normal(k_noise, x0.shape))
    return jnp.concatenate(parts).astype(jnp.float32)


def accuracy_table(sde, mixture, n, seed=0):
    eps = resolve_eps(sde, None)
    score_fn = mixture.score_fn(sde)
    reference = stratified_draws(mixture, jax.random.PRNGKey(seed + 100), REFERENCE_FACTOR * n,
                                 sde, eps)
    swd = SlicedWasserstein(reference, jax.random.PRNGKey(seed + 3))
    # The floor: how far n perfect (i.i.d.) samples are from the reference, over 3 draws.
    floor = np.mean([
        swd(mixture.sample(jax.random.PRNGKey(seed + 10 + i), n, sde, eps)[0]) for i in range(3)
    ])
    rows = [("exact i.i.d. draws (MC floor)", 0, floor, 0.0)]
    for label, name, options in CASES:
        fn = jax.jit(functools.partial(SAMPLERS[name], score_fn=score_fn, sde=sde,
                                       shape=(n, mixture.dim), denoise=False, **options))
        key = jax.random.PRNGKey(seed)
        jax.block_until_ready(fn(key))  # compile
        start = time.perf_counter()
        result = jax.block_until_ready(fn(key))
        wall = time.perf_counter() - start
        rows.append((label, int(result.nfe), swd(result.samples), wall))
    return rows


def print_table(title, rows):
    print(f"\n{title}", flush=True)
    print(f"{'sampler':32s} {'NFE':>5s} {'SWD':>9s} {'wall s':>8s}")
    for label, nfe, swd, wall in rows:
        print(f"{label:32s} {nfe:5d} {swd:9.4f} {wall:8.3f}", flush=True)


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
    args = parser.parse_args()
    print(f"devices {jax.devices()}; error = sliced W2 to exact draws of p_eps")
    for sde_name in ("vp", "ve"):
        sde = SDES[sde_name]()
        print_table(f"{sde_name} SDE (eps {resolve_eps(sde, None)}), 2-D mixture (2 components), "
                    f"{args.n2d} samples", accuracy_table(sde, two_d_mixture(), args.n2d))
    sde = SDES["vp"]()
    print_table(f"vp SDE, 64-D mixture (4 components, full covariances), {args.n64d} samples",
                accuracy_table(sde, random_mixture(0, 64, 4), args.n64d))

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
