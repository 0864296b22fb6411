"""Write tests/fixtures/dpm_solver_reference.npz: the official multistep DPM-Solver, exact score.

The official `dpm_solver_pytorch.py` (LuChengTHU/dpm-solver) samples the 2-D Gaussian mixture of
tests/gaussian_mixture.py (`two_d_mixture`) through its exact noise prediction, in float64, from
fixed x_T: multistep, orders 1-3, both algorithm types ("dpmsolver++", "dpmsolver"), both solver
types ("dpmsolver", "taylor"), time grids "logSNR" and "time_uniform", 6 steps (the official
lower_order_final applies below 10 steps) and 12 steps, on two noise schedules:
- "linear": NoiseScheduleVP('linear', 0.1, 20), diffjax's VP SDE;
- "discrete": NoiseScheduleVP('discrete', betas=linspace(1e-4, 0.02, 1000)), diffjax's DDPM.
Solves go from t = 1 to t = 1e-3, without denoise_to_zero. tests/test_dpm_solver.py runs
diffjax's `dpm_solver` on the same x_T under x64 and compares.

Needs torch (never part of diffjax) and a checkout of the reference:

    git clone https://github.com/LuChengTHU/dpm-solver /tmp/ref/dpm-solver
    toolsenv/bin/python tools/make_dpm_solver_fixture.py --reference /tmp/ref/dpm-solver

(any Python with torch and numpy works; pip install torch numpy).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "dpm_solver_reference.npz"

# tests/gaussian_mixture.py: two_d_mixture()
WEIGHTS = np.array([0.3, 0.7])
MEANS = np.array([[-1.5, -0.5], [1.0, 1.0]])
COVS = np.array([[[0.30, 0.12], [0.12, 0.20]], [[0.25, -0.10], [-0.10, 0.35]]])


def mixture_noise(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[eps | x_t] = -sigma grad log p_t(x) for the mixture, float64, x [B, 2], alpha/sigma [B]."""
    means = torch.as_tensor(MEANS)
    covs = torch.as_tensor(COVS)
    weights = torch.as_tensor(WEIGHTS / WEIGHTS.sum())
    a, s = alpha[:, None, None, None], sigma[:, None, None, None]
    cov_t = a**2 * covs[None] + s**2 * torch.eye(2, dtype=torch.float64)  # [B, K, 2, 2]
    resid = x[:, None, :] - alpha[:, None, None] * means[None]  # [B, K, 2]
    precision = torch.linalg.inv(cov_t)
    solved = torch.einsum("bkij,bkj->bki", precision, resid)
    log_norm = -0.5 * (torch.einsum("bki,bki->bk", resid, solved) + torch.logdet(cov_t)
                       + 2 * np.log(2 * np.pi))
    resp = torch.softmax(torch.log(weights)[None] + log_norm, dim=-1)
    score = -torch.einsum("bk,bki->bi", resp, solved)
    return -sigma[:, None] * score


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="folder with dpm_solver_pytorch.py")
    args = parser.parse_args()
    sys.path.insert(0, args.reference)
    import dpm_solver_pytorch as official  # noqa: E402

    # The official code builds its time grids with torch.tensor / torch.linspace defaults.
    torch.set_default_dtype(torch.float64)
    rng = np.random.default_rng(0)
    x_T = rng.standard_normal((16, 2))
    schedules = {
        "linear": official.NoiseScheduleVP("linear", continuous_beta_0=0.1, continuous_beta_1=20.0,
                                           dtype=torch.float64),
        "discrete": official.NoiseScheduleVP(
            "discrete", betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64),
            dtype=torch.float64),
    }
    out = {"x_T": x_T}
    for (name, ns), skip, order, algorithm, solver_type, steps in itertools.product(
            schedules.items(), ("logSNR", "time_uniform"), (1, 2, 3),
            ("dpmsolver++", "dpmsolver"), ("dpmsolver", "taylor"), (6, 12)):
        def model(x, t_input, ns=ns):
            # Recover continuous time from the wrapper's model input (identity for continuous
            # schedules, 1000 (t - 1/N) for discrete ones).
            t = t_input / 1000.0 + 1.0 / ns.total_N if ns.schedule == "discrete" else t_input
            return mixture_noise(x, ns.marginal_alpha(t), ns.marginal_std(t))

        model_fn = official.model_wrapper(model, ns, model_type="noise")
        solver = official.DPM_Solver(model_fn, ns, algorithm_type=algorithm)
        x = solver.sample(torch.as_tensor(x_T), steps=steps, t_start=1.0, t_end=1e-3,
                          order=order, skip_type=skip, method="multistep",
                          lower_order_final=True, solver_type=solver_type)
        out[f"{name}/{skip}/{order}/{algorithm}/{solver_type}/{steps}"] = x.numpy()
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE, **out)
    print(f"wrote {len(out) - 1} solves to {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
