"""diffjax's multistep DPM-Solver against the official `dpm_solver_pytorch.py` on an exact score.

tests/fixtures/dpm_solver_reference.npz (tools/make_dpm_solver_fixture.py) holds the official
solver's float64 output from fixed x_T on the 2-D Gaussian mixture's exact noise prediction:
orders 1-3, "dpmsolver++" and "dpmsolver", solver types "dpmsolver" and "taylor", log-SNR and
uniform time grids, 6 steps (official lower_order_final) and 12, on the continuous VP SDE and on
discrete DDPM (piecewise-linear log alpha). diffjax runs the same solves under x64 through its
public `dpm_solver` (the prior draw replaced by the fixture's x_T) and must agree to float64
round-off: measured max |difference| 4.5e-14.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gaussian_mixture import two_d_mixture

from diffjax.diffusion.processes import VPSDE, DiscreteDDPM
from diffjax.sampling import dpm_solver

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                       "dpm_solver_reference.npz")
GRIDS = {"logSNR": "log_snr", "time_uniform": "uniform"}


def replaying(cls, x_T):
    """The process `cls` whose prior draw is the fixture's x_T."""

    @dataclasses.dataclass(frozen=True)
    class Replay(cls):
        def prior_sample(self, rng, shape, dtype=None):
            return jnp.asarray(x_T)

    return Replay()


@pytest.mark.parametrize("schedule", ["linear", "discrete"])
def test_matches_the_official_solver(schedule):
    reference = np.load(FIXTURE)
    x_T = reference["x_T"]
    keys = [k for k in reference.files if k.startswith(schedule + "/")]
    assert len(keys) == 48
    # Half of them keep the test fast and still cover every order, algorithm and solver type,
    # both grids, and both sides of the official lower_order_final threshold (10 steps).
    keys = [k for k in keys if k.endswith("/6") == ("/logSNR/" in k)]
    worst = 0.0
    with jax.enable_x64(True):
        process = replaying(VPSDE if schedule == "linear" else DiscreteDDPM, x_T)
        model = two_d_mixture().model_fn(process)
        for key in keys:
            _, grid, order, algorithm, solver_type, steps = key.split("/")
            out = dpm_solver(jax.random.key(0), model, process, x_T.shape, num_steps=int(steps),
                             order=int(order), algorithm_type=algorithm, solver_type=solver_type,
                             lower_order_final=True, eps=1e-3, time_grid=GRIDS[grid],
                             denoise=False)
            assert out.samples.dtype == jnp.float64
            error = float(np.max(np.abs(np.asarray(out.samples) - reference[key])))
            worst = max(worst, error)
            assert error < 1e-10, (key, error)
    print(f"\n{schedule}: max |diffjax - official| = {worst:.2e}")


def test_taylor_exact_differs_from_the_official_3m_only_at_order_3():
    reference = np.load(FIXTURE)
    x_T = reference["x_T"]
    with jax.enable_x64(True):
        process = replaying(VPSDE, x_T)
        model = two_d_mixture().model_fn(process)
        common = dict(eps=1e-3, time_grid="log_snr", denoise=False, algorithm_type="dpmsolver++")
        for order in (2, 3):
            ours = dpm_solver(jax.random.key(0), model, process, x_T.shape, num_steps=12,
                              order=order, solver_type="taylor_exact", **common).samples
            official = reference[f"linear/logSNR/{order}/dpmsolver++/taylor/12"]
            error = np.max(np.abs(np.asarray(ours) - official))
            assert (error < 1e-10) == (order == 2), (order, error)
