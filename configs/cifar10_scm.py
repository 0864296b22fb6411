"""sCM on CIFAR-10 (Lu & Song, 2024, "Simplifying, Stabilizing & Scaling Continuous-Time
Consistency Models"): continuous-time consistency training on TrigFlow (sCT, the default), or
`:distill`, consistency distillation (sCD) of EDM's CIFAR-10 network.

Expected result (the paper's CIFAR-10 table, unconditional, 50k-sample FID; check the numbers
against the paper before relying on them): sCT 2.97 at 1 step and 2.06 at 2 steps; sCD 3.66 at
1 step and 2.52 at 2 steps. diffjax has not reproduced them (no accelerator or CIFAR-10 here);
its sCM objective is checked against exact answers (tests/test_consistency.py) and was trained
on digits only (README, "Measured").

Launch (sCT, one 8-GPU host; FastGen trains 350k steps at batch 512):
    python -m diffjax.main --config=configs/cifar10_scm.py --workdir=runs/sct \\
        --config.data.data_dir=/data/tfds
    python -m diffjax.main --config=configs/cifar10_scm.py --workdir=runs/sct \\
        --config.data.data_dir=/data/tfds --mode=eval --config.eval.sweep='sampling.num_steps=1,2'
sCD from EDM's released network (converted as docs/published_checkpoints.md says):
    python -m diffjax.convert --source=edm --checkpoint=edm-cifar10-32x32-uncond-vp.pkl \\
        --config=configs/cifar10_edm.py --workdir=runs/edm
    python -m diffjax.main --config=configs/cifar10_scm.py:distill --workdir=runs/scd \\
        --config.model.teacher=runs/edm --config.data.data_dir=/data/tfds
2-step sampling at the paper's middle time: --config.sampling.num_steps=2 with
--config.sampling.intermediate_times=1.1 (sCT, TrigFlow's t) or 0.821 (sCD: EDM's sigma).

Settings. sCT: the TrigFlow process with sigma_d = 0.5, the network's output is F with input
x / sigma_d and time conditioning c_noise(t) = t (positional embedding), on EDM's DDPM++
(SongUNet, 55.7M parameters + 257 of the adaptive weighting's log-variance head) with dropout
0.20; tan(t) = e^tau / sigma_d, tau ~ N(-1.0, 1.4^2); tangent normalisation c = 0.1, tangent
warm-up over 10k steps, prior weighting 1 / (sigma_d tan t), adaptive weighting (EDM2's learned
log-variance). sCD: the student is EDM's network with EDM's preconditioning, started from the
teacher's weights (as NVlabs' FastGen does: F is the TrigFlow form of the EDM denoiser), the
teacher's probability-flow ODE as dx/dt.
The optimiser and schedule are NVlabs/FastGen's `config_sct_cifar10.py` / `config_scm.py` (the
paper gives its own in Appendix G; not checked here): RAdam there, Adam here (diffjax has no
RAdam), lr 1e-4, betas (0.9, 0.99), no weight decay, no warm-up, no gradient clipping, batch
512, 350k steps, EMA 0.9999. FastGen's sCT starts from EDM's weights; this config trains from
scratch as the paper's sCT does (its `:distill` is the EDM-initialised route).
"""

import importlib.util
import os

from diffjax.config.presets import check_variant

BATCH = 512


def _edm_config():
    """configs/cifar10_edm.py: EDM's DDPM++ on CIFAR-10, the network both variants use."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_edm.py")
    spec = importlib.util.spec_from_file_location("cifar10_edm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(None)


def get_config(arg: str | None = None):
    check_variant(arg, ("distill",), __file__.rsplit("/", 1)[-1])
    distill = arg == "distill"
    config = _edm_config()

    config.model.dropout = 0.2
    if not distill:  # sCT: TrigFlow's F output (distillation keeps EDM's preconditioning)
        config.model.parameterization = "trigflow"
        config.model.scale_input = True

    if not distill:
        config.sde.name = "trigflow"

    config.training.objective = "consistency"
    config.training.batch_size = BATCH
    config.training.num_train_steps = 350_000
    config.training.checkpoint_every_steps = 10_000
    config.training.sample_every_steps = 25_000
    config.training.ema_decay = 0.9999
    config.training.ema_warmup = True
    config.training.P_mean = -1.0
    config.training.P_std = 1.4
    config.training.consistency.tangent_warmup_steps = 10_000
    config.training.consistency.tangent_norm_c = 0.1
    config.training.consistency.adaptive_weighting = True
    config.training.consistency.prior_weighting = True

    config.optim.optimizer = "adam"
    config.optim.lr = 1e-4
    config.optim.beta1 = 0.9
    config.optim.beta2 = 0.99
    config.optim.warmup_steps = 0
    config.optim.grad_clip = 0.0

    config.sampling.method = "consistency"
    config.sampling.num_steps = 2
    config.sampling.intermediate_times = "0.821" if distill else "1.1"
    return config
