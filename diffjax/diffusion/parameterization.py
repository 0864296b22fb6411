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
    trigflow  sCM's F = velocity / sd, fed x c_in   velocity target / sd    velocity's / sd^2
              (on TrigFlow: c_in = 1 / sd, F(x/sd, t))

  with c_skip = sd^2 / (sigma~^2 + sd^2), c_out = sigma~ sd / sqrt(sigma~^2 + sd^2),
  c_in = 1 / sqrt(sigma~^2 + sd^2) on x~, sd = model.sigma_data; for EDM's process alpha = 1.

- Learned variance (DiT's learn_sigma, iDDPM's "learned range"): the network returns 2C channels
  (channels last): the parameterisation's output in the first C, and in the last C an
  interpolation v in [-1, 1] between the log variances of the DDPM step, log var = frac log beta +
  (1 - frac) log beta~, frac = (v + 1) / 2. The first half drives everything above; the second is
  `Prediction.var_interp`, read by the DDPM ancestral sampler (variance="learned") and trained by
  the variational bound term in `diffjax.diffusion.losses`.

A network with a second time input (`model.second_time_embedding`, MeanFlow) is conditioned on
(c(t), t - r) (`interval_conditioning`); its output at r = t is the velocity of every formula
above, and `ModelFn.average_velocity(x, t, r)` is its raw output. Classifier guidance adds
s grad log p(y | x_t) to the score of every prediction (`guide_prediction`): an affine change
of the output at fixed (x, t), so every parameterisation and sampler is guided alike.

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
    # sCM's c_noise(t) = t (TrigFlow's angle).
    "trigflow": lambda process, t: t,
}


def noise_conditioning(process: LinearProcess, t: Array) -> Array:
    """The per-example scalar the network is conditioned on at time t."""
    return NOISE_CONDITIONING[process.name](process, jnp.asarray(t))


def interval_conditioning(process: LinearProcess, t: Array, r: Array) -> Array:
    """[B, 2] for networks with a second time input (`model.second_time_embedding`): the
    process's conditioning of t, and t - r, the length of the interval an average velocity
    u(z, r, t) spans (MeanFlow conditions on (t, t - r); r = t is the instantaneous velocity)."""
    t = jnp.asarray(t)
    return jnp.stack([noise_conditioning(process, t), (t - jnp.asarray(r, t.dtype))], axis=-1)


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


def _velocity_predict(out, x, c):
    return ((c.d_sigma * x - c.sigma * out) / _velocity_det(c),
            (c.alpha * out - c.d_alpha * x) / _velocity_det(c))


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
        predict=_velocity_predict,
        target=lambda x0, eps, x, c: c.d_alpha * x0 + c.d_sigma * eps,
        x0_scale=lambda c: jnp.abs(_velocity_det(c)) / c.sigma),
    # sCM's F: the velocity in units of sigma_data, fed x / sigma_data (TrigFlow's c_in).
    "trigflow": Parameterization(
        "trigflow",
        predict=lambda out, x, c: _velocity_predict(c.sigma_data * out, x, c),
        target=lambda x0, eps, x, c: (c.d_alpha * x0 + c.d_sigma * eps) / c.sigma_data,
        x0_scale=lambda c: jnp.abs(_velocity_det(c)) / (c.sigma * c.sigma_data),
        always_scale_input=True),
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

def guide_prediction(pred: Prediction, guidance: Array, x: Array, c: Coeffs,
                     parameterization: Parameterization) -> Prediction:
    """`pred` with `guidance` added to its score, every other field changed to match.

    At fixed (x, t) every prediction is affine in the network output, so adding g to the score
    is one affine change of the output: score + g, eps - sigma g, x0 + sigma^2 / alpha g (both
    keep x = alpha x0 + sigma eps), and the output is the parameterisation's target of those.
    Where alpha = 0 (flow matching at t = 1, TrigFlow at pi / 2) x0 is not a function of x_t and
    only eps and the score are guided (a classifier's gradient vanishes there anyway).
    """
    safe_alpha = jnp.where(c.alpha > 0, c.alpha, 1.0)
    x0 = pred.x0 + jnp.where(c.alpha > 0, c.sigma**2 / safe_alpha, 0.0) * guidance
    eps = pred.eps - c.sigma * guidance
    score = pred.score + guidance
    output = score if parameterization.name == "score" else parameterization.target(x0, eps, x, c)
    return Prediction(x0=x0, eps=eps, score=score, output=output, var_interp=pred.var_interp)


class ModelFn:
    """A network bound to a process and a parameterisation.

    `model(x, t)` is the score (the samplers' score_fn); `model.predict(x, t)` gives every
    prediction of the same single network call. `labels` are closed over, so samplers need not
    know about conditioning. `sigma_data`: scale the input by c_in (always for "edm" and
    "trigflow"); None feeds x unscaled. `learned_variance`: the network returns 2C channels
    (see the module docstring). `second_time`: the network takes (t, t - r) (MeanFlow's average
    velocity, `average_velocity`); `predict` then asks it for r = t, the instantaneous one.
    `score_guidance(x, t)`: added to the score of every prediction (classifier guidance,
    `diffjax.diffusion.classifier_guidance`), converted to every output by `guide_prediction`.
    """

    def __init__(self, process: LinearProcess, net: NetFn, *, parameterization: str = "eps",
                 sigma_data: float | None = None, labels: Array | None = None,
                 learned_variance: bool = False, second_time: bool = False,
                 score_guidance: ScoreFn | None = None):
        self.process = process
        self.net = net
        self.parameterization = get_parameterization(parameterization)
        self.sigma_data = sigma_data
        self.labels = labels
        self.learned_variance = learned_variance
        self.second_time = second_time
        self.score_guidance = score_guidance
        if self.parameterization.always_scale_input and sigma_data is None:
            self.sigma_data = 0.5

    def _output(self, x: Array, t: Array, noise_cond: Array) -> tuple[Array, Array | None]:
        x_in = x
        if self.sigma_data is not None:
            x_in = x * broadcast_to_data(input_scale(self.process, t, self.sigma_data), x)
        output = self.net(x_in, noise_cond, self.labels)
        var_interp = None
        if self.learned_variance:
            output, var_interp = jnp.split(output, 2, axis=-1)
        return output.astype(x.dtype), var_interp

    def coefficients(self, x: Array, t: Array) -> Coeffs:
        return coefficients(self.process, t, x, 0.5 if self.sigma_data is None else
                            self.sigma_data)

    def predict(self, x: Array, t: Array) -> Prediction:
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        cond = interval_conditioning(self.process, t, t) if self.second_time else \
            noise_conditioning(self.process, t)
        output, var_interp = self._output(x, t, cond)
        c = self.coefficients(x, t)
        x0, eps = self.parameterization.predict(output, x, c)
        score = output if self.parameterization.name == "score" else -eps / c.sigma
        pred = Prediction(x0=x0, eps=eps, score=score, output=output, var_interp=var_interp)
        if self.score_guidance is not None:
            pred = guide_prediction(pred, self.score_guidance(x, t), x, c, self.parameterization)
        return pred

    def average_velocity(self, x: Array, t: Array, r: Array) -> Array:
        """u(x, r, t) = (x_t - x_r) / (t - r) along the probability-flow ODE, in dx/dt units.

        A network with a second time input and a velocity output says it directly (MeanFlow);
        any other model gives its instantaneous velocity at t (so a MeanFlow step is an Euler
        step). Score guidance is added as at r = t, the velocity at the interval's start.
        """
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        r = jnp.broadcast_to(jnp.asarray(r, x.dtype), (x.shape[0],))
        if not (self.second_time and self.parameterization.name in ("velocity", "trigflow")):
            pred = self.predict(x, t)
            return self.process.probability_flow_velocity(pred.x0, pred.eps, t)
        velocity, _ = self._output(x, t, interval_conditioning(self.process, t, r))
        c = self.coefficients(x, t)
        if self.parameterization.name == "trigflow":
            velocity = velocity * c.sigma_data
        if self.score_guidance is None:
            return velocity
        x0, eps = _velocity_predict(velocity, x, c)
        pred = Prediction(x0=x0, eps=eps, score=-eps / c.sigma, output=velocity)
        guided = guide_prediction(pred, self.score_guidance(x, t), x, c,
                                  PARAMETERIZATIONS["velocity"])
        return guided.output

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

    def average_velocity(self, x: Array, t: Array, r: Array) -> Array:
        """The instantaneous probability-flow velocity at t (see `ModelFn.average_velocity`)."""
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        pred = self.predict(x, t)
        return self.process.probability_flow_velocity(pred.x0, pred.eps, t)

    def __call__(self, x: Array, t: Array) -> Array:
        return self.score_fn(x, t)


def as_model_fn(score_fn, process: LinearProcess):
    """`score_fn` itself if it has `.predict`, else a `ScoreModel` around it."""
    return score_fn if hasattr(score_fn, "predict") else ScoreModel(score_fn, process)


def make_score_fn(process: LinearProcess, net: NetFn, *, parameterization: str = "eps",
                  sigma_data: float | None = None, labels: Array | None = None,
                  learned_variance: bool = False, second_time: bool = False,
                  score_guidance: ScoreFn | None = None) -> ModelFn:
    """The `ModelFn` of `net` (a score function with `.predict`); see `ModelFn`."""
    return ModelFn(process, net, parameterization=parameterization, sigma_data=sigma_data,
                   labels=labels, learned_variance=learned_variance, second_time=second_time,
                   score_guidance=score_guidance)
