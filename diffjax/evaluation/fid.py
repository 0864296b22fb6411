"""FID, KID and Inception Score from FID-Inception features / logits.

All statistics are float64 numpy: the Fréchet distance subtracts traces of
2048x2048 matrices that are orders of magnitude larger than the result, and
float32 there costs whole FID points. Formulas follow the reference
implementations (TTUR / pytorch-fid for FID, "Demystifying MMD GANs" for KID,
Salimans et al. for IS) so the numbers are comparable with published ones as
long as the features come from ``diffjax.evaluation.inception``.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.linalg
import scipy.special

from diffjax.storage import filesystem as fs

# Only used when sigma1 @ sigma2 is numerically singular (e.g. fewer samples
# than feature dimensions); same value as pytorch-fid.
DEFAULT_SQRTM_EPS = 1e-6
# Largest imaginary part of sqrtm's diagonal that is still rounding noise.
_IMAGINARY_TOLERANCE = 1e-3


class ScoreWithSpread(NamedTuple):
    """Mean and standard deviation over subsets / splits."""

    mean: float
    std: float


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D], in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(
            f"Expected features shaped [N, D] with N >= 2, got {features.shape}; "
            "compute them with inception_features on at least two images."
        )
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    with warnings.catch_warnings():
        # Singular products are the norm with fewer samples than dimensions;
        # they are handled below instead of warned about.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            # No stable square root: nudge both covariances towards the identity.
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        largest_imaginary = np.max(np.abs(np.diagonal(covmean).imag))
        if largest_imaginary > _IMAGINARY_TOLERANCE:
            raise ValueError(
                f"sqrt(sigma1 @ sigma2) has imaginary component {largest_imaginary:.3g}; the "
                "covariances are degenerate — use more samples than feature dimensions."
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    # sigma1 @ sigma2 is similar to the PSD matrix S1^1/2 sigma2 S1^1/2, so the
    # trace of its square root is the sum of square roots of symmetric
    # eigenvalues: two eigh calls instead of a (complex) Schur decomposition.
    values, vectors = scipy.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    inner = scipy.linalg.eigvalsh(root1 @ sigma2 @ root1)
    return float(np.sum(np.sqrt(np.clip(inner, 0.0, None))))


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = DEFAULT_SQRTM_EPS,
    method: str = "sqrtm",
) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2))``.

    ``method="sqrtm"`` is the reference computation (scipy.linalg.sqrtm, eps
    offset for singular products, imaginary rounding noise dropped).
    ``method="eigh"`` gives the same value up to rounding via symmetric
    eigenvalues and is several times faster on CPU for 2048-d statistics.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"Statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
            f"{sigma2.shape}; both sets must come from the same feature extractor (2048-d pool3)."
        )
    if method == "sqrtm":
        trace_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
    elif method == "eigh":
        trace_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    else:
        raise ValueError(f"Unknown method {method!r}; use 'sqrtm' (reference) or 'eigh' (faster).")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean)


def fid_from_features(features1: np.ndarray, features2: np.ndarray, method: str = "sqrtm") -> float:
    """FID between two feature sets [N, D] (see ``frechet_distance``)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2), method=method)


def save_statistics(path: str | Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write ``mu`` and ``sigma`` to an .npz (same keys as TTUR / pytorch-fid files)."""
    buffer = io.BytesIO()
    np.savez(buffer, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))
    fs.write_atomic(str(path), buffer.getvalue())


def load_statistics(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(fs.read_bytes(str(path)))) as stats:
        if "mu" not in stats or "sigma" not in stats:
            raise KeyError(
                f"{path} has keys {sorted(stats.files)}, not 'mu' and 'sigma'; "
                "create reference statistics with save_statistics(path, *feature_statistics(features))."
            )
        return stats["mu"].astype(np.float64), stats["sigma"].astype(np.float64)


def _cubic_polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> ScoreWithSpread:
    """Kernel Inception Distance: unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3.

    Averaged over ``num_subsets`` random subsets of
    ``min(N1, N2, max_subset_size)`` samples drawn without replacement from
    each set, as in the reference implementation (report ``mean``; published
    tables often multiply it by 1000).
    """
    x_all = np.asarray(features1, np.float64)
    y_all = np.asarray(features2, np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"Expected two feature sets [N, D] with equal D, got {x_all.shape} and {y_all.shape}.")
    subset_size = min(x_all.shape[0], y_all.shape[0], max_subset_size)
    if subset_size < 2:
        raise ValueError("KID needs at least two samples in each set; pass more images.")

    rng = np.random.default_rng(seed)
    estimates = np.empty(num_subsets, dtype=np.float64)
    for i in range(num_subsets):
        x = x_all[rng.choice(x_all.shape[0], subset_size, replace=False)]
        y = y_all[rng.choice(y_all.shape[0], subset_size, replace=False)]
        k_xx = _cubic_polynomial_kernel(x, x)
        k_yy = _cubic_polynomial_kernel(y, y)
        k_xy = _cubic_polynomial_kernel(x, y)
        # Unbiased: the diagonal k(x_i, x_i) terms are left out of the within-set means.
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (subset_size * (subset_size - 1))
        estimates[i] = within - 2.0 * k_xy.mean()
    return ScoreWithSpread(float(estimates.mean()), float(estimates.std()))


def inception_score(logits: np.ndarray, num_splits: int = 10) -> ScoreWithSpread:
    """Inception Score exp(E_x KL(p(y|x) || p(y))) from classifier logits [N, C].

    Use the 1008-way logits of the FID Inception
    (``inception_features_and_logits``); the mean and std are over
    ``num_splits`` equal splits, as in the original implementation.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or logits.shape[0] < num_splits:
        raise ValueError(
            f"Expected logits [N, C] with N >= num_splits={num_splits}, got {logits.shape}; "
            "pass more images or lower num_splits."
        )
    log_probs = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    scores = []
    for split in np.array_split(log_probs, num_splits):
        log_marginal = scipy.special.logsumexp(split, axis=0) - np.log(split.shape[0])
        kl = np.sum(np.exp(split) * (split - log_marginal), axis=1)
        scores.append(np.exp(kl.mean()))
    return ScoreWithSpread(float(np.mean(scores)), float(np.std(scores)))
