"""Write tests/fixtures/schedulers/: diffusers' own schedulers, step by step, on an analytic model.

For every case below, `<case>/scheduler_config.json` holds the scheduler config (the published
Stable Diffusion files where the case is one, transcribed: this machine has no network) and
`steps.npz` holds, per case and step count N, what diffusers' scheduler does in a Stable
Diffusion pipeline's loop:

    scheduler.set_timesteps(N); x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t); out = model(x_in, t)
        x = scheduler.step(out, t, x, **kwargs).prev_sample

with the deterministic "network" out = a(t) x_in + b(t) sin(x_in) (t the timestep fed to the
network, a and b smooth in t, one pair per prediction type so that the trajectories stay
bounded) on fixed noise of shape (2, 4, 2, 2) (the model is elementwise, so a small latent
covers every path). Keys `<case>/<N>/<dtype>/...`:
- `timesteps` [K] (K = the number of network calls), `latents` [K, ...] after each step,
  `model_inputs` [K, ...] (Euler only: the others feed the latents unscaled, so their inputs
  are the initial latents followed by `latents[:-1]`), `init_noise_sigma`;
- Euler / DPM-Solver: `sigmas` [N + 1], diffusers' float32 noise-level table;
- DDIM with eta: `noises` [N, ...], passed to `step` as `variance_noise`.
dtype "float32": diffusers as it runs, float32 latents. dtype "float64": the same step code on
float64 tensors: after `set_timesteps` the scheduler's tables (alphas_cumprod,
final_alpha_cumprod, sigmas) are promoted to float64 (their float32 values kept) and the
scheduler module's `torch.float32` is read as float64 while the loop runs, which turns the
`sample.to(torch.float32)` of Euler's and DPM-Solver's `step` into a no-op; without that
diffusers computes its scalar coefficients in float32 and rounds the latents to float32 inside
those steps even for float64 latents. The table values themselves stay diffusers' float32 ones.
Also stored: `alphas_cumprod/<beta_schedule>` (diffusers' float32 table, N_train = 1000),
`sigma_table/scaled_linear` (its float32 sqrt((1 - abar) / abar)), and per case `config/<case>`,
diffusers' resolved config (JSON), to check the defaults diffjax fills in.

Regenerate from the repository root (torch + diffusers 0.42.1, never diffjax's .venv):

    toolsenv/bin/python tools/make_scheduler_fixtures.py

Test: tests/test_schedulers.py.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers.schedulers import (scheduling_ddim, scheduling_dpmsolver_multistep,
                                  scheduling_euler_discrete, scheduling_pndm)

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "schedulers"
SHAPE = (2, 4, 2, 2)

# Stable Diffusion's published scheduler_config.json files (transcribed).
SD15 = {  # runwayml/stable-diffusion-v1-5, scheduler/scheduler_config.json
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "clip_sample": False,
}
SD21 = {  # stabilityai/stable-diffusion-2-1 (768, v-prediction)
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
SDXL = {  # stabilityai/stable-diffusion-xl-base-1.0
    "_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading",
    "trained_betas": None, "use_karras_sigmas": False,
}
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}

# case -> (config, step counts, step kwargs). 25 steps for SD's published configs and DPM++ 2M
# (Karras) only, so that the fixture stays under 300 KB; 16 steps pass DPM-Solver's
# lower_order_final limit (15).
CASES = {
    # SD 1.5's files, as PNDM (published) and as DDIM (DDIMScheduler.from_config).
    "sd15_pndm": (SD15, (1, 2, 7, 25), {}),
    "sd15_ddim": ({**SD15, "_class_name": "DDIMScheduler"}, (1, 2, 7, 25), {}),
    "sd15_ddim_eta": ({**SD15, "_class_name": "DDIMScheduler"}, (7,), {"eta": 0.5}),
    # DDIM trailing on the linear schedule with set_alpha_to_one and clip_sample (defaults).
    "ddim_trailing": ({"_class_name": "DDIMScheduler", "timestep_spacing": "trailing"},
                      (1, 2, 7), {}),
    "ddim_linspace_sample": ({"_class_name": "DDIMScheduler", **SD_BETAS, "clip_sample": True,
                              "clip_sample_range": 1.5, "timestep_spacing": "linspace",
                              "prediction_type": "sample"}, (7,), {}),
    "sd21_ddim_v": (SD21, (7,), {}),
    "sd21_pndm_v": ({**SD21, "_class_name": "PNDMScheduler"}, (7,), {}),
    # SD 2.1 with Euler: EulerDiscreteScheduler.from_config(pipe.scheduler.config) keeps the
    # DDIM's leading spacing.
    "sd21_euler_v": ({**SD21, "_class_name": "EulerDiscreteScheduler",
                      "timestep_spacing": "leading"}, (1, 2, 7), {}),
    # ... while EulerDiscreteScheduler.from_pretrained on the file itself (SD 2.x's model
    # cards) takes Euler's default "linspace": the file has no timestep_spacing.
    "sd21_euler_v_linspace": ({**SD21, "_class_name": "EulerDiscreteScheduler"}, (1, 7), {}),
    "sdxl_euler": (SDXL, (1, 2, 7, 25), {}),
    # Karras sigmas, Euler's default linspace spacing (fractional timesteps).
    "euler_karras": ({"_class_name": "EulerDiscreteScheduler", **SD_BETAS,
                      "use_karras_sigmas": True}, (1, 2, 7), {}),
    "euler_linspace_sigma_min": ({"_class_name": "EulerDiscreteScheduler", **SD_BETAS,
                                  "final_sigmas_type": "sigma_min"}, (7,), {}),
    # DPM++ 2M (SD's betas, diffusers' defaults: linspace, order 2, midpoint, lower_order_final).
    "dpmpp_2m": ({"_class_name": "DPMSolverMultistepScheduler", **SD_BETAS, "steps_offset": 1},
                 (1, 2, 7, 25), {}),
    "dpmpp_2m_karras": ({"_class_name": "DPMSolverMultistepScheduler", **SD_BETAS,
                         "steps_offset": 1, "use_karras_sigmas": True}, (1, 2, 7, 25), {}),
    "dpmpp_2m_sigma_min_v": ({"_class_name": "DPMSolverMultistepScheduler", **SD_BETAS,
                              "steps_offset": 1, "timestep_spacing": "leading",
                              "final_sigmas_type": "sigma_min", "prediction_type": "v_prediction"},
                             (7, 16), {}),
    "dpmpp_3m_heun_trailing": ({"_class_name": "DPMSolverMultistepScheduler", **SD_BETAS,
                                "solver_order": 3, "solver_type": "heun",
                                "timestep_spacing": "trailing", "euler_at_final": True,
                                "final_sigmas_type": "sigma_min"}, (7, 16), {}),
    # (With Karras sigmas the cosine schedule repeats its first timestep, and diffusers' step
    # index then starts at the repeat and runs past the table: not a case to pin.)
    "dpmpp_2m_cosine": ({"_class_name": "DPMSolverMultistepScheduler",
                         "beta_schedule": "squaredcos_cap_v2"}, (7,), {}),
}

MODULES = {
    "DDIMScheduler": scheduling_ddim,
    "PNDMScheduler": scheduling_pndm,
    "EulerDiscreteScheduler": scheduling_euler_discrete,
    "DPMSolverMultistepScheduler": scheduling_dpmsolver_multistep,
}


def coefficients(prediction_type: str, t: float) -> tuple[float, float]:
    """a(t), b(t) of the analytic model (tests/test_schedulers.py writes the same)."""
    if prediction_type == "epsilon":  # roughly sqrt(1 - abar): x0_hat stays O(1)
        return 0.1 + 0.85 * t / 1000, 0.1 * math.cos(t / 150)
    if prediction_type == "v_prediction":
        return 0.2 * math.cos(t / 300) - 0.1, 0.15 * math.sin(t / 200)
    return 0.8 - 0.3 * t / 1000, 0.05 * math.cos(t / 100)  # "sample": x0_hat


def model(x: torch.Tensor, t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    a, b = coefficients(prediction_type, float(t))
    return a * x + b * torch.sin(x)


class _Float64Torch:
    """The module `torch` as a scheduler module sees it during a float64 run: torch.float32 is
    float64 (only `step` and `scale_model_input` run under it)."""

    def __getattr__(self, name):
        return torch.float64 if name == "float32" else getattr(torch, name)


@contextlib.contextmanager
def float64_steps(scheduler):
    for name in ("alphas_cumprod", "final_alpha_cumprod", "sigmas"):
        value = getattr(scheduler, name, None)
        if isinstance(value, torch.Tensor):
            setattr(scheduler, name, value.to(torch.float64))
    module = MODULES[type(scheduler).__name__]
    module.torch = _Float64Torch()
    try:
        yield
    finally:
        module.torch = torch


def run(config: dict, num_steps: int, dtype: torch.dtype, noise: np.ndarray, kwargs: dict,
        variance_noises: np.ndarray | None) -> dict[str, np.ndarray]:
    cls = getattr(diffusers, config["_class_name"])
    scheduler = cls.from_config(config)
    scheduler.set_timesteps(num_steps)
    prediction_type = scheduler.config.prediction_type
    record = {"timesteps": scheduler.timesteps.numpy().astype(np.float64)}
    if hasattr(scheduler, "sigmas") and cls is not diffusers.DDIMScheduler:
        record["sigmas"] = scheduler.sigmas.numpy().astype(np.float64)
    context = float64_steps(scheduler) if dtype == torch.float64 else contextlib.nullcontext()
    inputs, latents = [], []
    with context:
        init = scheduler.init_noise_sigma
        record["init_noise_sigma"] = np.float64(float(init))
        x = torch.as_tensor(noise, dtype=dtype) * init
        for k, t in enumerate(scheduler.timesteps):
            x_in = scheduler.scale_model_input(x, t)
            out = model(x_in, t, prediction_type)
            step_kwargs = dict(kwargs)
            if variance_noises is not None:
                step_kwargs["variance_noise"] = torch.as_tensor(variance_noises[k], dtype=dtype)
            x = scheduler.step(out, t, x, **step_kwargs).prev_sample
            assert x.dtype == dtype, (x.dtype, dtype)
            inputs.append(x_in.numpy())
            latents.append(x.numpy())
    record["latents"] = np.stack(latents)
    if cls is diffusers.EulerDiscreteScheduler:
        record["model_inputs"] = np.stack(inputs)
    else:
        expected = np.concatenate([np.asarray(inputs[:1]), record["latents"][:-1]])
        assert np.array_equal(np.stack(inputs), expected)
    return record


def main():
    assert diffusers.__version__ == "0.42.1", diffusers.__version__
    rs = np.random.RandomState(0)
    noise = rs.randn(*SHAPE)
    out = {"noise": noise}
    for schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        scheduler = diffusers.DDIMScheduler(beta_schedule=schedule, beta_start=0.00085
                                            if schedule == "scaled_linear" else 0.0001,
                                            beta_end=0.012 if schedule == "scaled_linear"
                                            else 0.02)
        assert scheduler.alphas_cumprod.dtype == torch.float32
        out[f"alphas_cumprod/{schedule}"] = scheduler.alphas_cumprod.numpy()
    euler = diffusers.EulerDiscreteScheduler(**SD_BETAS)
    alphas_cumprod = euler.alphas_cumprod
    out["sigma_table/scaled_linear"] = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).numpy()
    for case, (config, step_counts, kwargs) in CASES.items():
        folder = FIXTURES / case
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "scheduler_config.json").write_text(json.dumps(config, indent=2) + "\n")
        cls = getattr(diffusers, config["_class_name"])
        resolved = {k: v for k, v in cls.from_config(config).config.items()
                    if not k.startswith("_")}  # (private keys hold sets: unordered)
        out[f"config/{case}"] = np.array(json.dumps(resolved, sort_keys=True))
        for num_steps in step_counts:
            variance_noises = (rs.randn(num_steps, *SHAPE) if kwargs.get("eta") else None)
            for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
                noise_in = noise.astype(np.float32) if dtype == torch.float32 else noise
                vn = None if variance_noises is None else (
                    variance_noises.astype(np.float32) if dtype == torch.float32
                    else variance_noises)
                record = run(config, num_steps, dtype, noise_in, kwargs, vn)
                if vn is not None:
                    record["noises"] = vn
                for key, value in record.items():
                    out[f"{case}/{num_steps}/{name}/{key}"] = value
    path = FIXTURES / "steps.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB, {len(out)} arrays)")


if __name__ == "__main__":
    main()
