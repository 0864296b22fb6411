"""MeanFlow on ImageNet 256x256 (Geng et al., 2025, "Mean Flows for One-step Generative
Modeling"): MF-B/2 (`:B`) and MF-XL/2 (`:XL`, the default), class-conditional, on SD-VAE latents,
one-step sampling.

Expected result (the paper, 1-NFE FID-50k against ADM's reference batch, 240 epochs): MF-B/2
6.17, MF-XL/2 3.43 (2-NFE: XL/2 2.93). DiffuseNNX's JAX reproduction reports MF-B/2 6.61 and
MF-XL/2 3.78 (willisma/diffuse_nnx README). Not reproduced by diffjax (no accelerator or
ImageNet here); its MeanFlow objective is checked against exact answers and the official code's
loss (tests/test_meanflow.py) and was trained on digits only (README, "Measured").

Launch (TPU/GPU pod; the paper trained on TPUs):
    W=runs/mf_xl2
    huggingface-cli download stabilityai/sd-vae-ft-mse --local-dir $W/sd-vae-ft-mse
    python -m diffjax.main --config=configs/imagenet256_meanflow.py:XL --workdir=$W \\
        --config.data.data_dir=/data/tfds --mode=encode_latents
    python -m diffjax.main --config=configs/imagenet256_meanflow.py:XL --workdir=$W
    python -m diffjax.main --config=configs/imagenet256_meanflow.py:XL --workdir=$W --mode=eval \\
        --config.eval.sweep='sampling.num_steps=1,2'
(ADM's VIRTUAL_imagenet256_labeled.npz in the working directory for the FID reference.)

Settings (the official code, Gsunshine/meanflow, and the paper's Table 4): DiT-B/2 or XL/2 with
a second timestep embedder of t - r (MF-B/2 131,288,080 and MF-XL/2 676,735,504 parameters as
PyTorch/DiT count them, with the fixed sin-cos table; 131M and 676M in the paper), no learned
variance; flow matching x_t = (1 - t) x + t e, the network's output the average velocity; t and
r logit-normal(-0.4, 1.0), r != t for 25% of the batch; loss summed over latent pixels with the
adaptive weight 1 / sg(loss + 0.01)^1 (the official code's c; the paper's text gives 1e-3);
class dropout 0.1 in the objective (not in the network), guidance trained in (the official
`guidance_fn`): omega, kappa and the t interval per size (below); sampling is plain conditional
(guidance scale 1, one step from t = 1 to 0). Adam (betas 0.9, 0.95), lr 1e-4 constant, no
weight decay, no warm-up, no gradient clipping, batch 256, 240 epochs (1.2M steps), EMA 0.9999.
Guidance: MF-XL/2 omega 0.2, kappa 0.92 on t in [0, 0.75] (effective scale omega / (1 - kappa)
= 2.5; DiffuseNNX's `mf_imagenet.py`); MF-B/2 omega 1.0, kappa 0.5 on [0, 1] (the official
repository's defaults, effective 2.0) - check both against the paper's Table 4 before a long run.
Latents: SD-VAE ft-MSE (the official `vae='mse'`), scale 0.18215, with horizontal flips as a
second view (DiT's preprocessing; the official data preparation is not compared here).
"""

from diffjax.config.presets import check_variant, dit_imagenet256_latents

# size -> (omega, kappa, guidance interval)
GUIDANCE = {"B": (1.0, 0.5, (0.0, 1.0)), "XL": (0.2, 0.92, (0.0, 0.75))}
STEPS_240_EPOCHS = 1_281_167 * 240 // 256  # 1,201,094


def get_config(arg: str | None = None):
    check_variant(arg, tuple(GUIDANCE), __file__.rsplit("/", 1)[-1])
    size = arg or "XL"
    config = dit_imagenet256_latents(size)

    config.model.parameterization = "velocity"
    config.model.second_time_embedding = True
    config.model.label_dropout = 0.1  # applied by the MeanFlow objective, not the network
    config.model.dit.learn_sigma = False

    config.autoencoder.pretrained = "sd-vae-ft-mse"

    config.sde.name = "flow"

    config.training.objective = "meanflow"
    config.training.num_train_steps = STEPS_240_EPOCHS
    config.training.time_sampling = "logit_normal"
    config.training.logit_normal_mean = -0.4
    config.training.logit_normal_std = 1.0
    config.training.reduce_mean = False
    omega, kappa, (start, end) = GUIDANCE[size]
    m = config.training.meanflow
    m.ratio = 0.25
    m.norm_p = 1.0
    m.norm_eps = 0.01
    m.omega, m.kappa = omega, kappa
    m.guidance_t_start, m.guidance_t_end = start, end

    config.optim.optimizer = "adam"
    config.optim.beta2 = 0.95

    config.sampling.method = "meanflow"
    config.sampling.num_steps = 1
    config.sampling.guidance_scale = 1.0  # guidance is trained in
    config.sampling.guidance_channels = 0
    return config
