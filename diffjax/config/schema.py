"""The one schema of every diffjax config: all keys, their types and defaults.

Config files start from `base_config()` and change values; they never add keys, so that a typo on
the command line (`--config.optim.lrr=1`) is an error instead of a silently ignored setting.
Sections come in a fixed order: data, model, autoencoder, classifier, pipeline, sde, training,
optim, sampling, eval, mesh, compile, export.
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
    # Latent diffusion: a latent dataset written by --mode=encode_latents (diffjax/latents/).
    data.latent_dir = ""  # "" = train on pixels
    data.latent_views = 2  # views encoded per image: 1 = as is, 2 = also its horizontal flip
    data.latent_dtype = "float16"  # storage of posterior mean/std: "float16" or "float32"
    data.classes = ""  # train on these class ids only ("3" or "3,7"); "" = every class
    # Text-to-image (diffjax/data/captions.py, diffjax/latents/text_cache.py): captions come from
    # a TFDS text feature or an image folder; --mode=encode_latents caches the text encoder's
    # outputs beside the latents (or, with cache_pixels, the images), so training runs no encoder.
    data.caption_key = ""  # TFDS feature holding the captions, "/" for nesting: "captions/text"
    data.image_folder = ""  # images + metadata.jsonl (file_name, text) or NAME.txt; replaces TFDS
    data.text_encoder = ""  # "" = no text; "minilm", "bert" or "clip" (diffjax.text)
    data.text_encoder_folder = ""  # the encoder's folder ("minilm": "" = the pip package)
    data.text_max_length = 0  # tokens per caption; 0 = the encoder's own limit
    data.captions_per_image = 1  # captions kept per image (training draws one per step)
    data.skip_bad_examples = False  # skip (count, log) bad images/captions instead of stopping
    data.cache_pixels = False  # encode_latents stores the images (pixel models), not latents

    config.model = model = ml_collections.ConfigDict()
    model.name = "ncsnpp"  # "ncsnpp" (score_sde's DDPM++/NCSN++; "unet" is an alias) or "dit"
    # (or "pixart": DiT with cross-attention to text, PixArt-alpha; sizes from model.dit; or
    # "sd_unet": Stable Diffusion's U-Net, diffusers' UNet2DConditionModel, on text)
    # What the output means (diffjax/diffusion/parameterization.py): "eps" (alias "noise"), "score", "x0", "v",
    # "velocity" (flow matching) or "edm" (EDM's preconditioned F).
    model.parameterization = "eps"
    model.scale_input = False  # feed x / sqrt(alpha^2 sigma_data^2 + sigma^2) ("edm": always)
    model.sigma_data = 0.5  # EDM's sigma_data (preconditioning and input scaling)
    model.conditional = False  # class-conditional (labels from the dataset)
    model.label_dropout = 0.1  # probability of the null label, for classifier-free guidance
    model.dropout = 0.1
    model.noise_embedding = "positional"  # "positional" (999 t, VP) or "fourier" (log sigma, VE)
    model.fourier_scale = 16.0
    model.dtype = "float32"  # compute dtype; parameters stay float32
    model.remat = False  # rematerialise network blocks (saves memory, costs compute)
    # A second time input: noise_cond [B, 2] = (c(t), t - r), for MeanFlow's average velocity.
    model.second_time_embedding = False
    # Distillation: the workdir of a trained diffjax run (its config.json and checkpoints): its
    # EMA network is the teacher, and the student starts from its weights.
    model.teacher = ""
    # model.name="sd_unet" takes its architecture from a diffusers folder: `pretrained` (a
    # pipeline root with unet/, or the U-Net's own folder) also gives the starting weights (a
    # fine-tune); `sd_unet_config` (a U-Net config.json or its folder) trains from scratch.
    model.pretrained = ""
    model.sd_unet_config = ""
    # score_sde's NCSNpp switches (models/ncsnpp.py); DDPM++ cont. (VP) values by default.
    model.unet = unet = ml_collections.ConfigDict()
    unet.nf = 128
    unet.ch_mult = (1, 2, 2, 2)
    unet.num_res_blocks = 4
    unet.attn_resolutions = (16,)
    unet.resblock_type = "biggan"  # "biggan" (resampling inside residual blocks) or "ddpm"
    unet.resamp_with_conv = True
    unet.fir = False  # FIR up/down-sampling (NCSN++)
    unet.fir_kernel = (1, 3, 3, 1)
    unet.skip_rescale = True  # residual sums divided by sqrt(2)
    unet.progressive = "none"  # output pyramid: "none", "output_skip", "residual"
    unet.progressive_input = "none"  # input pyramid: "none", "input_skip", "residual" (NCSN++)
    unet.progressive_combine = "sum"  # "sum" or "cat"
    unet.init_scale = 0.0  # scale of output-layer init; 0 = 1e-10 as score_sde
    unet.nonlinearity = "swish"  # "swish", "elu", "relu", "lrelu"
    unet.noise_conditional = True  # score_sde's model.conditional (noise-level conditioning)
    unet.scale_by_sigma = False  # output / exp(noise_cond) = output / sigma (VE only)
    unet.label_embedding = "embedding"  # class table added to the "embedding" or "noise_features"
    # EDM's augmentation-label layer (map_augment; 9 in EDM's CIFAR-10 networks), fed zeros:
    # diffjax has no augmentation pipeline; it holds the weights of converted EDM networks.
    unet.augment_dim = 0
    model.dit = dit = ml_collections.ConfigDict()
    dit.size = ""  # "S", "B", "L", "XL" set depth/width/heads; "" uses the fields below
    dit.patch_size = 2
    dit.hidden_size = 384
    dit.depth = 12
    dit.num_heads = 6
    dit.mlp_ratio = 4.0
    dit.pos_embed = "sincos"
    dit.learn_sigma = False  # DiT's 2C-channel output: the noise, then the variance interpolation
    # LoRA fine-tuning (diffjax/lora/): train low-rank adapters on a frozen base run's network.
    model.lora = lora = ml_collections.ConfigDict()
    lora.rank = 0  # 0 = off (train the whole network)
    lora.alpha = 0.0  # adapter scale alpha / rank; 0 = rank (scale 1)
    # Layers that get adapters: a preset ("attention", "all", "sd_attention", "dit_attention",
    # "ncsnpp_attention") or a regular expression over module paths (diffjax/lora/targets.py).
    lora.targets = "attention"
    lora.dropout = 0.0  # dropout on the adapter's input, in training only
    lora.base = ""  # WORKDIR of the run whose (EMA) network is fine-tuned; required with rank
    # ControlNet (diffjax/models/ncsnpp_controlnet.py): a trainable copy of the base's down path
    # steers a frozen base run's network with a conditioning image computed from each image.
    model.controlnet = ""  # "" = off, else the conditioning (diffjax/data/conditions.py)
    model.controlnet_base = ""  # WORKDIR of the frozen base run (required with controlnet)
    model.controlnet_scale = 1.0  # conditioning_scale: residuals times this

    # The first stage of latent diffusion: diffusers' AutoencoderKL (diffjax/latents/). Defaults
    # are the SD-VAE (kl-f8) and LDM's first-stage objective without LPIPS and discriminator.
    config.autoencoder = autoencoder = ml_collections.ConfigDict()
    autoencoder.pretrained = ""  # diffusers folder (or pipeline root with vae/); "" = train one
    autoencoder.block_out_channels = (128, 256, 512, 512)  # downsampling 2^(len - 1)
    autoencoder.layers_per_block = 2
    autoencoder.latent_channels = 4
    autoencoder.norm_num_groups = 32
    autoencoder.mid_block_attention = True
    autoencoder.use_quant_conv = True
    autoencoder.use_post_quant_conv = True
    # Model-space latents (z - shift) * scale; None = config.json's scaling_factor / shift_factor
    # for a pretrained VAE, 1.0 / 0.0 for a trained one.
    autoencoder.scale = config_dict.placeholder(float)
    autoencoder.shift = config_dict.placeholder(float)
    autoencoder.dtype = "float32"  # compute dtype; parameters stay float32
    autoencoder.batch_size = 64  # images per encode/decode call (global)
    autoencoder.kl_weight = 1e-6  # LDM kl-f8
    autoencoder.reconstruction_loss = "l1"  # "l1" (LDM) or "l2", summed over pixels
    autoencoder.sample_posterior = True  # decode a posterior sample (True) or the mean in training
    # --mode=train_autoencoder (into WORKDIR/autoencoder): these replace training.num_train_steps,
    # training.batch_size and optim.lr; the other training and optim keys are shared.
    autoencoder.train_steps = 50_000
    autoencoder.train_batch_size = 64
    autoencoder.lr = 4.5e-6 * 64  # LDM: base lr 4.5e-6 scaled by the batch size

    # Noise-conditional classifier for classifier guidance (--mode=train_classifier, into
    # WORKDIR/classifier; sampling.classifier_scale uses it). It sees x_t of the sde section's
    # process, scaled to unit variance, and that process's noise conditioning.
    config.classifier = classifier = ml_collections.ConfigDict()
    # "unet" (an encoder U-Net of diffjax's blocks), "dit" (a small DiT encoder) or "adm"
    # (guided-diffusion's EncoderUNetModel exactly: x_t unscaled, conditioned on the timestep
    # index; its published classifiers convert with `python -m diffjax.convert
    # --source=adm_classifier`, configs/imagenet_adm_classifier.py).
    classifier.name = "unet"
    classifier.nf = 32  # unet, adm: widths nf * ch_mult (adm: multipliers may be fractional)
    classifier.ch_mult = (1, 2, 2)
    classifier.num_res_blocks = 2
    classifier.attn_resolutions = (16,)
    classifier.dropout = 0.0
    classifier.patch_size = 2  # dit
    classifier.hidden_size = 128
    classifier.depth = 4
    classifier.num_heads = 4  # dit; adm when classifier.num_head_channels = -1
    # adm: guided-diffusion's switches (its published classifiers: these defaults).
    classifier.num_head_channels = 64  # channels per attention head; -1 = num_heads heads
    classifier.pool = "attention"  # CLIP-style attention pooling, or "adaptive" (mean)
    classifier.resblock_updown = True  # residual down-sampling blocks (else a stride-2 conv)
    classifier.use_scale_shift_norm = True  # the time embedding as GroupNorm scale and shift
    classifier.new_attention_order = False  # q/k/v split before heads (False: ADM's legacy)
    # --mode=train_classifier: these replace training.num_train_steps, training.batch_size and
    # optim.lr; the other training and optim keys are shared.
    classifier.train_steps = 20_000
    classifier.train_batch_size = 128
    classifier.lr = 3e-4  # ADM's classifiers
    classifier.pretrained = ""  # a classifier run's folder; "" = WORKDIR/classifier

    # A pretrained text-to-image pipeline: a diffusers folder (diffjax/pipelines/). When set,
    # --mode=sample and --mode=eval draw images from it with sampling.prompts / eval.prompts
    # instead of restoring a checkpoint; the diffusion keys above are then not used.
    config.pipeline = pipeline = ml_collections.ConfigDict()
    pipeline.folder = ""  # model_index.json + text_encoder(_2)/ tokenizer(_2)/ unet/ vae/ ...
    pipeline.scheduler = ""  # "" = the folder's; or a class name, e.g. "EulerDiscreteScheduler"
    pipeline.height = 0  # 0 = the folder's default (unet sample_size x VAE factor)
    pipeline.width = 0
    pipeline.dtype = "float32"  # compute dtype: "float32" or "bfloat16"
    pipeline.clip_skip = 0  # SD 1.x / 2.x: take the text encoder's state k layers earlier
    # Prompt cleaning: "clip" (the original CLIP tokenizer's: ftfy, HTML unescaped) or
    # "transformers" (diffusers' fast tokenizer; differs on "&amp;", curly quotes, mojibake).
    pipeline.tokenizer_cleaning = "clip"
    # Adapters (diffjax/lora, pipelines/adapters.py): LoRA files, diffusers/PEFT or kohya layout,
    # unmerged, "a.safetensors" or "a.safetensors:0.8,b.safetensors:0.5" (path:scale). A
    # ControlNet folder with its conditioning image (a PNG/JPEG of the images' size, RGB in
    # [0, 255]) for every prompt, at controlnet_scale.
    pipeline.lora = ""
    pipeline.controlnet = ""
    pipeline.controlnet_image = ""
    pipeline.controlnet_scale = 1.0

    config.sde = sde = ml_collections.ConfigDict()
    # The diffusion process (diffjax/diffusion/processes/): "vp", "subvp", "ve" (score_sde), "cosine",
    # "ddpm" (discrete, DiT/ADM), "flow" (flow matching / rectified flow), "edm".
    sde.name = "vp"
    sde.beta_min = 0.1  # vp, subvp
    sde.beta_max = 20.0
    # ve: None = 0.01 / 50 (score_sde); edm: None = 0.002 / 80 (EDM).
    sde.sigma_min = config_dict.placeholder(float)
    sde.sigma_max = config_dict.placeholder(float)
    sde.num_timesteps = 1000  # ddpm: N integer steps
    sde.beta_schedule = "linear"  # ddpm: "linear" (Ho et al., 1e-4..0.02), "cosine" (iDDPM) or
    # "scaled_linear" (Stable Diffusion, 0.00085..0.012)
    sde.beta_start = config_dict.placeholder(float)  # ddpm: None = the schedule's own
    sde.beta_end = config_dict.placeholder(float)
    # ddpm: the table's arithmetic, "float64" (DiT/ADM) or "float32" (diffusers' schedulers,
    # bit for bit: what a Stable Diffusion fine-tune trains with)
    sde.precision = "float64"
    sde.sigma_data = config_dict.placeholder(float)  # trigflow: sigma_d; None = model.sigma_data

    config.training = training = ml_collections.ConfigDict()
    # What the step minimises: "diffusion" (the denoising loss of diffjax/diffusion/losses.py),
    # "consistency" (sCM's continuous-time consistency training, or distillation with
    # model.teacher; diffjax/diffusion/consistency.py), "meanflow" (diffjax/diffusion/meanflow.py).
    training.objective = "diffusion"
    training.batch_size = 128  # global, over all devices and hosts
    training.num_train_steps = 1_300_000
    training.microbatches = 1  # gradient accumulation: batch_size / microbatches per pass
    training.log_every_steps = 100
    training.checkpoint_every_steps = 10_000
    training.sample_every_steps = 50_000  # also at the last step; 0 = no sample grids at all
    # Held-out loss (TensorBoard `eval_loss`): the objective on one fixed batch of
    # data.eval_split with fixed noise, EMA weights, every N steps (score_sde's eval loss); 0 = off.
    training.eval_every_steps = 1000
    training.max_checkpoints_to_keep = 3
    training.async_checkpointing = True
    training.num_sample_images = 64  # size of the sample grids written during training
    training.ema_decay = 0.9999
    training.ema_warmup = True  # decay min(ema_decay, (1 + step) / (10 + step))
    training.eps = 1e-5  # smallest training time
    # Distribution of training times (diffjax/diffusion/losses.py): None = the process's own (uniform;
    # ddpm: uniform over its steps; edm: log_normal), "uniform", "logit_normal", "log_normal".
    training.time_sampling = config_dict.placeholder(str)
    training.logit_normal_mean = 0.0  # logit_normal: t = sigmoid(mean + std z) (SD3: 0, 1)
    training.logit_normal_std = 1.0
    training.P_mean = -1.2  # log_normal: ln sigma~ ~ N(P_mean, P_std^2) (EDM)
    training.P_std = 1.2
    training.likelihood_weighting = False  # weight g(t)^2 on the score (score_sde)
    training.reduce_mean = False  # mean (True) or 0.5 * sum (False) over pixels, as score_sde
    training.preemption_check_every_steps = 10  # multi-host agreement on SIGTERM
    # sCM (Lu & Song, 2024); times: training.P_mean / P_std (log-normal sigma~ = sigma_d tan t).
    training.consistency = consistency = ml_collections.ConfigDict()
    consistency.tangent_warmup_steps = 10_000  # the tangent's second term ramps from 0 to 1
    consistency.tangent_norm_c = 0.1  # g / (||g|| + c)
    consistency.adaptive_weighting = True  # learned log-variance w_phi(t) (EDM2's)
    consistency.prior_weighting = True  # the 1 / (sigma_d tan t) factor
    # MeanFlow (Geng et al., 2025); times: t, r logit-normal (training.logit_normal_mean / std).
    training.meanflow = meanflow = ml_collections.ConfigDict()
    meanflow.ratio = 0.25  # fraction of the batch with r != t (the rest: r = t, flow matching)
    meanflow.norm_p = 1.0  # adaptive weight 1 / sg(loss + norm_eps)^p
    meanflow.norm_eps = 0.01  # the official code's c (the paper mentions 1e-3)
    # Guidance trained into the model (conditional models): v~ = omega v + (1 - omega - kappa)
    # u(z, t, t | null) + kappa u(z, t, t | y) for t in [guidance_t_start, guidance_t_end];
    # omega = 1, kappa = 0 is plain conditional training.
    meanflow.omega = 1.0
    meanflow.kappa = 0.0
    meanflow.guidance_t_start = 0.0
    meanflow.guidance_t_end = 1.0
    training.profile_first_step = -1  # >= 0: trace steps [first, first + num) to WORKDIR/profile
    training.profile_num_steps = 5
    training.wandb_project = ""  # "" = off; else a Weights & Biases project (pip diffjax[wandb])
    training.wandb_entity = ""
    training.wandb_run_name = ""  # also the W&B run id, so a resumed run continues it
    training.wandb_mode = "online"  # "online", "offline" or "disabled"
    # Text models: probability of the null caption (classifier-free guidance), drawn in-graph;
    # the null is the empty prompt's encoding ("empty", stored by encode_latents) or "zeros".
    training.caption_dropout = 0.1
    training.caption_null = "empty"
    # Min-SNR-gamma loss weighting (Hang et al., 2023; diffusers' --snr_gamma): the loss weight
    # of the x0 error is min(SNR(t), gamma), converted to any parameterisation; 0 = off (5 is
    # the paper's value).
    training.min_snr_gamma = 0.0
    # Offset noise (diffusers' --noise_offset): eps + offset * n, n ~ N(0, 1) one value per
    # image and channel, so that the model learns to shift the mean brightness; 0 = off.
    training.noise_offset = 0.0

    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "adam"  # "adam" or "adamw"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup_steps = 5000
    optim.schedule = "constant"  # after warm-up: "constant", "cosine" or "linear" decay
    optim.decay_steps = 0  # step at which the decay ends; <= 0 = training.num_train_steps
    optim.min_lr_ratio = 0.0  # final lr / lr for "cosine" and "linear"
    optim.grad_clip = 1.0  # global-norm clipping; <= 0 disables it

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "euler_maruyama"
    sampling.num_steps = 1000
    # Final time; None = the process's own: 1e-3 (VP family, flow), 1e-5 (VE), 1/N (ddpm),
    # sigma_min (edm).
    sampling.eps = config_dict.placeholder(float)
    sampling.denoise = True  # final Tweedie step at t = eps (one more network evaluation)
    sampling.predictor = "reverse_diffusion"  # for method "pc"
    sampling.snr = 0.16  # Langevin corrector signal-to-noise ratio
    sampling.corrector_steps = 1
    # "uniform" (in t), "edm" (rho schedule), "log_snr", "discrete" (ddpm's respaced steps);
    # None = each sampler's best grid.
    sampling.time_grid = config_dict.placeholder(str)
    sampling.rho = 7.0
    sampling.order = 3  # DPM-Solver multistep order
    sampling.algorithm_type = "dpmsolver++"  # DPM-Solver: data ("dpmsolver++") or noise prediction
    # DPM-Solver weights: "taylor_exact" (true order 3), "dpmsolver"/"taylor" (the official ones).
    sampling.solver_type = "taylor_exact"
    sampling.lower_order_final = True  # DPM-Solver: lower orders on the last steps below 10 steps
    sampling.eta = 0.0  # DDIM: 0 deterministic, 1 ancestral
    sampling.S_churn = 0.0  # edm_heun (EDM's Algorithm 2; 0 = deterministic Algorithm 1)
    sampling.S_min = 0.0
    sampling.S_max = float("inf")
    sampling.S_noise = 1.0
    sampling.variance = "beta_tilde"  # ddpm: "beta_tilde", "beta" or "learned"
    sampling.clip_denoised = False  # ddpm: clip x0_hat to [-1, 1]
    sampling.diffusion_form = "sigma"  # sit_sde: SiT's diffusion coefficient w(t)
    sampling.diffusion_norm = 1.0
    sampling.last_step = "mean"  # sit_sde: "mean", "tweedie", "euler", "none"
    sampling.last_step_size = 0.04
    sampling.solver = "dopri5"  # adaptive ODE solver
    sampling.rtol = 1e-5
    sampling.atol = 1e-5
    sampling.max_steps = 4096
    # consistency, meanflow: the N - 1 times between the N steps, as "t1,t2,..." in the process's
    # time (decreasing); "" = the interior points of sampling.time_grid.
    sampling.intermediate_times = ""
    # Classifier-free guidance s (DiT/diffusers convention): 1 = plain conditional, DiT uses 1.5.
    sampling.guidance_scale = 1.0
    # Guide only the first k output channels (0 = every prediction channel); DiT guides 3.
    sampling.guidance_channels = 0
    # Classifier guidance (Dhariwal & Nichol): s * grad log p(y | x_t) added to the score, with
    # the classifier of classifier.pretrained and the labels of sampling.labels; 0 = off.
    sampling.classifier_scale = 0.0
    sampling.use_ema = True
    sampling.num_samples = 64  # --mode=sample
    sampling.batch_size = 64
    sampling.checkpoint_step = -1  # --mode=sample: which checkpoint; -1 = the newest
    sampling.labels = ""  # --mode=sample, conditional: "" random, "grid", or "3,7" (class ids)
    sampling.write_pngs = False  # --mode=sample: also one PNG per image (for clean-fid etc.)
    sampling.inpaint = ""  # --mode=sample: a mask name (left_half, center, ...) or file
    # --mode=sample: a file of prompts (one per line) or "a cat|a dog", repeated to
    # num_samples; for a trained text model "" = captions of the cached dataset. The
    # negative prompt (Stable Diffusion pipelines) applies to every image ("" = none).
    sampling.prompts = ""
    sampling.negative_prompt = ""

    config.eval = evaluation = ml_collections.ConfigDict()
    evaluation.num_samples = 50_000
    evaluation.batch_size = 500  # global sampling batch
    evaluation.checkpoints = "all"  # "all" without report, "latest", "watch", or "1000,2000"
    evaluation.reference_split = "train"  # also "train[:N]": the first N images
    evaluation.stats_dir = ""  # "" = ~/.cache/diffjax/fid_stats
    # An .npz with the reference "mu" and "sigma" instead of computing them (e.g. ADM's
    # VIRTUAL_imagenet256_labeled.npz, against which DiT and SiT report FID); no KID then.
    evaluation.reference_stats = ""
    evaluation.inception_batch_size = 200
    evaluation.compute_kid = True
    evaluation.compute_is = True
    evaluation.watch_timeout_s = 3600
    evaluation.likelihood_split = "test"
    evaluation.likelihood_batch_size = 128
    evaluation.likelihood_max_examples = 0  # 0 = the whole split
    evaluation.keep_samples = False  # keep eval/<step>/<setting>.samples/ after the report
    # Cartesian sweep of sampler settings per checkpoint, e.g.
    # "sampling.guidance_scale=1,1.5;sampling.num_steps=10,20" (one report per setting).
    evaluation.sweep = ""
    # Text models: prompt following of eval.prompt_num_samples samples: on digits the accuracy of
    # a classifier trained on the real digits on prompts naming a digit; with a CLIP folder
    # (transformers' CLIPModel layout) also the CLIP score of samples drawn from dataset captions.
    # Pipelines (pipeline.folder): the prompts FID samples from, repeated to num_samples.
    evaluation.prompts = ""  # a file or "|"-list; "" = digits' own naming prompts
    evaluation.prompt_num_samples = 200
    evaluation.clip_model = ""

    config.mesh = mesh = ml_collections.ConfigDict()
    mesh.data = -1
    mesh.fsdp = 1
    mesh.tensor = 1
    mesh.dcn_data = 1
    mesh.dcn_fsdp = 1
    mesh.dcn_tensor = 1
    mesh.rules = DEFAULT_RULES

    # --mode=compile (diffjax/modes/compile.py): the train step or sampler compiled for a TPU
    # topology on this host (libtpu's compiler, no TPU): memory per chip, FLOPs, collectives.
    config.compile = compile_ = ml_collections.ConfigDict()
    compile_.topology = ""  # v4-8, v5p-256, v5e-16 (= v5litepod-16), v6e-8, v5p:4x4x12, or cpu
    compile_.num_slices = 1  # slices joined by DCN; the mesh's dcn_* sizes must multiply to it
    compile_.what = "train"  # "train" (the train step) or "sample" (the configured sampler)
    compile_.save_executable = ""  # a path: also write the serialized executable there
    compile_.memory_per_chip_gib = 0.0  # 0 = the chip's usable HBM (cpu: RAM / devices)

    # --mode=export (diffjax/modes/export.py): a trained sd_unet run as a diffusers folder.
    config.export = export = ml_collections.ConfigDict()
    export.folder = ""  # "" = WORKDIR/export/step_<N>; must not exist yet
    export.checkpoint_step = -1  # -1 = the newest checkpoint
    export.use_ema = True  # the EMA weights (what sampling uses) or the raw ones
    return config
