"""DDPM on CIFAR-10 (Ho et al. 2020), as score_sde reproduces it: score_sde's `vp/ddpm/cifar10.py`
(network `models/ddpm.py`, discrete VP = Ho's linear betas, ancestral sampling).

Expected result: Ho et al. report FID 3.17 (their Table 1, TensorFlow code, 800k steps);
score_sde's reproduction of the same model and sampler reports 3.24 (Song et al. 2021, Table 1:
ancestral sampling, 1000 steps). This config follows score_sde's code, so 3.24 is the number to
compare with; no diffjax run has measured it. A score_sde checkpoint of this model converts
(its parameter names match; docs/published_checkpoints.md):
    python -m diffjax.convert --source=score_sde --checkpoint=checkpoint_N.pth \
        --config=configs/cifar10_ddpm.py --workdir=DIR
Network: 35,218,947 parameters, equal to score_sde's models/ddpm.py at this config (measured
with score_sde's code; tests/test_ncsnpp.py). Ho et al. state 35.7M for their CIFAR-10 model;
that count is of their TensorFlow network, which was not available here to measure, and diffjax
pins score_sde's.

Launch: python -m diffjax.main --config=configs/cifar10_ddpm.py --workdir=DIR \\
    --config.data.data_dir=/data/tfds
then --mode=fid_stats once and --mode=eval (README, "Sampling, evaluation, likelihood").
Data: `tfds build cifar10 --file_format=array_record` (README, "Datasets").

Settings (Ho et al. / score_sde): data in [-1, 1], no dequantisation, random flips; NCSNpp with
resblock_type='ddpm' (Ho's residual blocks, plain sums: skip_rescale=False), nf 128, ch_mult
(1, 2, 2, 2), 2 blocks per resolution, attention at 16x16, dropout 0.1, convolutional
resampling, positional embedding of the integer step; 1000 steps with betas linear from 1e-4 to
0.02, the noise-prediction loss L_simple averaged over pixels (training.reduce_mean=True), steps
drawn uniformly; batch 128, Adam 2e-4, 5000 warm-up steps, gradient clipping 1, EMA 0.9999,
800k steps (Ho et al.; score_sde's default is 1.3M); ancestral sampling on all 1000 steps with
variance beta_t (Ho's and score_sde's choice), no clipping of x0 (score_sde; Ho's code clips).
"""

from diffjax.config.presets import check_variant, score_sde_cifar10


def get_config(arg: str | None = None):
    check_variant(arg, (), __file__.rsplit("/", 1)[-1])
    config = score_sde_cifar10()
    config.data.centered = True

    config.model.noise_embedding = "positional"
    config.model.parameterization = "eps"
    config.model.dropout = 0.1
    config.model.unet.resblock_type = "ddpm"
    config.model.unet.skip_rescale = False
    config.model.unet.num_res_blocks = 2
    config.model.unet.fir = False
    config.model.unet.progressive_input = "none"
    config.model.unet.scale_by_sigma = False

    config.sde.name = "ddpm"
    config.sde.beta_schedule = "linear"
    config.sde.num_timesteps = 1000

    config.training.num_train_steps = 800_000
    config.training.ema_decay = 0.9999
    config.training.time_sampling = "uniform"
    config.training.reduce_mean = True

    config.sampling.method = "ddpm"
    config.sampling.num_steps = 1000
    config.sampling.variance = "beta"
    config.sampling.clip_denoised = False
    return config
