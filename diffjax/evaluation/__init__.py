"""Sample-quality metrics computed with the standard FID Inception network.

Files: fid.py, inception*.py (the FID Inception network, its weights), stats.py (reference
statistics), sample_quality.py (FID/KID of a sampler), settings.py (eval sweeps), reports.py,
likelihood.py (bits/dim through the probability-flow ODE), fetch_weights.py.
Imports: sampling, diffusion, data, storage, runtime; never training or the modes.
"""

from diffjax.evaluation.fid import (
    ScoreWithSpread,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    load_statistics,
    save_statistics,
)
from diffjax.evaluation.inception import (
    inception_features,
    inception_features_and_logits,
    inception_logits,
)
from diffjax.evaluation.inception_network import FIDInceptionV3
from diffjax.evaluation.inception_weights import convert_torch_weights, load_inception_params

__all__ = [
    "FIDInceptionV3",
    "ScoreWithSpread",
    "convert_torch_weights",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "inception_features",
    "inception_features_and_logits",
    "inception_logits",
    "inception_score",
    "kernel_inception_distance",
    "load_inception_params",
    "load_statistics",
    "save_statistics",
]
