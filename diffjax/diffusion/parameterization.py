"""From a network to predictions: the one place that fixes what the network's output means.

A network is `net(x_in, noise_cond, labels) -> output` and knows nothing about processes. For a
process with kernel x_t = alpha x0 + sigma eps (`diffjax.diffusion.processes`), this module decides
- what scalar the network is conditioned on (`noise_conditioning`, per process, below);
- how the input is scaled: by c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2) for EDM's
  preconditioning, and optionally (`model.scale_input`) for the others, so that the network sees
  unit-variance input even when VE's sigma reaches 50;
- what the output means (`model.parameterization`), each with its training target and the loss
  weighting its plain MSE implies, stated once here. Every weighting is relative to the x0 error:
  ||output - target||^2 = w(t) ||x0_hat - x0||^2 at fixed x_t, with w = x0_scale^2.

    name      network predicts                     target                   w(t) = x0_scale^2
    eps       the noise (DDPM's "simple" loss;     eps                      (alpha / sigma)^2 = SNR
              alias "noise")
    score     grad log p_t, its MSE weighted by    -eps / sigma (residual   (alpha / sigma)^2
              sigma^2 (score_sde's lambda)         sigma s + eps)
    x0        the clean data                       x0                       1
    v         Salimans & Ho's v                    alpha eps - sigma x0     (alpha^2 + sigma^2)^2
                                                                            / sigma^2 (VP: SNR + 1)
    velocity  dx_t/dt (flow matching: eps - x0)    alpha' x0 + sigma' eps   (alpha sigma' - sigma
                                                                            alpha')^2 / sigma^2
                                                                            (flow: 1 / t^2)
    edm       F of EDM's D = c_skip x~ + c_out     (x0 - c_skip x~) / c_out 1 / c_out^2 = EDM's
              F(c_in x~), x~ = x / alpha,                                   lambda: (sigma~^2 +
              sigma~ = sigma / alpha                                        sd^2) / (sigma~ sd)^2

  with c_skip = sd^2 / (sigma~^2 + sd^2), c_out = sigma~ sd / sqrt(sigma~^2 + sd^2),
  c_in = 1 / sqrt(sigma~^2 + sd^2) on x~, sd = model.sigma_data; for EDM's process alpha = 1.

- Learned variance (DiT's learn_sigma, iDDPM's "learned range"): the network returns 2C channels
  (channels last): the parameterisation's output in the first C, and in the last C an
  interpolation v in [-1, 1] between the log variances of the DDPM step, log var = frac log beta +
  (1 - frac) log beta~, frac = (v + 1) / 2. The first half drives everything above; the second is
  `Prediction.var_interp`, read by the DDPM ancestral sampler (variance="learned") and trained by
  the variational bound term in `diffjax.diffusion.losses`.

`ModelFn` is what losses and samplers get: callable as score_fn(x, t) -> score (so samplers keep
their signature, and a plain exact-score closure is a valid model in tests), and `.predict(x, t)`
returns x0_hat, eps_hat and the score of ONE network call; `as_model_fn` gives plain score
functions the same interface. Everything linear in the output (classifier-free guidance acts on
the raw output) stays linear in x0_hat, eps_hat and the score: each is affine in the output.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffjax.diffusion.processes import LinearProcess, broadcast_to_data

Array = jax.Array
# net(x_in, noise_cond, labels) -> output, like x_in (2C channels with a learned variance).
NetFn = Callable[[Array, Array, Array | None], Array]
ScoreFn = Callable[[Array, Array], Array]


# --- what the network is conditioned on ------------------------------------------------------

def _vp_time(process, t):
    return 999.0 * t  # the DDPM index range positional embeddings are tuned for (score_sde)


NOISE_CONDITIONING: dict[str, Callable[[LinearProcess, Array], Array]] = {
    "vp": _vp_time,
    "subvp": _vp_time,
    "cosine": _vp_time,
    # log sigma: what a Fourier embedding of the noise level wants (NCSN++).
    "ve": lambda process, t: jnp.log(process.marginal_std(t)),
    # The integer step n (DiT, ADM); fractional between steps.
    "ddpm": lambda process, t: process.timestep(t),
    # SiT feeds its own time s = 1 - t (noise at s = 0) unscaled.
    "flow": lambda process, t: 1.0 - t,
    # EDM's c_noise = ln(sigma) / 4.
    "edm": lambda process, t: 0.25 * jnp.log(process.marginal_std(t)),
}


def noise_conditioning(process: LinearProcess, t: Array) -> Array:
    """The per-example scalar the network is conditioned on at time t."""
    return NOISE_CONDITIONING[process.name](process, jnp.asarray(t))


def input_scale(process: LinearProcess, t: Array, sigma_data: float) -> Array:
    """1 / sqrt(alpha^2 sigma_data^2 + sigma^2): EDM's c_in applied to x = alpha x~."""
    alpha, sigma = process.marginal_coeffs(t)
    return jax.lax.rsqrt(alpha**2 * sigma_data**2 + sigma**2)


# --- what the output means -------------------------------------------------------------------

class Coeffs(NamedTuple):
    """alpha, sigma and their time derivatives at t, shaped to broadcast against x."""

    alpha: Array
    sigma: Array
    d_alpha: Array
    d_sigma: Array
    sigma_data: float


def coefficients(process: LinearProcess, t: Array, x: Array, sigma_data: float = 0.5) -> Coeffs:
    alpha, sigma = process.marginal_coeffs(t)
    d_alpha, d_sigma = process.coeff_derivatives(t)
    b = lambda v: broadcast_to_data(v, x)  # noqa: E731
    return Coeffs(b(alpha), b(sigma), b(d_alpha), b(d_sigma), sigma_data)


def _edm_scalings(c: Coeffs):
    """(x~ scale 1/alpha, c_skip, c_out) with sigma~ = sigma / alpha."""
    sigma_tilde = c.sigma / c.alpha
    sd2 = c.sigma_data**2
    denominator = sigma_tilde**2 + sd2
    return sd2 / denominator, sigma_tilde * c.sigma_data * jax.lax.rsqrt(denominator)


def _edm_predict(out, x, c):
    c_skip, c_out = _edm_scalings(c)
    x0 = c_skip * (x / c.alpha) + c_out * out
    return x0, (x - c.alpha * x0) / c.sigma


def _edm_target(x0, eps, x, c):
    c_skip, c_out = _edm_scalings(c)
    return (x0 - c_skip * (x / c.alpha)) / c_out


def _velocity_det(c):
    return c.alpha * c.d_sigma - c.sigma * c.d_alpha


@dataclasses.dataclass(frozen=True)
class Parameterization:
    """predict: (output, x_t, coeffs) -> (x0_hat, eps_hat); target: (x0, eps, x_t, coeffs) ->
    the output's training target; x0_scale: |d output / d x0| at fixed x_t (see the table)."""

    name: str
    predict: Callable
    target: Callable
    x0_scale: Callable
    always_scale_input: bool = False


PARAMETERIZATIONS: dict[str, Parameterization] = {
    "eps": Parameterization(
        "eps",
        predict=lambda out, x, c: ((x - c.sigma * out) / c.alpha, out),
        target=lambda x0, eps, x, c: eps,
        x0_scale=lambda c: c.alpha / c.sigma),
    "score": Parameterization(
        "score",
        predict=lambda out, x, c: ((x + c.sigma**2 * out) / c.alpha, -c.sigma * out),
        target=lambda x0, eps, x, c: -eps / c.sigma,
        # sigma^2 ||s - s*||^2 = ||sigma s + eps||^2: the residual is scaled by sigma (below).
        x0_scale=lambda c: c.alpha / c.sigma),
    "x0": Parameterization(
        "x0",
        predict=lambda out, x, c: (out, (x - c.alpha * out) / c.sigma),
        target=lambda x0, eps, x, c: x0,
        x0_scale=lambda c: jnp.ones_like(c.alpha)),
    "v": Parameterization(
        "v",
        predict=lambda out, x, c: ((c.alpha * x - c.sigma * out) / (c.alpha**2 + c.sigma**2),
                                   (c.sigma * x + c.alpha * out) / (c.alpha**2 + c.sigma**2)),
        target=lambda x0, eps, x, c: c.alpha * eps - c.sigma * x0,
        x0_scale=lambda c: (c.alpha**2 + c.sigma**2) / c.sigma),
    "velocity": Parameterization(
        "velocity",
        predict=lambda out, x, c: ((c.d_sigma * x - c.sigma * out) / _velocity_det(c),
                                   (c.alpha * out - c.d_alpha * x) / _velocity_det(c)),
        target=lambda x0, eps, x, c: c.d_alpha * x0 + c.d_sigma * eps,
        x0_scale=lambda c: jnp.abs(_velocity_det(c)) / c.sigma),
    "edm": Parameterization(
        "edm", predict=_edm_predict, target=_edm_target,
        x0_scale=lambda c: 1.0 / _edm_scalings(c)[1],
        always_scale_input=True),
}
ALIASES = {"noise": "eps"}


def get_parameterization(name: str) -> Parameterization:
    try:
        return PARAMETERIZATIONS[ALIASES.get(name, name)]
    except KeyError:
        raise ValueError(
            f"Unknown model.parameterization={name!r}; choose one of "
            f"{sorted(PARAMETERIZATIONS)} ('noise' = 'eps')."
        ) from None


class Prediction(NamedTuple):
    """What one network evaluation says about x_t."""

    x0: Array  # E[x0 | x_t]
    eps: Array  # E[eps | x_t]
    score: Array  # grad log p_t(x_t) = -eps / sigma
    output: Array  # the raw parameterisation output (first C channels)
    var_interp: Array | None = None  # learned-variance half in [-1, 1], or None


def native_residual(parameterization: str, pred: Prediction, x0: Array, eps: Array, x: Array,
                    c: Coeffs) -> Array:
    """output - target, in the output's own units (the "score" residual is sigma s + eps)."""
    p = get_parameterization(parameterization)
    residual = pred.output - p.target(x0, eps, x, c)
    return residual * c.sigma if p.name == "score" else residual


# --- the model function ----------------------------------------------------------------------

class ModelFn:
    """A network bound to a process and a parameterisation.

    `model(x, t)` is the score (the samplers' score_fn); `model.predict(x, t)` gives every
    prediction of the same single network call. `labels` are closed over, so samplers need not
    know about conditioning. `sigma_data`: scale the input by c_in (always for "edm"); None feeds
    x unscaled. `learned_variance`: the network returns 2C channels (see the module docstring).
    """

    def __init__(self, process: LinearProcess, net: NetFn, *, parameterization: str = "eps",
                 sigma_data: float | None = None, labels: Array | None = None,
                 learned_variance: bool = False):
        self.process = process
        self.net = net
        self.parameterization = get_parameterization(parameterization)
        self.sigma_data = sigma_data
        self.labels = labels
        self.learned_variance = learned_variance
        if self.parameterization.always_scale_input and sigma_data is None:
            self.sigma_data = 0.5

    def predict(self, x: Array, t: Array) -> Prediction:
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        x_in = x
        if self.sigma_data is not None:
            x_in = x * broadcast_to_data(input_scale(self.process, t, self.sigma_data), x)
        output = self.net(x_in, noise_conditioning(self.process, t), self.labels)
        var_interp = None
        if self.learned_variance:
            output, var_interp = jnp.split(output, 2, axis=-1)
        output = output.astype(x.dtype)
        c = coefficients(self.process, t, x, 0.5 if self.sigma_data is None else self.sigma_data)
        x0, eps = self.parameterization.predict(output, x, c)
        score = output if self.parameterization.name == "score" else -eps / c.sigma
        return Prediction(x0=x0, eps=eps, score=score, output=output, var_interp=var_interp)

    def __call__(self, x: Array, t: Array) -> Array:
        return self.predict(x, t).score


class ScoreModel:
    """A plain score function with `ModelFn`'s interface (its output is the score)."""

    def __init__(self, score_fn: ScoreFn, process: LinearProcess):
        self.score_fn = score_fn
        self.process = process
        self.parameterization = PARAMETERIZATIONS["score"]
        self.learned_variance = False

    def predict(self, x: Array, t: Array) -> Prediction:
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        score = self.score_fn(x, t)
        c = coefficients(self.process, t, x)
        x0, eps = self.parameterization.predict(score, x, c)
        return Prediction(x0=x0, eps=eps, score=score, output=score)

    def __call__(self, x: Array, t: Array) -> Array:
        return self.score_fn(x, t)


def as_model_fn(score_fn, process: LinearProcess):
    """`score_fn` itself if it has `.predict`, else a `ScoreModel` around it."""
    return score_fn if hasattr(score_fn, "predict") else ScoreModel(score_fn, process)


def make_score_fn(process: LinearProcess, net: NetFn, *, parameterization: str = "eps",
                  sigma_data: float | None = None, labels: Array | None = None,
                  learned_variance: bool = False) -> ModelFn:
    """The `ModelFn` of `net` (a score function with `.predict`); see `ModelFn`."""
    return ModelFn(process, net, parameterization=parameterization, sigma_data=sigma_data,
                   labels=labels, learned_variance=learned_variance)
