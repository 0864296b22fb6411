"""Inpainting by replacement on a correlated 2-D Gaussian with the exact score.

Condition on x1 = a and look at x2. The exact conditional is Gaussian with
    mean mu2 + S21 / S11 (a - mu1) = 0.5,   variance S22 - S21^2 / S11 = 0.36.
Replacement (score_sde) reaches it only with Langevin correction; without a corrector its limit
law is a different Gaussian, which we also derive exactly and check, so that both the
implementation and the method's known bias are pinned down.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gaussian_mixture import GaussianMixture
from scipy.integrate import solve_ivp

from diffjax.diffusion.processes import VESDE, VPSDE, SubVPSDE
from diffjax.sampling.inpainting import inpaint
from diffjax.sampling.time_grids import resolve_eps

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
MU = np.array([0.5, -0.3])
COV = np.array([[1.0, 0.8], [0.8, 1.0]])
GAUSSIAN = GaussianMixture(np.ones(1), MU[None], COV[None])
A = 1.5  # the known value of x1
COND_MEAN = MU[1] + COV[1, 0] / COV[0, 0] * (A - MU[0])
COND_VAR = COV[1, 1] - COV[1, 0] ** 2 / COV[0, 0]
N = 20_000


def _inpaint(sde, method, **options):
    x_known = jnp.tile(jnp.array([[A, 0.0]], jnp.float32), (N, 1))  # x2's value is ignored
    mask = jnp.array([1.0, 0.0])
    fn = functools.partial(inpaint, score_fn=GAUSSIAN.score_fn(sde), sde=sde, x_known=x_known,
                           mask=mask, method=method, **options)
    result = jax.jit(fn)(jax.random.PRNGKey(0))
    x = np.asarray(result.samples, np.float64)
    np.testing.assert_array_equal(x[:, 0], np.float32(A))  # the known pixel is kept exactly
    return x[:, 1], int(result.nfe)


def _check_moments(x2, mean, var, allowance):
    # Tolerance: 4.5 standard errors of the sample mean / variance (Gaussian: s.e. of the
    # variance is var sqrt(2 / n)) plus `allowance` for the time discretisation (and, with a
    # corrector, the bias of unadjusted Langevin at snr 0.16).
    se_mean = np.sqrt(var / N)
    se_var = var * np.sqrt(2.0 / N)
    assert abs(x2.mean() - mean) < 4.5 * se_mean + allowance, (x2.mean(), mean)
    assert abs(x2.var() - var) < 4.5 * se_var + allowance, (x2.var(), var)


@pytest.mark.parametrize("sde_name", SDES)
def test_pc_inpainting_gives_the_exact_conditional(sde_name):
    x2, nfe = _inpaint(SDES[sde_name], "pc", num_steps=500, corrector_steps=1)
    assert nfe == 500 * 2 + 1
    _check_moments(x2, COND_MEAN, COND_VAR, allowance=0.02)


def replacement_limit_law(sde, eps):
    """Mean and variance of x2 that replacement without a corrector converges to.

    In the continuous-time limit x2 follows the reverse SDE with drift f x2 - g^2 s2(x1_t, x2),
    where x1_t = alpha a + sigma z is redrawn at every step: its fluctuation enters each step as
    O(dt) times an independent O(1) draw, which averages out, so x2 effectively sees x1 at its
    mean alpha(t) a. With s2 = -[Lambda (x - alpha mu)]_2, Lambda = (alpha^2 S + sigma^2 I)^-1,
    the mean m and variance v of x2 obey, backwards from the prior at T,
        dm/dt = f m - g^2 s2(alpha a, m),   dv/dt = 2 (f + g^2 Lambda_22) v - g^2.
    """

    def rhs(t, state):
        m, v = state
        t32 = jnp.float32(t)
        alpha, sigma = (float(c) for c in sde.marginal_coeffs(t32))
        f = float(sde.drift_coeff(t32))
        g2 = float(sde.diffusion(t32)) ** 2
        lam = np.linalg.inv(alpha**2 * COV + sigma**2 * np.eye(2))
        s2 = -(lam[1, 0] * alpha * (A - MU[0]) + lam[1, 1] * (m - alpha * MU[1]))
        return [f * m - g2 * s2, 2 * (f + g2 * lam[1, 1]) * v - g2]

    sol = solve_ivp(rhs, (sde.T, eps), [0.0, sde.prior_std() ** 2], method="LSODA",
                    rtol=1e-8, atol=1e-10)
    return sol.y[0, -1], sol.y[1, -1]


@pytest.mark.parametrize(
    "method,sde_name", [("euler_maruyama", "vp"), ("reverse_diffusion", "subvp"),
                        ("reverse_diffusion", "ve")])
def test_replacement_without_corrector_follows_its_limit_law(method, sde_name):
    sde = SDES[sde_name]
    x2, nfe = _inpaint(sde, method, num_steps=500)
    assert nfe == 500 + 1
    mean, var = replacement_limit_law(sde, resolve_eps(sde, None))
    _check_moments(x2, mean, var, allowance=0.02)
    # ... which is not the conditional: the regression on x1 is too weak (about 0.2 vs 0.5 here).
    assert abs(mean - COND_MEAN) > 0.2 and abs(x2.mean() - COND_MEAN) > 0.2


def test_inpainting_rejects_unknown_methods():
    with pytest.raises(ValueError, match="reverse_diffusion"):
        _inpaint(SDES["vp"], "ode_euler", num_steps=2)
