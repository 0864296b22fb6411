"""diffjax's default XLA:CPU flags: set before JAX starts, overridable, equal results."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from diffjax.runtime import xla

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YNN_REDUCE = "--xla_cpu_experimental_ynn_fusion_type=reduce"


def test_user_flags_win_and_defaults_fill_in():
    defaults = (YNN_REDUCE, "--xla_cpu_foo=1")
    assert xla.merge_xla_flags("", defaults) == f"{YNN_REDUCE} --xla_cpu_foo=1"
    # Another flag of the user's is kept, after the defaults; the same flag (any value) wins.
    merged = xla.merge_xla_flags("--xla_force_host_platform_device_count=8 "
                                     "--xla_cpu_experimental_ynn_fusion_type=individual_dot",
                                     defaults)
    assert merged.split() == ["--xla_cpu_foo=1", "--xla_force_host_platform_device_count=8",
                              "--xla_cpu_experimental_ynn_fusion_type=individual_dot"]


def test_defaults_are_per_jaxlib_and_can_be_switched_off(monkeypatch):
    monkeypatch.delenv(xla.XLA_CPU_DEFAULTS_ENV_VAR, raising=False)
    assert xla.default_xla_flags("0.10.2") == (YNN_REDUCE,)
    assert xla.default_xla_flags("0.0.1") == ()  # unmeasured jaxlib: XLA's own defaults
    monkeypatch.setenv(xla.XLA_CPU_DEFAULTS_ENV_VAR, "off")
    assert xla.default_xla_flags("0.10.2") == ()


PROBE = r"""
import json, os, sys
from diffjax.runtime import xla
xla.enable_compilation_cache(os.environ["PROBE_CACHE"])  # applies the flags too
import jax, jax.numpy as jnp, numpy as np

out = {"xla_flags": os.environ.get("XLA_FLAGS", "")}
if os.environ.get("PROBE_ONLY_FLAGS"):
    jax.devices()
    print("RESULT " + json.dumps(out))
    sys.exit(0)
# The operations the networks are made of, small (the networks themselves take minutes to compile
# here; every test that compares them with reference fixtures runs with the flags too):
# strided/1x1/3x3 convolutions, GroupNorm, SiLU, single-head attention, LayerNorm, GELU, a
# dense layer; the outputs and the gradients of every input, in one jitted call.
NUMBERS = ("NHWC", "HWIO", "NHWC")

def group_norm(h, groups):
    b, height, width, c = h.shape
    g = h.reshape(b, height, width, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / jnp.sqrt(var + 1e-6)).reshape(h.shape)

def network(x, w):
    h = jax.nn.relu(jax.lax.conv_general_dilated(x, w[0], (2, 2), "VALID",
                                                 dimension_numbers=NUMBERS))
    h = jax.nn.silu(group_norm(jax.lax.conv_general_dilated(h, w[1], (1, 1), "SAME",
                                                            dimension_numbers=NUMBERS), 4))
    h = jax.lax.conv_general_dilated(h, w[2], (1, 1), "SAME", dimension_numbers=NUMBERS)
    tokens = h.reshape(h.shape[0], -1, 1, h.shape[-1])
    tokens = tokens + jax.nn.dot_product_attention(tokens, tokens, tokens)
    t = tokens[:, :, 0]
    t = (t - t.mean(-1, keepdims=True)) / jnp.sqrt(t.var(-1, keepdims=True) + 1e-6)
    return jax.nn.gelu(t @ w[3]).mean(axis=1)

def outputs(key):
    x = jax.random.uniform(key, (4, 19, 19, 3), minval=-1.0, maxval=1.0)
    w = [jax.random.normal(jax.random.fold_in(key, i), s) * 0.3
         for i, s in enumerate([(3, 3, 3, 16), (1, 1, 16, 32), (3, 3, 32, 32), (32, 48)])]
    y, vjp = jax.vjp(network, x, w)
    grad_x, grad_w = vjp(jnp.ones_like(y))
    return y, grad_x, grad_w

key = jax.random.key(0)
compiled = jax.jit(outputs).lower(key).compile()
# Which operations XLA hands to YNNPACK: the bodies of the `ynn_fusion`s in the compiled HLO.
import re
hlo = compiled.as_text()
bodies = dict(re.findall(r"\n(%[\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, flags=re.S))
ynn_ops = [op for line in hlo.splitlines() if re.search(r"=.* fusion\(.*__ynn_fusion", line)
           for op in ("convolution", "dot", "reduce")
           if f" {op}(" in bodies.get(re.search(r"calls=(%[\w.\-]+)", line).group(1), "")]
out["ynn_ops"] = {op: ynn_ops.count(op) for op in ("convolution", "dot", "reduce")}
y, grad_x, grad_w = compiled(key)
out["outputs"] = np.asarray(y).tolist()
out["grad_x"] = np.asarray(grad_x).ravel()[::7].tolist()
out["grad_w"] = [np.asarray(g).ravel()[::5].tolist() for g in grad_w]
print("RESULT " + json.dumps(out))
"""


def probe(tmp_path, **env):
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("XLA_FLAGS", xla.XLA_CPU_DEFAULTS_ENV_VAR)}
    environment.update(PYTHONPATH=REPO, PROBE_CACHE=str(tmp_path / "cache"), **env)
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=environment,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.skipif(not xla.default_xla_flags(), reason="no diffjax XLA flags on this jaxlib")
def test_flags_apply_before_jax_starts_and_change_only_float_rounding(tmp_path):
    with_flags = probe(tmp_path)
    without = probe(tmp_path, DIFFJAX_XLA_CPU_DEFAULTS="off")
    user = probe(tmp_path, XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=individual_dot",
                 PROBE_ONLY_FLAGS="1")
    assert YNN_REDUCE in with_flags["xla_flags"].split()
    assert without["xla_flags"] == ""
    assert user["xla_flags"] == "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    # The flag reaches XLA: YNNPACK keeps the reductions and no longer gets dots/convolutions.
    assert without["ynn_ops"]["dot"] > 0 and without["ynn_ops"]["reduce"] > 0
    assert with_flags["ynn_ops"] == {"convolution": 0, "dot": 0,
                                     "reduce": without["ynn_ops"]["reduce"]}
    for key in ("outputs", "grad_x"):
        np.testing.assert_allclose(with_flags[key], without[key], rtol=1e-4, atol=1e-5)
    for got, want in zip(with_flags["grad_w"], without["grad_w"]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
