"""Samplers against exact answers: a Gaussian mixture whose score is known at every t.

With the exact score, a sampler's output should follow p_eps up to its discretisation error and
Monte Carlo noise, fixed-step solvers should converge at their order, and every network
evaluation can be counted from the outside.
"""

from __future__ import annotations

import functools
import inspect
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from gaussian_mixture import two_d_mixture
from jax.experimental import io_callback

from diffjax.diffusion.processes import VESDE, VPSDE, SubVPSDE
from diffjax.sampling import (CONFIG_DEFAULTS, SAMPLER_OPTIONS, SAMPLERS, SampleResult, sample,
                              sampler_options)
from diffjax.sampling.sde_solvers import forward_transition
from diffjax.sampling.time_grids import noise_to_signal, resolve_eps, time_grid

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
MIXTURE = two_d_mixture()


class CountingScore:
    """score_fn that counts its own calls from inside the compiled graph.

    Test-only: io_callback is a side-effecting host callback, so XLA neither drops nor merges
    it, and it runs once per real evaluation, also inside while loops (the adaptive solver).
    """

    def __init__(self, sde):
        self.calls = 0
        self._score = MIXTURE.score_fn(sde)

    def _bump(self, x):
        del x
        self.calls += 1
        return np.zeros((), np.float32)

    def __call__(self, x, t):
        # Passing x makes the callback depend on the loop state, so it cannot be hoisted.
        tick = io_callback(self._bump, jax.ShapeDtypeStruct((), jnp.float32), x, ordered=False)
        return self._score(x, t) + tick


def run_sampler(name, sde, n, rng=0, score_fn=None, **options):
    score_fn = score_fn or MIXTURE.score_fn(sde)
    fn = functools.partial(SAMPLERS[name], score_fn=score_fn, sde=sde, shape=(n, 2), **options)
    return jax.jit(fn)(jax.random.PRNGKey(rng))


# --- every sampler reproduces the data distribution, with exact NFE ---------------------------

# Step counts are chosen so that each sampler's discretisation bias is well inside the tolerance
# below on all three SDEs (the first-order ODE methods need the most steps on VE, whose PF-ODE in
# t is far from straight). The NFE column includes the default final Tweedie step where the
# sampler has one (edm_heun, ddpm and sit_sde end at the data by construction).
DISTRIBUTION_CASES = {
    "euler_maruyama": ("euler_maruyama", dict(num_steps=250), 251),
    "reverse_diffusion": ("reverse_diffusion", dict(num_steps=250), 251),
    "pc": ("pc", dict(num_steps=100), 201),
    "pc_em_2corrector": ("pc", dict(num_steps=80, predictor="euler_maruyama", corrector_steps=2),
                         241),
    "ode_euler": ("ode_euler", dict(num_steps=400, time_grid="edm"), 401),
    "ode_heun_t": ("ode_heun_t", dict(num_steps=50), 101),
    "ode_adaptive": ("ode_adaptive", dict(), None),
    "ddim": ("ddim", dict(num_steps=100), 101),
    "ddim_eta1": ("ddim", dict(num_steps=200, eta=1.0), 201),
    "dpm_solver1": ("dpm_solver", dict(num_steps=100, order=1), 101),
    "dpm_solver2": ("dpm_solver", dict(num_steps=40, order=2), 41),
    "dpm_solver3": ("dpm_solver", dict(num_steps=20, order=3), 21),
    "dpm_solver3_noise_official": ("dpm_solver", dict(num_steps=30, order=3,
                                                      algorithm_type="dpmsolver",
                                                      solver_type="dpmsolver"), 31),
    "edm_heun": ("edm_heun", dict(num_steps=40), 79),
    "ddpm": ("ddpm", dict(num_steps=250), 250),
    "sit_sde": ("sit_sde", dict(num_steps=250), 250),
}


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("case", DISTRIBUTION_CASES)
def test_sampler_reproduces_mixture_with_exact_nfe(case, sde_name):
    name, options, expected_nfe = DISTRIBUTION_CASES[case]
    sde = SDES[sde_name]
    n = 10_000
    counter = CountingScore(sde)
    result = run_sampler(name, sde, n, score_fn=counter, **options)

    # NFE: what the sampler reports is what ran.
    assert int(result.nfe) == counter.calls
    if expected_nfe is not None:
        assert int(result.nfe) == expected_nfe
    check_mixture_moments(np.asarray(result.samples, np.float64), sde, resolve_eps(sde, None))


def check_mixture_moments(x, sde, eps):
    """x follows p_eps of MIXTURE under `sde`, up to Monte Carlo noise and a small bias."""
    n = x.shape[0]
    assert np.all(np.isfinite(x))
    # Tolerance = 4.5 Monte Carlo standard errors, estimated from the samples themselves
    # (each statistic is a mean of n i.i.d. terms, so its s.e. is std(term) / sqrt(n); 4.5 s.e.
    # fails a correct sampler with probability ~1e-5 per statistic), plus a small allowance for
    # the sampler's own bias: 0.02 on means, 0.04 on covariances (~2.5% of the variances, about
    # 1.6), 0.01 on weights. Gross errors (a wrong drift, a missing factor, a diverging
    # corrector) are orders of magnitude larger.
    mean, cov = MIXTURE.moments(sde, eps)
    se_mean = x.std(0) / np.sqrt(n)
    assert np.all(np.abs(x.mean(0) - mean) < 4.5 * se_mean + 0.02), (x.mean(0), mean)
    centred = x - mean
    products = centred[:, :, None] * centred[:, None, :]
    se_cov = products.std(0) / np.sqrt(n)
    assert np.all(np.abs(products.mean(0) - cov) < 4.5 * se_cov + 0.04), (products.mean(0), cov)
    # E_p[p(k | x)] = w_k, so mean posterior responsibilities estimate the mixture weights
    # without the bias that hard assignment would have where the components overlap.
    resp = np.asarray(MIXTURE.responsibilities(sde, jnp.asarray(x, jnp.float32), eps))
    weights = MIXTURE.weights
    se_w = np.sqrt(weights * (1 - weights) / n)
    assert np.all(np.abs(resp.mean(0) - weights) < 4.5 * se_w + 0.01), (resp.mean(0), weights)


# The new processes, through the model interface (`predict`: exact x0_hat, eps_hat), with the
# samplers that suit each; flow starts every prediction-based sampler at t = 1.
PROCESS_CASES = [
    ("cosine", "dpm_solver", dict(num_steps=20)),
    ("cosine", "euler_maruyama", dict(num_steps=250)),
    ("ddpm", "ddpm", dict(num_steps=1000)),
    ("ddpm", "ddim", dict(num_steps=99, time_grid="discrete")),
    ("ddpm", "dpm_solver", dict(num_steps=20)),
    ("flow", "ode_euler", dict(num_steps=200, time_grid="uniform", eps=0.0, denoise=False)),
    ("flow", "ode_heun_t", dict(num_steps=25, time_grid="uniform", eps=0.0, denoise=False)),
    ("flow", "sit_sde", dict(num_steps=250)),
    ("flow", "dpm_solver", dict(num_steps=20)),
    ("flow", "pc", dict(num_steps=200)),
    ("edm", "edm_heun", dict(num_steps=40)),
    ("edm", "edm_heun", dict(num_steps=64, S_churn=20.0, S_min=0.01, S_max=1.0)),
    ("edm", "dpm_solver", dict(num_steps=20)),
]


@pytest.mark.parametrize("process_name,name,options", PROCESS_CASES,
                         ids=[f"{p}-{s}-{len(o)}" for p, s, o in PROCESS_CASES])
def test_samplers_reproduce_mixture_on_every_process(process_name, name, options):
    from diffjax.diffusion.processes import PROCESSES

    process = PROCESSES[process_name]()
    result = run_sampler(name, process, 10_000, score_fn=MIXTURE.model_fn(process), **options)
    eps = options.get("eps", resolve_eps(process, None))
    ends_at_data = name in ("edm_heun", "ddpm", "sit_sde")
    check_mixture_moments(np.asarray(result.samples, np.float64), process,
                          0.0 if ends_at_data else eps)


# --- fixed-step solvers converge at their order ---------------------------------------------


@functools.lru_cache(maxsize=None)
def _reference_solution(sde_name):
    """A very fine PF-ODE solve from a fixed x_T (Heun, 1000 steps: error ~1e-5, float32 floor)."""
    return _final_x(sde_name, "ode_heun_t", num_steps=1000)


def _final_x(sde_name, name, **options):
    out = run_sampler(name, SDES[sde_name], 256, rng=1, denoise=False, time_grid="edm", **options)
    return np.asarray(out.samples, np.float64)


def _error(sde_name, name, **options):
    x = _final_x(sde_name, name, **options)
    return np.sqrt(np.mean((x - _reference_solution(sde_name)) ** 2))


@pytest.mark.parametrize("sde_name", SDES)
def test_ode_euler_and_heun_converge_at_their_order(sde_name):
    # Same x_T (same rng) for every run; the error of the final x against the reference solve.
    # Step counts sit in the asymptotic regime on all three SDEs (measured ratios: Euler
    # 1.8-2.1, Heun 3.6-4.2) and keep the errors far above the reference's own.
    euler = _error(sde_name, "ode_euler", num_steps=50) / _error(sde_name, "ode_euler",
                                                                  num_steps=100)
    heun = _error(sde_name, "ode_heun_t", num_steps=40) / _error(sde_name, "ode_heun_t",
                                                                 num_steps=80)
    assert 1.6 <= euler <= 2.5, euler
    assert 3.0 <= heun <= 5.0, heun


@pytest.mark.parametrize("sde_name", SDES)
def test_dpm_solver_multistep_converges_at_its_order(sde_name):
    # Halving h in lambda divides the error by ~2^order. "taylor_exact" (the default) is third
    # order; the official 3M ("dpmsolver" and "taylor" solver types) halves the second-derivative
    # term and is second order (module docstring). Measured ratios: see the bands' comments.
    cases = {  # (algorithm_type, order, solver_type): band (measured on vp, subvp, ve)
        ("dpmsolver++", 1, "taylor_exact"): (1.6, 2.5),  # 2.0
        ("dpmsolver++", 2, "taylor_exact"): (3.0, 5.5),  # 4.4-4.5
        ("dpmsolver++", 3, "taylor_exact"): (6.0, 13.0),  # 8.7-9.9
        ("dpmsolver++", 3, "dpmsolver"): (3.0, 5.5),  # 3.6-4.7: the official 3M
        ("dpmsolver", 3, "taylor_exact"): (5.0, 13.0),  # 6.3-7.0
        ("dpmsolver", 3, "dpmsolver"): (3.0, 5.5),  # 4.6
    }
    for (algorithm_type, order, solver_type), (lo, hi) in cases.items():
        options = dict(order=order, solver_type=solver_type, algorithm_type=algorithm_type)
        coarse = _error(sde_name, "dpm_solver", num_steps=40, **options)
        fine = _error(sde_name, "dpm_solver", num_steps=80, **options)
        assert lo <= coarse / fine <= hi, (options, coarse / fine)


@pytest.mark.parametrize("sde_name,grid", [("vp", "log_snr"), ("subvp", "uniform"), ("ve", "edm")])
def test_dpm_solver_order1_is_ddim(sde_name, grid):
    # Algebraically identical (see dpm_solver_multistep.py); in float32 they agree to ~3e-6
    # over 20 steps.
    sde = SDES[sde_name]
    common = dict(num_steps=20, time_grid=grid, denoise=False)
    dpm = run_sampler("dpm_solver", sde, 256, order=1, **common).samples
    ddim = run_sampler("ddim", sde, 256, **common).samples
    np.testing.assert_allclose(np.asarray(dpm), np.asarray(ddim), atol=5e-5)


@pytest.mark.parametrize("model", ["score", "exact"])
def test_ddim_float32_error_on_ve_with_a_large_sigma_max(model):
    """DDIM on VE with sigma_max = 1348 (1000 steps, eps 1e-5): float32 against float64 from the
    same x_T. The step uses x0_hat = (x - sigma eps_hat) / alpha, consistent with the eps_hat it
    also uses; with the model's own x0_hat ((x + sigma^2 score) / alpha for a score model, the
    posterior mean for the exact one) rounding piled up. Median |x32 - x64| per sample measured:
    9.3e-7 (score) and 9.5e-7 (exact), against 6.8e-6 and 2.8e-5 before."""
    import dataclasses

    x_T = np.asarray(jax.random.normal(jax.random.key(0), (500, 2)), np.float64)

    @dataclasses.dataclass(frozen=True)
    class FixedPrior(VESDE):
        def prior_sample(self, rng, shape, dtype=None):
            return self.prior_std() * jnp.asarray(x_T, dtype)

    process = FixedPrior(sigma_max=1348.0)

    def final(float64):
        with jax.enable_x64(float64):
            fn = MIXTURE.score_fn(process) if model == "score" else MIXTURE.model_fn(process)
            out = jax.jit(lambda key: SAMPLERS["ddim"](key, fn, process, (500, 2), num_steps=1000,
                                                       eps=1e-5).samples)(jax.random.key(1))
            return np.asarray(out, np.float64)

    error = np.median(np.max(np.abs(final(False) - final(True)), axis=1))
    print(f"\nDDIM on VE(1348), {model} model: median float32 error {error:.2e}")
    assert error < 3e-6


# --- pieces ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sde_name", SDES)
def test_forward_transition_is_the_exact_kernel(sde_name):
    sde = SDES[sde_name]
    s, t, u = jnp.float32(0.1), jnp.float32(0.4), jnp.float32(0.7)
    a_st, v_st = forward_transition(sde, s, t)
    a_tu, v_tu = forward_transition(sde, t, u)
    a_su, v_su = forward_transition(sde, s, u)
    # Chapman-Kolmogorov: two steps compose into one.
    np.testing.assert_allclose(a_st * a_tu, a_su, rtol=1e-5)
    np.testing.assert_allclose(a_tu**2 * v_st + v_tu, v_su, rtol=1e-5)
    # It carries the marginal at s to the marginal at t.
    alpha_s, sigma_s = sde.marginal_coeffs(s)
    alpha_t, sigma_t = sde.marginal_coeffs(t)
    np.testing.assert_allclose(a_st * alpha_s, alpha_t, rtol=1e-5)
    np.testing.assert_allclose(a_st**2 * sigma_s**2 + v_st, sigma_t**2, rtol=1e-5)
    if sde_name == "vp":  # score_sde's DDPM discretisation: a = sqrt(1 - beta_i), v = beta_i
        np.testing.assert_allclose(a_st**2 + v_st, 1.0, rtol=1e-6)
    if sde_name == "ve":  # score_sde's SMLD discretisation
        np.testing.assert_allclose(a_st, 1.0)
        np.testing.assert_allclose(v_st, sde.sigma(t) ** 2 - sde.sigma(s) ** 2, rtol=1e-5)


@pytest.mark.parametrize("sde_name", SDES)
def test_time_grids(sde_name):
    sde = SDES[sde_name]
    eps = resolve_eps(sde, None)
    n = 16
    for name in ("uniform", "edm", "log_snr"):
        grid = np.asarray(time_grid(name, sde, n, eps))
        assert grid.shape == (n + 1,)
        assert grid[0] == np.float32(sde.T) and grid[-1] == np.float32(eps)
        assert np.all(np.diff(grid) < 0), name
    # EDM: sigma~^(1/rho) is linear in the step index.
    rho = 7.0
    edm = np.asarray(noise_to_signal(sde, time_grid("edm", sde, n, eps, rho=rho)), np.float64)
    np.testing.assert_allclose(np.diff(edm ** (1 / rho), 2), 0.0, atol=2e-5)
    # log-SNR grid: constant steps in log-SNR.
    lam = np.asarray(sde.log_snr(time_grid("log_snr", sde, n, eps)), np.float64)
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=2e-3)


def test_errors_name_the_valid_choices():
    sde = SDES["vp"]
    with pytest.raises(ValueError, match="euler_maruyama"):
        sampler_options(ml_collections.ConfigDict({"method": "heun"}))
    with pytest.raises(ValueError, match="log_snr"):
        run_sampler("ode_euler", sde, 4, num_steps=2, time_grid="karras")
    with pytest.raises(ValueError, match="reverse_diffusion"):
        run_sampler("pc", sde, 4, num_steps=2, predictor="ancestral")
    with pytest.raises(ValueError, match="tsit5"):
        run_sampler("ode_adaptive", sde, 4, solver="rk45")
    with pytest.raises(ValueError, match=r"\(1, 2, 3\)"):
        run_sampler("dpm_solver", sde, 4, num_steps=2, order=4)
    with pytest.raises(ValueError, match="taylor_exact"):
        run_sampler("dpm_solver", sde, 4, num_steps=2, solver_type="taylor3")
    with pytest.raises(ValueError, match="renamed: use ode_heun_t.*edm_heun"):
        sampler_options(ml_collections.ConfigDict({"method": "ode_heun"}))
    with pytest.raises(ValueError, match="learned"):
        run_sampler("ddpm", sde, 4, num_steps=2, variance="learned")
    with pytest.raises(ValueError, match="discrete"):
        run_sampler("ddim", sde, 4, num_steps=2, time_grid="discrete")


def test_sampler_options_match_signatures_and_defaults():
    for name, sampler in SAMPLERS.items():
        params = inspect.signature(sampler).parameters.values()
        keyword_only = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        assert set(SAMPLER_OPTIONS[name]) == keyword_only, name
        assert set(SAMPLER_OPTIONS[name]) <= set(CONFIG_DEFAULTS), name
    # Missing keys fall back to the defaults; None means "the sampler's own default".
    options = sampler_options(ml_collections.ConfigDict({"method": "dpm_solver"}))
    assert options == {"num_steps": 1000, "rho": 7.0, "denoise": True, "order": 3,
                       "algorithm_type": "dpmsolver++", "solver_type": "taylor_exact",
                       "lower_order_final": True}
    config = ml_collections.ConfigDict({"method": "pc", "num_steps": 7, "eps": 1e-3,
                                        "snr": 0.2, "order": 2, "time_grid": "uniform"})
    assert sampler_options(config) == {
        "num_steps": 7, "eps": 1e-3, "time_grid": "uniform", "rho": 7.0, "denoise": True,
        "predictor": "reverse_diffusion", "snr": 0.2, "corrector_steps": 1,
    }


def test_sample_entry_point_and_static_jit():
    sde = SDES["subvp"]
    config = ml_collections.ConfigDict({"method": "pc", "num_steps": 5, "corrector_steps": 1})
    score_fn = MIXTURE.score_fn(sde)
    result = jax.jit(lambda rng: sample(config, rng, score_fn, sde, (8, 2)))(
        jax.random.PRNGKey(0))
    assert isinstance(result, SampleResult)
    assert result.samples.shape == (8, 2) and int(result.nfe) == 11
    # Everything but rng as static arguments.
    jitted = jax.jit(SAMPLERS["dpm_solver"], static_argnums=(1, 2, 3),
                     static_argnames=("num_steps", "order", "denoise"))
    out = jitted(jax.random.PRNGKey(0), score_fn, sde, (8, 2), num_steps=4, order=2, denoise=False)
    assert out.samples.shape == (8, 2) and int(out.nfe) == 4


# --- batch sharding over 8 simulated devices ---------------------------------------------------

_SHARDING_SCRIPT = textwrap.dedent(
    """
    import os, re, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    sys.path[:0] = [{repo!r}, {tests!r}]
    import functools
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from diffjax.sampling import SAMPLERS, SampleResult
    from diffjax.diffusion.processes import VPSDE, VESDE
    from gaussian_mixture import two_d_mixture

    assert jax.device_count() == 8
    mixture = two_d_mixture()
    mesh = jax.make_mesh((8,), ("data",))
    out_shardings = SampleResult(NamedSharding(mesh, P("data")), NamedSharding(mesh, P()))
    cases = [
        ("euler_maruyama", VPSDE(), dict(num_steps=20)),
        ("pc", VESDE(), dict(num_steps=10)),
        ("ode_heun_t", VPSDE(), dict(num_steps=10)),
        ("dpm_solver", VESDE(), dict(num_steps=10)),
        ("ode_adaptive", VPSDE(), dict()),
        ("edm_heun", VESDE(), dict(num_steps=6, S_churn=10.0)),
        ("ddpm", VPSDE(), dict(num_steps=10)),
    ]
    for name, sde, options in cases:
        fn = functools.partial(SAMPLERS[name], score_fn=mixture.score_fn(sde), sde=sde,
                               shape=(64, 2), **options)
        key = jax.random.PRNGKey(3)
        reference = jax.jit(fn)(key)
        compiled = jax.jit(fn, out_shardings=out_shardings).lower(key).compile()
        hlo = compiled.as_text()
        sharded = compiled(key)
        assert sharded.samples.sharding.spec == P("data"), name
        np.testing.assert_allclose(np.asarray(sharded.samples), np.asarray(reference.samples),
                                   rtol=1e-4, atol=1e-4, err_msg=name)
        assert int(sharded.nfe) == int(reference.nfe), name
        # Nothing gathers the batch, nothing calls back to the host, and after partitioning no
        # array has the full batch: every device works on its own 8 examples.
        assert "all-gather" not in hlo, name
        assert "callback" not in hlo.lower(), name
        assert not re.search(r"f32\\[64,2\\]", hlo), name
        print("ok", name)
    """
)


def test_sharded_sampling_matches_unsharded():
    script = _SHARDING_SCRIPT.format(repo=REPO, tests=TESTS_DIR)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert proc.stdout.count("ok") == 7
