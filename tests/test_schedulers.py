"""diffusers' schedulers through diffjax.pipelines.schedulers against diffusers itself.

tests/fixtures/schedulers (tools/make_scheduler_fixtures.py, diffusers 0.42.1) holds diffusers'
DDIM, PNDM (PLMS), Euler and DPM-Solver++ schedulers run step by step in a Stable Diffusion loop
on an analytic "network" out = a(t) x + b(t) sin(x), from fixed noise, for Stable Diffusion's
published configs and the options around them, at 1, 2, 7 (not a divisor of 1000), 16 and 25
steps. Compared at every network call: the timestep, the network input, the latents after the
step (and so the first and the last step):
- float32: diffjax's own tables and float32 arithmetic against diffusers as it runs, to
  float32 rounding (relative 1e-5 of the latents' scale);
- float64: diffjax in float64 against diffusers' step code on float64 tensors, on diffusers'
  float32 tables (diffjax's alphas_cumprod are bit-identical; its sigma~ table differs from
  torch's float32 sqrt by one ulp in places, so the fixture's noise levels are given to it), to
  1e-10.
The tables are checked on their own: alphas_cumprod bit for bit, sigma~ to one float32 ulp,
timesteps exactly (Karras's fractional ones to float32 rounding).
"""

from __future__ import annotations

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.diffusion.processes import DiscreteDDPM
from diffjax.pipelines.schedulers import PREDICTIONS, load_scheduler, scheduler_from_config
from diffjax.sampling.ddim_sampler import ddim_update
from diffjax.sampling.plms_sampler import pndm_transfer

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "schedulers")


@functools.lru_cache(maxsize=None)
def reference():
    with np.load(os.path.join(FIXTURES, "steps.npz")) as data:
        return dict(data)


def cases() -> list[tuple[str, int]]:
    keys = {tuple(k.split("/")[:2]) for k in reference() if k.endswith("/float32/latents")}
    return sorted((case, int(steps)) for case, steps in keys)


def config(case: str) -> dict:
    with open(os.path.join(FIXTURES, case, "scheduler_config.json")) as f:
        return json.load(f)


def model_for(prediction_type: str):
    """The fixture's network, out = a(t) x + b(t) sin(x) (tools/make_scheduler_fixtures.py)."""

    def model_fn(x, t):
        t = t.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        if prediction_type == "epsilon":
            a, b = 0.1 + 0.85 * t / 1000, 0.1 * jnp.cos(t / 150)
        elif prediction_type == "v_prediction":
            a, b = 0.2 * jnp.cos(t / 300) - 0.1, 0.15 * jnp.sin(t / 200)
        else:
            a, b = 0.8 - 0.3 * t / 1000, 0.05 * jnp.cos(t / 100)
        return a * x + b * jnp.sin(x)

    return model_fn


def expected(case: str, steps: int, dtype: str) -> dict[str, np.ndarray]:
    prefix = f"{case}/{steps}/{dtype}/"
    out = {k[len(prefix):]: v for k, v in reference().items() if k.startswith(prefix)}
    if "model_inputs" not in out:  # unscaled inputs: the initial latents, then each step's
        first = reference()["noise"] * out["init_noise_sigma"]
        out["model_inputs"] = np.concatenate([first[None], out["latents"][:-1]])
    return out


def run_case(case: str, steps: int, dtype, *, fixture_tables: bool = False):
    scheduler = scheduler_from_config(config(case))
    schedule = scheduler.schedule(steps)
    ref = expected(case, steps, "float64" if dtype == jnp.float64 else "float32")
    if fixture_tables and hasattr(schedule, "sigmas"):  # DDIM's and PNDM's tables are exact
        schedule = schedule._replace(timesteps=ref["timesteps"], sigmas=ref["sigmas"])
    noise = jnp.asarray(reference()["noise"], dtype)
    noises = None if "noises" not in ref else jnp.asarray(ref["noises"], dtype)
    eta = 0.5 if "noises" in ref else 0.0
    with jax.disable_jit():  # one trajectory per case: eager is faster than compiling each
        x, trajectory = scheduler.run(model_for(scheduler["prediction_type"]), noise, schedule,
                                      eta=eta, noises=noises, record=True)
    return scheduler, x, jax.tree.map(np.asarray, trajectory), ref


# One step from t = 999 straight to the data (trailing spacing, set_alpha_to_one) divides by
# sqrt(abar_999) = 0.0064 of the linear schedule: float32 rounding (torch's and XLA's sqrt differ
# by an ulp) grows 150-fold there. Measured 1.9e-5; every other case <= 3.1e-6.
FLOAT32_TOLERANCE = {("ddim_trailing", 1): 3e-5}


def relative_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1.0))


# --- tables ---------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_alphas_cumprod_are_diffusers_bit_for_bit(schedule):
    start, end = (0.00085, 0.012) if schedule == "scaled_linear" else (0.0001, 0.02)
    process = DiscreteDDPM(beta_schedule=schedule, beta_start=start, beta_end=end,
                           precision="float32")
    ours = process.alphas_cumprod
    theirs = reference()[f"alphas_cumprod/{schedule}"]
    assert ours.dtype == np.float64 and np.array_equal(ours.astype(np.float32), ours)
    np.testing.assert_array_equal(ours, theirs.astype(np.float64))
    # The float64 tables are a different (DiT's) computation, to float32 rounding of the same.
    exact = DiscreteDDPM(beta_schedule=schedule, beta_start=start, beta_end=end).alphas_cumprod
    np.testing.assert_allclose(exact, theirs, rtol=2e-5)


def test_sigma_table_is_diffusers_to_one_ulp():
    """torch's float32 sqrt on CPU is not correctly rounded; numpy's is. Measured: 190 of the
    1000 entries one ulp apart, none more."""
    process = DiscreteDDPM(beta_schedule="scaled_linear", precision="float32")
    table = process.step_noise_to_signal().astype(np.float32)
    theirs = reference()["sigma_table/scaled_linear"]
    ulps = np.abs(table.view(np.int32) - theirs.view(np.int32))
    print(f"\nsigma~ table: {int(np.sum(ulps > 0))} of {len(ulps)} entries 1 ulp from torch's")
    assert ulps.max() <= 1 and np.sum(ulps > 0) < 250
    exact = DiscreteDDPM(beta_schedule="scaled_linear").step_noise_to_signal()
    np.testing.assert_allclose(table, exact, rtol=2e-5)


@pytest.mark.parametrize("case", sorted({c for c, _ in cases()}))
def test_config_defaults_are_diffusers(case):
    """Keys missing from a config take each class's own diffusers default."""
    theirs = json.loads(str(reference()[f"config/{case}"]))
    ours = scheduler_from_config(config(case)).options
    for key, value in ours.items():
        their_value = theirs[key]
        if key == "lambda_min_clipped":
            their_value = float(their_value)
        assert value == their_value or (value is False and their_value is None), key


@pytest.mark.parametrize("case,steps", cases())
def test_timesteps_and_noise_levels(case, steps):
    scheduler = scheduler_from_config(config(case))
    schedule = scheduler.schedule(steps)
    ref = expected(case, steps, "float32")
    assert scheduler.nfe(steps) == len(ref["timesteps"]) == len(ref["latents"])
    rtol = 1e-6 if case.startswith("euler_karras") else 0  # see test_float32_every_step
    np.testing.assert_allclose(schedule.timesteps, ref["timesteps"], rtol=rtol, atol=0)
    if "sigmas" in ref:
        ours = np.asarray(schedule.sigmas, np.float32)
        theirs = ref["sigmas"].astype(np.float32)
        assert np.max(np.abs(ours.view(np.int32) - theirs.view(np.int32))) <= 1
    sigma0 = scheduler.init_noise_sigma(schedule, jnp.float32)
    np.testing.assert_allclose(float(sigma0), ref["init_noise_sigma"], rtol=2e-7)


# --- trajectories -----------------------------------------------------------------------------

@pytest.mark.parametrize("case,steps", cases())
def test_float32_every_step(case, steps):
    """diffjax's own tables, float32 throughout, against diffusers in float32."""
    _, x, trajectory, ref = run_case(case, steps, jnp.float32)
    tolerance = FLOAT32_TOLERANCE.get((case, steps), 1e-5)
    assert x.dtype == jnp.float32
    # Karras's fractional timesteps come from log sigma~ of the (ulp-apart) table.
    rtol = 1e-6 if case.startswith("euler_karras") else 0
    np.testing.assert_allclose(trajectory.timesteps, ref["timesteps"], rtol=rtol, atol=0)
    for k in range(len(ref["latents"])):
        for name in ("model_inputs", "latents"):
            error = relative_error(getattr(trajectory, name)[k], ref[name][k])
            assert error < tolerance, (name, k, error)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(trajectory.latents[-1]))


@pytest.mark.parametrize("case,steps", cases())
def test_float64_every_step(case, steps):
    """diffusers' algorithm in float64 on diffusers' tables: agreement to float64 round-off."""
    with jax.enable_x64(True):
        _, x, trajectory, ref = run_case(case, steps, jnp.float64, fixture_tables=True)
        assert x.dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(trajectory.timesteps, np.float64),
                                      ref["timesteps"])
        for k in range(len(ref["latents"])):
            for name in ("model_inputs", "latents"):
                error = relative_error(getattr(trajectory, name)[k], ref[name][k])
                assert error < 1e-10, (name, k, error)


# --- the public entry ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["sd15_pndm", "sdxl_euler", "dpmpp_2m_karras", "sd15_ddim_eta"])
def test_sample_is_one_jitted_loop_with_exact_nfe(case):
    """`sample` under jit: the trajectory's last latents, and exactly nfe(n) network calls (a
    host callback inside the compiled loop counts them)."""
    scheduler = scheduler_from_config(config(case))
    model = model_for(scheduler["prediction_type"])
    calls = []

    def counting_model(x, t):
        jax.debug.callback(lambda: calls.append(1), ordered=True)
        return model(x, t)

    noise = jnp.asarray(reference()["noise"], jnp.float32)
    rng = jax.random.key(0)
    sample = jax.jit(functools.partial(scheduler.sample, counting_model, num_inference_steps=7,
                                       eta=0.5 if case.endswith("eta") else 0.0))
    x = sample(noise, rng=rng)
    jax.effects_barrier()
    assert len(calls) == scheduler.nfe(7)
    with jax.disable_jit():
        _, trajectory = scheduler.trajectory(model, noise, 7, rng,
                                             eta=0.5 if case.endswith("eta") else 0.0)
    np.testing.assert_allclose(np.asarray(x), np.asarray(trajectory.latents[-1]), rtol=1e-6,
                               atol=1e-6)


def test_load_scheduler_reads_a_pipeline_folder(tmp_path):
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(config("sd15_pndm")))
    scheduler = load_scheduler(str(tmp_path))
    assert scheduler.class_name == "PNDMScheduler" and scheduler["steps_offset"] == 1
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_scheduler(str(tmp_path / "scheduler" / "missing"))


@pytest.mark.parametrize("change,message", [
    ({"_class_name": "LMSDiscreteScheduler"},
     "_class_name='LMSDiscreteScheduler' is not supported; supported: DDIMScheduler, "
     "DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler."),
    ({"_class_name": "DDIMScheduler", "thresholding": True},
     "DDIMScheduler.thresholding=True is not supported; supported: False."),
    ({"skip_prk_steps": False},
     "PNDMScheduler.skip_prk_steps=False is not supported; supported: True."),
    ({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"},
     "DPMSolverMultistepScheduler.algorithm_type='sde-dpmsolver++' is not supported; "
     "supported: 'dpmsolver++'."),
    ({"_class_name": "EulerDiscreteScheduler", "interpolation_type": "log_linear"},
     "EulerDiscreteScheduler.interpolation_type='log_linear' is not supported; supported: "
     "'linear'."),
    ({"trained_betas": [0.1, 0.2]},
     "PNDMScheduler.trained_betas=(0.1, 0.2) is not supported; supported: None."),
])
def test_unsupported_options_name_the_key_and_the_choices(change, message):
    with pytest.raises(ValueError) as error:
        scheduler_from_config({**config("sd15_pndm"), **change})
    assert str(error.value).endswith(message)
    assert "\n" not in str(error.value)


def test_trailing_spacing_refuses_diffusers_extra_step():
    """np.arange(1000, 0, -1000 / 61) has 62 elements; diffusers then runs a 62nd step at
    t = -1 (alphas_cumprod[-1], the noisiest). diffjax says so instead."""
    scheduler = scheduler_from_config(config("ddim_trailing"))
    assert len(scheduler.timesteps(60)) == 60
    with pytest.raises(ValueError, match="gives 62 steps, the last at t = -1"):
        scheduler.timesteps(61)


def test_pndm_transfer_is_ddims_step():
    """PNDM's eq. 9 is DDIM's eta = 0 step written as a difference of squares."""
    with jax.enable_x64(True):
        abar = DiscreteDDPM(beta_schedule="scaled_linear", precision="float32").alphas_cumprod
        x = jnp.asarray(np.random.RandomState(1).randn(5, 3))
        eps = jnp.asarray(np.random.RandomState(2).randn(5, 3))
        for t, s in ((999, 979), (500, 480), (21, 1), (1, 0)):
            a, a_next = abar[t], abar[s]
            ddim = ddim_update((x - math.sqrt(1 - a) * eps) / math.sqrt(a), eps,
                               math.sqrt(a_next), math.sqrt(1 - a_next))
            np.testing.assert_allclose(pndm_transfer(x, eps, a, a_next), ddim, rtol=1e-12,
                                       atol=1e-13)


def test_prediction_types_map_to_parameterizations():
    assert PREDICTIONS == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
