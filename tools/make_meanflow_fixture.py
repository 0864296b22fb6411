"""Write the reference fixture of diffjax's MeanFlow loss from the authors' own JAX code.

The official code (Gsunshine/meanflow, `meanflow.py`, class `MeanFlow.forward`) is pure JAX/Flax,
so its loss runs here unchanged: this script imports that file from a clone, gives it a tiny
stand-in network in place of its DiT (the network is not what is pinned: the loss around it is),
and feeds the four random draws `forward` makes (t's and r's normals, the noise e, the label-drop
uniforms) from fixed arrays, so that diffjax can be given the same ones. It stores, per case:
the official mean loss, its per-example velocity loss (`v_loss`) and the gradient of the mean loss
in every network parameter. Cases: guidance off; the official defaults (omega 1, kappa 0.5, the
kappa branch); omega 1.5, kappa 0 inside [0.1, 0.8] (the kappa = 0 branch); omega 1.5, kappa 0.3
inside [0.1, 0.8]; and, with the adaptive weight's power p = 0, the squared error itself (with
p = 1 the loss is close to 1 whatever the target: the gradients pin it there). Float32 only: the official module fixes its dtype to float32.

The reference environment (no torch):

    git clone https://github.com/Gsunshine/meanflow /tmp/meanflow
    git -C /tmp/meanflow checkout d70cb55
    python3 -m venv mfenv    # the JAX its scripts/install.sh pins (jnp.clip's a_min/a_max)
    mfenv/bin/pip install jax==0.4.27 jaxlib==0.4.27 flax==0.8.5 "numpy<2"
    mfenv/bin/python tools/make_meanflow_fixture.py --meanflow /tmp/meanflow

Output: tests/fixtures/meanflow/reference.npz. Test: tests/test_meanflow.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "meanflow"
BATCH, SHAPE, NUM_CLASSES = 16, (4, 4, 2), 3
CASES = {  # name: (guidance_eq, omega, kappa, t_start, t_end, norm_p)
    "plain": ("", 1.0, 0.0, 0.0, 1.0, 1.0),
    "unweighted": ("", 1.0, 0.0, 0.0, 1.0, 0.0),  # p = 0: the loss is the squared error itself
    "defaults": ("cfg", 1.0, 0.5, 0.0, 1.0, 1.0),
    "omega": ("cfg", 1.5, 0.0, 0.1, 0.8, 1.0),
    "omega_kappa": ("cfg", 1.5, 0.3, 0.1, 0.8, 0.0),
}


def tiny_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every parameter random; the same function is written out in tests/test_meanflow.py."""
    dim = int(np.prod(SHAPE))
    return {"w": rng.normal(0, 0.3, (dim, dim)), "w_t": rng.normal(0, 1, dim),
            "w_h": rng.normal(0, 1, dim), "w_th": rng.normal(0, 1, dim),
            "embed": rng.normal(0, 0.5, (NUM_CLASSES + 1, dim)), "bias": rng.normal(0, 0.2, dim)}


class TinyNet(nn.Module):
    """u(x, t, h, y) = tanh(x W + t w_t + h w_h + t h w_th + embed[y] + b): nonlinear in x, t
    and h (so du/dt has both the x and t parts) and conditional on the label."""

    def setup(self):
        dim = int(np.prod(SHAPE))
        zeros = nn.initializers.zeros
        self.w = self.param("w", zeros, (dim, dim))
        self.w_t, self.w_h, self.w_th, self.bias = (self.param(n, zeros, (dim,)) for n in
                                                    ("w_t", "w_h", "w_th", "bias"))
        self.embed = self.param("embed", zeros, (NUM_CLASSES + 1, dim))

    def __call__(self, x, t, h, y, train=False, key=None):
        flat = x.reshape(x.shape[0], -1)
        pre = (flat @ self.w + t[:, None] * self.w_t + h[:, None] * self.w_h
               + (t * h)[:, None] * self.w_th + self.embed[y] + self.bias)
        return jnp.tanh(pre).reshape(x.shape)


def import_official(path: Path):
    """meanflow.py with `models.models_dit` replaced by a module holding the tiny network."""
    fake = types.ModuleType("models.models_dit")
    fake.tiny = lambda name, class_dropout_prob: TinyNet(name=name)
    package = types.ModuleType("models")
    package.models_dit = fake
    sys.modules["models"], sys.modules["models.models_dit"] = package, fake
    spec = importlib.util.spec_from_file_location("official_meanflow", path / "meanflow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PresetRandom:
    """Stands in for `jax` inside the official module: jax.random.normal / uniform return the
    next preset array of their kind (shape checked); everything else is jax."""

    def __init__(self, normals: list, uniforms: list):
        self.normals, self.uniforms = list(normals), list(uniforms)
        self.random = types.SimpleNamespace(normal=self._normal, uniform=self._uniform,
                                            split=jax.random.split, fold_in=jax.random.fold_in)

    def _next(self, queue, shape):
        value = queue.pop(0)
        assert tuple(value.shape) == tuple(shape), (value.shape, shape)
        return jnp.asarray(value, jnp.float32)

    def _normal(self, key, shape, dtype=None):
        return self._next(self.normals, shape)

    def _uniform(self, key, shape=(), dtype=None, **kwargs):
        return self._next(self.uniforms, shape)

    def __getattr__(self, name):
        return getattr(jax, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meanflow", required=True, type=Path,
                        help="a clone of github.com/Gsunshine/meanflow (commit d70cb55)")
    args = parser.parse_args()
    official = import_official(args.meanflow)

    rng = np.random.default_rng(0)
    params = {k: v.astype(np.float32) for k, v in tiny_params(rng).items()}
    draws = {
        "imgs": rng.normal(size=(BATCH,) + SHAPE).astype(np.float32),
        "labels": rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32),
        "t_normal": rng.normal(size=(BATCH, 1, 1, 1)).astype(np.float32),
        "r_normal": rng.normal(size=(BATCH, 1, 1, 1)).astype(np.float32),
        "noise": rng.normal(size=(BATCH,) + SHAPE).astype(np.float32),
        # 3 of 16 below 0.1: three labels dropped (the official code drops the first ones).
        "drop_uniform": np.where(np.arange(BATCH) % 5 == 1, 0.05, 0.6).astype(np.float32),
    }
    out = {f"param_{k}": v for k, v in params.items()}
    out.update(draws)
    for name, (equation, omega, kappa, t_start, t_end, norm_p) in CASES.items():
        official.jax = PresetRandom([draws["t_normal"], draws["r_normal"], draws["noise"]],
                                    [draws["drop_uniform"]])
        model = official.MeanFlow(model_str="tiny", model_config={}, num_classes=NUM_CLASSES,
                                  guidance_eq=equation, omega=omega, kappa=kappa,
                                  t_start=t_start, t_end=t_end, norm_p=norm_p)

        def loss(p):
            value, terms = model.apply({"params": {"net": p}}, draws["imgs"], draws["labels"],
                                       method=model.forward, rngs={"gen": jax.random.key(0)})
            return value, terms["v_loss"]

        (value, v_loss), grads = jax.value_and_grad(loss, has_aux=True)(
            {k: jnp.asarray(v) for k, v in params.items()})
        assert not official.jax.normals and not official.jax.uniforms, "a draw was not used"
        out[f"{name}_loss"] = np.asarray(value)
        out[f"{name}_v_loss"] = np.asarray(v_loss)
        for k, g in grads.items():
            out[f"{name}_grad_{k}"] = np.asarray(g)
        print(f"{name}: loss {float(value):.6f}")
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(OUT / "reference.npz", **out)
    print(f"wrote {OUT / 'reference.npz'}")


if __name__ == "__main__":
    main()
