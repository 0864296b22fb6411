"""Write tests/fixtures/ddpm_reference.npz: DiT's discrete DDPM (facebookresearch/DiT `diffusion/`).

From DiT's own code (`create_diffusion`, `space_timesteps`, `GaussianDiffusion`):
- alphas_cumprod of the "linear" and "squaredcos_cap_v2" (cosine) schedules, 1000 steps;
- the steps `space_timesteps(1000, str(K))` keeps for several K;
- `p_sample_loop` with respacing "25" on the 2-D Gaussian mixture of tests/gaussian_mixture.py
  through its exact noise prediction at the original step n (DiT's _WrappedModel maps respaced
  indices to n), for the three variance types: FIXED_SMALL (beta~), FIXED_LARGE (beta) and
  LEARNED_RANGE with the variance channels v = tanh(0.3 x + n / 1000 - 0.5);
- `ddim_sample_loop` with respacing "25", eta 0 and 1;
- `training_losses` with a learned variance (LossType.MSE: "mse" + "vb") for fixed x0, steps
  (n = 0 included: the decoder NLL) and noise, with the same model output functions.
Every random draw DiT makes (torch.randn_like) is replaced by a stored float32 array, so
tests/test_ddpm.py replays them. clip_denoised=False as in DiT's sample.py. float32, as DiT runs.

Needs torch (never part of diffjax) and a checkout of DiT:

    mkdir -p /tmp/ref/DiT
    git clone https://github.com/facebookresearch/DiT /tmp/ref/DiT
    toolsenv/bin/python tools/make_ddpm_fixture.py --reference /tmp/ref/DiT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "ddpm_reference.npz"

# tests/gaussian_mixture.py: two_d_mixture()
WEIGHTS = np.array([0.3, 0.7])
MEANS = np.array([[-1.5, -0.5], [1.0, 1.0]])
COVS = np.array([[[0.30, 0.12], [0.12, 0.20]], [[0.25, -0.10], [-0.10, 0.35]]])
RESPACED_COUNTS = (1, 2, 7, 25, 50, 100, 250, 1000)


def mixture_noise(x, alpha, sigma):
    """E[eps | x_t] for the mixture, computed in float64, x [B, 2], alpha/sigma [B]."""
    x = x.double()
    means, covs = torch.as_tensor(MEANS), torch.as_tensor(COVS)
    weights = torch.as_tensor(WEIGHTS / WEIGHTS.sum())
    a, s = alpha[:, None, None, None], sigma[:, None, None, None]
    cov_t = a**2 * covs[None] + s**2 * torch.eye(2, dtype=torch.float64)
    resid = x[:, None, :] - alpha[:, None, None] * means[None]
    solved = torch.einsum("bkij,bkj->bki", torch.linalg.inv(cov_t), resid)
    log_norm = -0.5 * (torch.einsum("bki,bki->bk", resid, solved) + torch.logdet(cov_t))
    resp = torch.softmax(torch.log(weights)[None] + log_norm, dim=-1)
    return sigma[:, None] * torch.einsum("bk,bki->bi", resp, solved)


class ReplayNoise:
    """Stands in for torch.randn_like and records what it handed out."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.drawn = []

    def __call__(self, x, **kwargs):
        z = self.rng.standard_normal(tuple(x.shape)).astype(np.float32)
        self.drawn.append(z)
        return torch.as_tensor(z).to(x.dtype)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="a checkout of facebookresearch/DiT")
    args = parser.parse_args()
    sys.path.insert(0, args.reference)
    from diffusion import create_diffusion  # noqa: E402
    from diffusion import gaussian_diffusion as gd  # noqa: E402
    from diffusion.respace import space_timesteps  # noqa: E402

    out = {}
    for name in ("linear", "squaredcos_cap_v2"):
        betas = gd.get_named_beta_schedule(name, 1000)
        out[f"alphas_cumprod/{name}"] = np.cumprod(1.0 - betas)
    for count in RESPACED_COUNTS:
        out[f"space_timesteps/{count}"] = np.array(sorted(space_timesteps(1000, str(count))))

    abar = torch.as_tensor(np.cumprod(1.0 - gd.get_named_beta_schedule("linear", 1000)))

    def eps_model(x, n):
        a = abar[n].sqrt()
        return mixture_noise(x, a, (1.0 - abar[n]).sqrt()).float()

    def var_model(x, n):
        return torch.tanh(0.3 * x.float() + n.float()[:, None] / 1000.0 - 0.5)

    rng = np.random.default_rng(0)
    x_T = rng.standard_normal((16, 2)).astype(np.float32)
    out["x_T"] = x_T
    original_randn_like = torch.randn_like
    kinds = {"beta_tilde": dict(learn_sigma=False, sigma_small=True),
             "beta": dict(learn_sigma=False, sigma_small=False),
             "learned": dict(learn_sigma=True)}
    for kind, options in kinds.items():
        diffusion = create_diffusion("25", **options)

        def model(x, n, learned=options["learn_sigma"]):
            eps = eps_model(x, n)
            return torch.cat([eps, var_model(x, n)], dim=1) if learned else eps

        replay = ReplayNoise(1)
        torch.randn_like = replay
        sample = diffusion.p_sample_loop(model, x_T.shape, noise=torch.as_tensor(x_T),
                                         clip_denoised=False, device="cpu")
        torch.randn_like = original_randn_like
        out[f"p_sample/{kind}"] = sample.numpy()
        out[f"p_sample/{kind}/noise"] = np.stack(replay.drawn)
    for eta in (0.0, 1.0):
        diffusion = create_diffusion("25", learn_sigma=False)
        replay = ReplayNoise(2)
        torch.randn_like = replay
        sample = diffusion.ddim_sample_loop(eps_model, x_T.shape, noise=torch.as_tensor(x_T),
                                            clip_denoised=False, device="cpu", eta=eta)
        torch.randn_like = original_randn_like
        out[f"ddim/{eta:g}"] = sample.numpy()
        out[f"ddim/{eta:g}/noise"] = np.stack(replay.drawn)

    # Training loss with a learned variance: 8-bit data in [-1, 1], steps incl. n = 0.
    diffusion = create_diffusion("", learn_sigma=True)
    x0 = (rng.integers(0, 256, (16, 2)) / 127.5 - 1.0).astype(np.float32)
    n = np.array([0, 0, 1, 2, 5, 10, 50, 100, 200, 300, 500, 700, 900, 990, 998, 999])
    noise = rng.standard_normal((16, 2)).astype(np.float32)

    def train_model(x, n):
        return torch.cat([0.9 * eps_model(x, n), var_model(x, n)], dim=1)

    terms = diffusion.training_losses(train_model, torch.as_tensor(x0), torch.as_tensor(n),
                                      noise=torch.as_tensor(noise))
    out.update({"train/x0": x0, "train/n": n, "train/noise": noise,
                "train/mse": terms["mse"].numpy(), "train/vb": terms["vb"].numpy()})
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE, **out)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
