"""Memory and speed switches change how a step is computed, not what it computes.

- model.dtype=bfloat16: bf16 activations and matmuls, float32 parameters, EMA and gradients; the
  loss and gradient stay close to float32's.
- model.remat=True: the same loss and gradient as without, up to float error.
- training.microbatches=k: the step averages k sequential passes over strided slices of the global
  batch (rows i, i+k, ...), microbatch i drawing its noise from fold_in(loss_rng, i); so the result
  is not bit-equal to k=1 (other noise draws) but is exactly the mean of the k microbatch losses
  and gradients, which a manual computation reproduces.
- training.profile_first_step/profile_num_steps: a trace of those steps under WORKDIR/profile.

Gradients are read through the real train step with a probe "optimizer" that keeps the gradient
it is given as its state and leaves the parameters alone.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_cli

VARIANTS = {"unet": "test", "dit": "test,dit"}


def gradient_probe() -> optax.GradientTransformation:
    def init(params):
        return jax.tree.map(jnp.zeros_like, params)

    def update(grads, state, params=None):
        del state, params
        return jax.tree.map(jnp.zeros_like, grads), grads

    return optax.GradientTransformation(init, update)


class StepResult(NamedTuple):
    params: dict  # before the step
    new_params: dict
    loss: float
    grad: dict
    jaxpr: str
    hlo: str


def fixed_batch(config) -> dict:
    rng = np.random.default_rng(0)
    d = config.data
    shape = (config.training.batch_size, d.image_size, d.image_size, d.num_channels)
    return {"image": jnp.asarray(rng.integers(0, 256, shape, dtype=np.uint8)),
            "label": jnp.asarray(rng.integers(0, d.num_classes, shape[:1], dtype=np.int32))}


def build(config):
    import flax.linen as nn

    from diffjax.diffusion.processes import get_process
    from diffjax.experiment import example_input
    from diffjax.models import build_model
    from diffjax.parallel.mesh import create_mesh
    from diffjax.parallel.sharding import rules_from_config
    from diffjax.state.train_state import create_state, state_spec

    mesh = create_mesh(config.mesh, jax.devices()[:1])
    rules = rules_from_config(config.mesh)
    model, sde, probe = build_model(config), get_process(config.sde), gradient_probe()
    spec = state_spec(model, probe, example_input(config), mesh, rules)
    state = create_state(model, probe, example_input(config), config.seed, spec)
    # Away from the initialisation, whose zero output layer gives every network the same loss.
    keys = jax.random.split(jax.random.key(1), len(jax.tree.leaves(state.params)))
    noise = jax.tree.unflatten(jax.tree.structure(state.params), list(keys))
    params = jax.tree.map(lambda p, k: p + 0.05 * jax.random.normal(k, p.shape, p.dtype),
                          state.params, noise)
    state = state.replace(params=params)
    return model, sde, probe, state, mesh, nn.logical_axis_rules(rules)


def train_step_once(config) -> StepResult:
    from diffjax.training.step import make_train_step

    model, sde, probe, state, mesh, rules = build(config)
    batch = fixed_batch(config)
    step = jax.jit(make_train_step(config, model, sde, probe))
    with jax.set_mesh(mesh), rules:
        jaxpr = str(jax.make_jaxpr(step)(state, batch))
        lowered = step.lower(state, batch)
        new_state, metrics = lowered.compile()(state, batch)
    return StepResult(state.params, new_state.params, float(metrics["loss"]),
                      new_state.opt_state, jaxpr, lowered.as_text())


def config_for(digits_config, model: str, **overrides):
    config = digits_config(VARIANTS[model])
    config.mesh.data = 1
    for path, value in overrides.items():
        section, key = path.split(".")
        setattr(config[section], key, value)
    return config


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


# --- bfloat16 compute ----------------------------------------------------------------------------

@pytest.mark.parametrize("model", sorted(VARIANTS))
def test_bfloat16_compute_keeps_float32_parameters(digits_config, model):
    fp32 = train_step_once(config_for(digits_config, model))
    bf16 = train_step_once(config_for(digits_config, model, **{"model.dtype": "bfloat16"}))

    for tree in (bf16.params, bf16.new_params, bf16.grad):
        assert {x.dtype for x in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
    np.testing.assert_array_equal(flat(fp32.params), flat(bf16.params))  # same initial weights
    assert "bf16" in bf16.hlo and "bf16" not in fp32.hlo  # the switch reaches the computation

    assert np.isfinite(bf16.loss)
    assert abs(bf16.loss - fp32.loss) < 0.02 * fp32.loss, (bf16.loss, fp32.loss)
    g32, g16 = flat(fp32.grad), flat(bf16.grad)
    cosine = g32 @ g16 / np.linalg.norm(g32) / np.linalg.norm(g16)
    print(f"\n{model} bf16 vs fp32: loss {bf16.loss:.6f} vs {fp32.loss:.6f}, gradient cosine "
          f"{cosine:.6f}")
    assert cosine > 0.99, cosine


# --- rematerialisation ---------------------------------------------------------------------------

@pytest.mark.parametrize("model", sorted(VARIANTS))
def test_remat_gives_the_same_loss_and_gradient(digits_config, model):
    plain = train_step_once(config_for(digits_config, model))
    remat = train_step_once(config_for(digits_config, model, **{"model.remat": True}))

    assert "checkpoint" in remat.jaxpr or "remat" in remat.jaxpr
    assert "checkpoint" not in plain.jaxpr and "remat" not in plain.jaxpr
    assert abs(remat.loss - plain.loss) <= 1e-6 * max(1.0, abs(plain.loss))
    g, g_remat = flat(plain.grad), flat(remat.grad)
    print(f"\n{model} remat: |dloss| {abs(remat.loss - plain.loss):.3g}, max |dgrad| "
          f"{np.max(np.abs(g - g_remat)):.3g} (max |grad| {np.max(np.abs(g)):.3g})")
    assert np.max(np.abs(g - g_remat)) <= 1e-5 * np.max(np.abs(g)), np.max(np.abs(g - g_remat))


# --- gradient accumulation -----------------------------------------------------------------------

def manual_loss_and_grad(config, microbatches: int):
    """The step's loss and gradient recomputed by hand: mean over microbatches of the mean loss.

    Mirrors the step's randomness contract: key(seed) folded with the step, split into data and
    loss keys; microbatch i (rows i::k) uses fold_in(loss_key, i) when k > 1, the loss key itself
    when k == 1.
    """
    from diffjax.diffusion import losses
    from diffjax.experiment import score_fn_for
    from diffjax.training.objectives import model_input

    model, sde, _, state, mesh, rules = build(config)
    batch, t = fixed_batch(config), config.training
    data_key, loss_key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 0))

    def mean_loss(params, x0, labels, key):
        dropout_key, noise_key = jax.random.split(key)
        score_fn = score_fn_for(config, model, sde, params, labels=labels, train=True,
                                dropout_rng=dropout_key)
        return jnp.mean(losses.diffusion_loss(noise_key, score_fn, sde, x0,
                                              **losses.loss_options(t)))

    with jax.set_mesh(mesh), rules:
        x0, labels = model_input(config, batch, data_key)
        results = []
        for i in range(microbatches):
            key = loss_key if microbatches == 1 else jax.random.fold_in(loss_key, i)
            rows = slice(i, None, microbatches)
            results.append(jax.jit(jax.value_and_grad(mean_loss))(
                state.params, x0[rows], None if labels is None else labels[rows], key))
    loss = np.mean([float(l) for l, _ in results])
    grad = jax.tree.map(lambda *g: np.mean(np.stack([np.asarray(x) for x in g]), axis=0),
                        *[g for _, g in results])
    return loss, grad


@pytest.mark.parametrize("microbatches", [1, 2, 4])
def test_microbatches_average_the_microbatch_gradients(digits_config, microbatches):
    config = config_for(digits_config, "dit", **{"training.microbatches": microbatches,
                                                "model.dropout": 0.1})
    step = train_step_once(config)
    loss, grad = manual_loss_and_grad(config, microbatches)
    assert abs(step.loss - loss) <= 1e-6 * max(1.0, loss), (step.loss, loss)
    g_step, g_manual = flat(step.grad), flat(grad)
    print(f"\nmicrobatches={microbatches}: |dloss| {abs(step.loss - loss):.3g}, max |dgrad| "
          f"{np.max(np.abs(g_step - g_manual)):.3g} (max |grad| {np.max(np.abs(g_manual)):.3g})")
    assert np.max(np.abs(g_step - g_manual)) <= 1e-5 * np.max(np.abs(g_manual))


def test_microbatches_must_divide_the_per_device_batch(digits_config):
    from diffjax.parallel.mesh import create_mesh
    from diffjax.training.loop import check_batch_size

    config = config_for(digits_config, "dit", **{"training.microbatches": 3})  # batch 16
    with pytest.raises(ValueError, match=r"batch_size=16 with microbatches=3.*"
                                         r"--config.training.microbatches"):
        check_batch_size(config, create_mesh(config.mesh, jax.devices()[:1]))


# --- all switches at once through the CLI, with the profiler -------------------------------------

def test_cli_trains_with_every_switch_and_writes_a_profile(tmp_path):
    result = run_cli("--config=configs/digits.py:test,dit", f"--workdir={tmp_path}",
                     "--config.model.dtype=bfloat16", "--config.model.remat=True",
                     "--config.training.microbatches=2",
                     "--config.training.profile_first_step=2",
                     "--config.training.profile_num_steps=2")
    assert "Trained to step 6" in result.stdout
    losses = [float(v) for v in re.findall(r"\bloss[= ]([-\d.e+]+|nan|inf)", result.stderr)]
    assert losses and all(np.isfinite(losses)), losses

    traces = glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" / "*.trace.json.gz"))
    assert len(traces) == 1, os.listdir(tmp_path)
    assert glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    with gzip.open(traces[0]) as f:
        names = {event.get("name", "") for event in json.load(f)["traceEvents"]}
    assert any("train_step" in name for name in names), "the trace holds no train step"

    import orbax.checkpoint as ocp

    saved = ocp.PyTreeCheckpointer().restore(str(tmp_path / "checkpoints" / "6" / "state"))
    assert {np.asarray(x).dtype for x in jax.tree.leaves(saved["params"])} == {np.dtype("float32")}
