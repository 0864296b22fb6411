"""Training losses of every objective: one denoising loss, per-example values.

For a draw of the time t (below), eps ~ N(0, I) and x_t = alpha(t) x0 + sigma(t) eps, the loss of
one example is the squared error of the network's output against its parameterisation's target
(`diffjax.diffusion.parameterization`: eps, score, x0, v, velocity or EDM's F), reduced over pixels:
    reduce_mean=True:  mean over pixels;  False: 0.5 * sum over pixels (score_sde's two choices).
That one formula is each published objective:
- score_sde (VP, sub-VP, VE): t ~ U(eps, T), eps or score output; sigma^2 ||s - s*||^2 is the
  noise MSE ("lambda = sigma^2"). `likelihood_weighting` switches to lambda = g(t)^2 on the
  score (Song et al., 2021b), in any parameterisation: the weight is converted through the
  x0-error scale of the output (`diffjax.diffusion.parameterization`), g^2 alpha^2 / (sigma^4 x0_scale^2).
- DDPM (Ho et al.; DiT): the integer step n uniform, eps output ("L_simple", DiT's mean_flat
  MSE). With a learned variance the variational-bound term of iDDPM's hybrid loss is added per
  pixel, exactly as DiT's `training_losses` (LossType.MSE): the KL between the true posterior
  q(x_{n-1} | x_n, x0) and the model's, whose mean uses the stop-gradient eps and whose variance
  is learned, in bits; at n = 0 the discretised Gaussian decoder NLL instead.
- Flow matching (SiT, SD3): velocity output, t uniform or logit-normal (t = sigmoid(m + s z)).
- EDM: F output with its preconditioning, ln sigma ~ N(P_mean, P_std^2); the plain MSE of F is
  EDM's lambda(sigma) ||D - x0||^2 exactly (see `diffjax.diffusion.parameterization`). EDM sums over pixels without
  the 0.5; reduce_mean=False differs from it by that constant factor only.

Time sampling ("training.time_sampling"; None = the process's own): "uniform" on [eps, T] (for
DDPM: uniform over its steps), "logit_normal" (t = T sigmoid(m + s z), clamped at eps),
"log_normal" (sigma~ = sigma / alpha = exp(P_mean + P_std z), mapped to t through the process, so
EDM's distribution applies to any process).

Stable Diffusion's fine-tuning options (diffusers' train_text_to_image): Min-SNR-gamma weighting
(`min_snr_gamma`, see `denoising_loss`) and offset noise (`noise_offset`, see `offset_noise`); with
the DDPM process ("scaled_linear", precision "float32"), uniform integer steps, eps or v output and
reduce_mean=True this is that script's loss.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffjax.diffusion.parameterization import ScoreFn, as_model_fn, coefficients, native_residual
from diffjax.diffusion.processes import DiscreteDDPM, LinearProcess, broadcast_to_data, float_dtype

Array = jax.Array

TIME_SAMPLINGS = ("uniform", "logit_normal", "log_normal")
DEFAULT_TIME_SAMPLING: dict[str, str] = {"edm": "log_normal"}


def sample_times(rng: Array, batch: int, process: LinearProcess, eps: float = 1e-5, *,
                 time_sampling: str | None = None, logit_normal: tuple[float, float] = (0.0, 1.0),
                 log_normal: tuple[float, float] = (-1.2, 1.2)) -> Array:
    """[batch] training times of the chosen distribution."""
    kind = time_sampling or DEFAULT_TIME_SAMPLING.get(process.name, "uniform")
    if kind == "uniform":
        return process.sample_uniform_time(rng, batch, eps)
    z = jax.random.normal(rng, (batch,), float_dtype())
    if kind == "logit_normal":
        mean, std = logit_normal
        return jnp.maximum(process.T * jax.nn.sigmoid(mean + std * z), eps)
    if kind == "log_normal":
        mean, std = log_normal
        return process.t_from_noise_to_signal(jnp.exp(mean + std * z))
    raise ValueError(f"Unknown training.time_sampling={kind!r}; choose one of {TIME_SAMPLINGS}.")


def loss_options(training_config) -> dict:
    """The keyword options of `diffusion_loss` from `config.training`."""
    t = training_config
    return dict(eps=t.eps, likelihood_weighting=t.likelihood_weighting,
                reduce_mean=t.reduce_mean, time_sampling=t.time_sampling,
                logit_normal=(t.logit_normal_mean, t.logit_normal_std),
                log_normal=(t.P_mean, t.P_std), min_snr_gamma=t.get("min_snr_gamma", 0.0),
                noise_offset=t.get("noise_offset", 0.0))


def offset_noise(rng: Array, shape: tuple, dtype, offset: float) -> Array:
    """eps + offset * n with n ~ N(0, 1) constant over the spatial axes (one per example and
    channel, channels last), as diffusers' `--noise_offset` (torch.randn((B, C, 1, 1)))."""
    base_rng, offset_rng = jax.random.split(rng)
    noise = jax.random.normal(base_rng, shape, dtype)
    if not offset:
        return noise
    per_channel = (shape[0],) + (1,) * (len(shape) - 2) + (shape[-1],)
    return noise + offset * jax.random.normal(offset_rng, per_channel, dtype)


def diffusion_loss(
    rng: Array,
    model,
    process: LinearProcess,
    x0: Array,
    *,
    eps: float = 1e-5,
    likelihood_weighting: bool = False,
    reduce_mean: bool = False,
    time_sampling: str | None = None,
    logit_normal: tuple[float, float] = (0.0, 1.0),
    log_normal: tuple[float, float] = (-1.2, 1.2),
    min_snr_gamma: float = 0.0,
    noise_offset: float = 0.0,
) -> Array:
    """Per-example loss, shape [B]. `model` is a `diffjax.diffusion.parameterization.ModelFn` or a plain score_fn."""
    t_rng, z_rng = jax.random.split(rng)
    t = sample_times(t_rng, x0.shape[0], process, eps, time_sampling=time_sampling,
                     logit_normal=logit_normal, log_normal=log_normal)
    if noise_offset:
        noise = offset_noise(z_rng, x0.shape, x0.dtype, noise_offset)
    else:  # the draw of every run before offset noise existed, bit for bit
        noise = jax.random.normal(z_rng, x0.shape, x0.dtype)
    return denoising_loss(model, process, x0, t, noise, likelihood_weighting=likelihood_weighting,
                          reduce_mean=reduce_mean, min_snr_gamma=min_snr_gamma)


def denoising_loss(model, process: LinearProcess, x0: Array, t: Array, noise: Array, *,
                   likelihood_weighting: bool = False, reduce_mean: bool = False,
                   min_snr_gamma: float = 0.0) -> Array:
    """The per-example loss [B] at given times and noise (what `diffusion_loss` draws).

    min_snr_gamma > 0: Min-SNR-gamma weighting (Hang et al., 2023): the x0 error weighted by
    min(SNR, gamma), SNR = alpha^2 / sigma^2, which in the network's own output is the weight
    min(SNR, gamma) / x0_scale^2: min(SNR, gamma) / SNR for eps, / (SNR + 1) for v on a VP
    process, exactly diffusers' `compute_snr` weights (tests/test_sd_training.py).
    """
    x_t = process.perturb(x0, t, noise)
    model = as_model_fn(model, process)
    pred = model.predict(x_t, t)
    sigma_data = getattr(model, "sigma_data", None) or 0.5
    c = coefficients(process, t, x0, sigma_data)
    squared = native_residual(model.parameterization.name, pred, x0, noise, x_t, c) ** 2
    if pred.var_interp is not None:
        squared = squared + ddpm_vb_term(process, t, x0, x_t, pred)
    squared = jnp.reshape(squared, (x0.shape[0], -1))
    per_example = jnp.mean(squared, -1) if reduce_mean else 0.5 * jnp.sum(squared, -1)
    if likelihood_weighting or min_snr_gamma:
        scale = model.parameterization.x0_scale(c).reshape(x0.shape[0], -1)[:, 0]
        alpha, sigma = process.marginal_coeffs(t)
    if likelihood_weighting:
        per_example = per_example * process.diffusion(t) ** 2 * alpha**2 / (
            sigma**4 * scale**2)
    if min_snr_gamma:
        snr = (alpha / sigma) ** 2
        per_example = per_example * jnp.minimum(snr, min_snr_gamma) / scale**2
    return per_example


# score_sde's name for the same loss (denoising score matching).
dsm_loss = diffusion_loss


# --- the variational-bound term of a learned variance (DDPM) ----------------------------------

def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """The tanh approximation of Phi that DDPM/ADM/DiT use (kept for exact agreement)."""
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log P(bin of x) under N(means, e^(2 log_scales)) for 8-bit data in [-1, 1], in nats."""
    centred = x - means
    inv_std = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus,
                     jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def ddpm_step_log_variances(process: DiscreteDDPM, n: Array) -> tuple[Array, Array]:
    """(log beta_n, log beta~_n clipped) of DDPM step n: the two ends of a learned variance.

    beta~_n = beta_n (1 - abar_{n-1}) / (1 - abar_n) is 0 at n = 0, where DiT uses beta~_1.
    """
    import numpy as np

    betas, abar = process.betas, process.alphas_cumprod
    abar_prev = np.append(1.0, abar[:-1])
    posterior_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    clipped = np.log(np.append(posterior_var[1], posterior_var[1:]))
    dtype = float_dtype()
    return jnp.asarray(np.log(betas), dtype)[n], jnp.asarray(clipped, dtype)[n]


def ddpm_vb_term(process: LinearProcess, t: Array, x0: Array, x_t: Array, pred) -> Array:
    """Per-pixel variational-bound term (bits) of a learned variance at DDPM step n = N t - 1."""
    if not isinstance(process, DiscreteDDPM):
        raise ValueError("A learned variance (model.dit.learn_sigma=True) is the DDPM objective's; "
                         "set --config.sde.name=ddpm.")
    n = jnp.round(process.timestep(t)).astype(jnp.int32)
    s = process.step_time(n - 1)  # time of step n - 1 (t = 0, clean data, for n = 0)
    alpha_s, sigma_s = process.marginal_coeffs(s)
    alpha_t, sigma_t = process.marginal_coeffs(t)
    b = lambda v: broadcast_to_data(v, x0)  # noqa: E731
    a = alpha_t / alpha_s
    v = sigma_t**2 - a**2 * sigma_s**2
    coef_xt, coef_x0 = b(a * sigma_s**2 / sigma_t**2), b(alpha_s * v / sigma_t**2)
    true_mean = coef_xt * x_t + coef_x0 * x0
    log_beta, log_beta_tilde = ddpm_step_log_variances(process, n)
    # The mean comes from the stop-gradient prediction: this term trains the variance only.
    model_mean = coef_xt * x_t + coef_x0 * jax.lax.stop_gradient(pred.x0)
    frac = (pred.var_interp + 1.0) / 2.0
    model_log_var = frac * b(log_beta) + (1.0 - frac) * b(log_beta_tilde)
    kl = normal_kl(true_mean, b(log_beta_tilde), model_mean, model_log_var)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
    return jnp.where(b(n) == 0, nll, kl) / math.log(2.0)


__all__ = ["DEFAULT_TIME_SAMPLING", "TIME_SAMPLINGS", "ScoreFn", "denoising_loss",
           "diffusion_loss", "dsm_loss", "loss_options", "offset_noise", "sample_times"]
