"""The one schema of every diffjax config: all keys, their types and defaults.

Config files start from `base_config()` and change values; they never add keys, so that a typo on
the command line (`--config.optim.lrr=1`) is an error instead of a silently ignored setting.
Sections come in a fixed order: data, model, sde, training, optim, sampling, eval, mesh.
Defaults are score_sde's CIFAR-10 settings (DDPM++ continuous, VP) where one exists.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from diffjax.parallel.sharding import DEFAULT_RULES


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = data = ml_collections.ConfigDict()
    data.dataset = "digits"  # a TFDS name; "digits" ships with diffjax
    data.data_dir = ""  # TFDS data_dir; "" = TFDS default (~/tensorflow_datasets)
    data.split = "train"
    data.eval_split = "test"
    data.image_size = 8
    data.num_channels = 1
    data.num_classes = 10
    data.centered = True  # [-1, 1] (VP family) or [0, 1] (VE)
    data.dequantize = True
    data.random_flip = False
    data.num_workers = 0  # Grain worker processes decoding batches; 0 = threads in this process
    data.prefetch = 2  # global batches kept on the devices ahead of the step (2 = double buffer)

    config.model = model = ml_collections.ConfigDict()
    model.name = "unet"  # "unet" or "dit"
    model.parameterization = "noise"  # network predicts the noise ("noise") or the score
    model.scale_input = False  # feed x / sqrt(alpha^2 sigma_data^2 + sigma^2)
    model.sigma_data = 0.5
    model.conditional = False  # class-conditional (labels from the dataset)
    model.label_dropout = 0.1  # probability of the null label, for classifier-free guidance
    model.dropout = 0.1
    model.noise_embedding = "positional"  # "positional" (VP) or "fourier" (VE)
    model.fourier_scale = 16.0
    model.dtype = "float32"  # compute dtype; parameters stay float32
    model.remat = False  # rematerialise network blocks (saves memory, costs compute)
    model.unet = unet = ml_collections.ConfigDict()
    unet.nf = 128
    unet.ch_mult = (1, 2, 2, 2)
    unet.num_res_blocks = 4
    unet.attn_resolutions = (16,)
    unet.resblock_type = "biggan"
    unet.skip_rescale = True
    unet.init_scale = 0.0
    model.dit = dit = ml_collections.ConfigDict()
    dit.size = ""  # "S", "B", "L", "XL" set depth/width/heads; "" uses the fields below
    dit.patch_size = 2
    dit.hidden_size = 384
    dit.depth = 12
    dit.num_heads = 6
    dit.mlp_ratio = 4.0
    dit.pos_embed = "sincos"

    config.sde = sde = ml_collections.ConfigDict()
    sde.name = "vp"  # "vp", "subvp" or "ve"
    sde.beta_min = 0.1
    sde.beta_max = 20.0
    sde.sigma_min = 0.01
    sde.sigma_max = 50.0

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128  # global, over all devices and hosts
    training.num_train_steps = 1_300_000
    training.microbatches = 1  # gradient accumulation: batch_size / microbatches per pass
    training.log_every_steps = 100
    training.checkpoint_every_steps = 10_000
    training.sample_every_steps = 50_000
    training.max_checkpoints_to_keep = 3
    training.async_checkpointing = True
    training.num_sample_images = 64  # size of the sample grids written during training
    training.ema_decay = 0.9999
    training.ema_warmup = True  # decay min(ema_decay, (1 + step) / (10 + step))
    training.eps = 1e-5  # smallest training time
    training.likelihood_weighting = False
    training.reduce_mean = False  # mean (True) or sum (False) over pixels, as score_sde
    training.preemption_check_every_steps = 10  # multi-host agreement on SIGTERM
    training.profile_first_step = -1  # >= 0: trace steps [first, first + num) to WORKDIR/profile
    training.profile_num_steps = 5

    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "adam"  # "adam" or "adamw"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup_steps = 5000
    optim.grad_clip = 1.0  # global-norm clipping; <= 0 disables it

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "euler_maruyama"
    sampling.num_steps = 1000
    sampling.eps = config_dict.placeholder(float)  # final time; None = 1e-3 (VP, sub-VP), 1e-5 (VE)
    sampling.denoise = True  # final Tweedie step at t = eps (one more network evaluation)
    sampling.predictor = "reverse_diffusion"  # for method "pc"
    sampling.snr = 0.16  # Langevin corrector signal-to-noise ratio
    sampling.corrector_steps = 1
    # "uniform" (in t), "edm" (rho schedule), "log_snr"; None = each sampler's best grid.
    sampling.time_grid = config_dict.placeholder(str)
    sampling.rho = 7.0
    sampling.order = 3  # DPM-Solver multistep order
    sampling.solver = "dopri5"  # adaptive ODE solver
    sampling.rtol = 1e-5
    sampling.atol = 1e-5
    sampling.max_steps = 4096
    sampling.guidance_scale = 0.0  # classifier-free guidance w; 0 = plain conditional
    sampling.use_ema = True
    sampling.num_samples = 64  # --mode=sample
    sampling.batch_size = 64

    config.eval = evaluation = ml_collections.ConfigDict()
    evaluation.num_samples = 50_000
    evaluation.batch_size = 500  # global sampling batch
    evaluation.checkpoints = "all"  # "all" without report, "latest", "watch", or "1000,2000"
    evaluation.reference_split = "train"  # also "train[:N]": the first N images
    evaluation.stats_dir = ""  # "" = ~/.cache/diffjax/fid_stats
    evaluation.inception_batch_size = 200
    evaluation.compute_kid = True
    evaluation.compute_is = True
    evaluation.watch_timeout_s = 3600
    evaluation.likelihood_split = "test"
    evaluation.likelihood_batch_size = 128
    evaluation.likelihood_max_examples = 0  # 0 = the whole split
    evaluation.keep_samples = False  # keep eval/<step>.samples/ after the report is written

    config.mesh = mesh = ml_collections.ConfigDict()
    mesh.data = -1
    mesh.fsdp = 1
    mesh.tensor = 1
    mesh.dcn_data = 1
    mesh.dcn_fsdp = 1
    mesh.dcn_tensor = 1
    mesh.rules = DEFAULT_RULES
    return config
