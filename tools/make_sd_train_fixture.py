"""Write the reference fixture of diffjax's Stable Diffusion fine-tuning loss.

diffusers' examples/text_to_image/train_text_to_image.py computes, per step (diffusers 0.42.1):

    noise = randn_like(latents) [+ noise_offset * randn(B, C, 1, 1)]
    noisy = DDPMScheduler.add_noise(latents, noise, timesteps)        # scaled_linear table
    target = noise (epsilon) or DDPMScheduler.get_velocity(latents, noise, timesteps) (v)
    pred = unet(noisy, timesteps, encoder_hidden_states).sample
    loss = mse(pred, target) per example, times min(snr, gamma) / snr (epsilon) or
           min(snr, gamma) / (snr + 1) (v) with `training_utils.compute_snr` when --snr_gamma

This script runs exactly those library calls (the scheduler, `compute_snr`, the U-Net) on the tiny
random SD 1.x U-Net of tests/fixtures/sd_unet/sd1 (every parameter random) with fixed latents,
noise (offset noise included), timesteps (0 and 999 among them) and text states, and stores the
per-example losses for epsilon and v-prediction, with and without Min-SNR-gamma (gamma 5), in
float32 (as users train) and float64.

Output: tests/fixtures/sd_training/reference.npz, NHWC inputs:
    latents [4, 8, 8, 4], noise [4, 8, 8, 4] (offset included), timesteps [4] int,
    context [4, 7, 32], and loss{32,64}_{epsilon,v_prediction}_{plain,snr5} [4].

Regenerate from the repository root with torch + diffusers (never in diffjax's .venv):

    toolsenv/bin/python tools/make_sd_train_fixture.py     # torch 2.14.1, diffusers 0.42.1

Test: tests/test_sd_training.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr

ROOT = Path(__file__).resolve().parents[1]
UNET = ROOT / "tests" / "fixtures" / "sd_unet" / "sd1"
OUT = ROOT / "tests" / "fixtures" / "sd_training"
GAMMA = 5.0
NOISE_OFFSET = 0.1


def loss_of(unet, scheduler, latents, noise, timesteps, context, gamma):
    """train_text_to_image.py's loss, per example (the script then averages the batch)."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = scheduler.get_velocity(latents, noise, timesteps)
    pred = unet(noisy, timesteps, context, return_dict=False)[0]
    loss = torch.nn.functional.mse_loss(pred, target, reduction="none")
    loss = loss.mean(dim=list(range(1, loss.ndim)))
    if gamma:
        snr = compute_snr(scheduler, timesteps)
        weights = torch.stack([snr, gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
        if scheduler.config.prediction_type == "epsilon":
            weights = weights / snr
        else:
            weights = weights / (snr + 1)
        loss = loss * weights
    return loss


def main():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    batch, channels, size = 4, 4, 8
    latents = torch.randn(batch, channels, size, size, generator=generator).half().float()
    noise = torch.randn(batch, channels, size, size, generator=generator)
    noise = (noise + NOISE_OFFSET * torch.randn(batch, channels, 1, 1, generator=generator))
    noise = noise.half().float()  # exact in float32 and float64
    timesteps = torch.tensor([0, 137, 620, 999])
    context = torch.randn(batch, 7, 32, generator=generator).half().float()
    unet = UNet2DConditionModel.from_pretrained(UNET).eval()
    arrays = {"latents": latents.permute(0, 2, 3, 1).numpy(),
              "noise": noise.permute(0, 2, 3, 1).numpy(), "timesteps": timesteps.numpy(),
              "context": context.numpy()}
    for dtype, tag in ((torch.float32, "32"), (torch.float64, "64")):
        model = unet.to(dtype)
        for prediction in ("epsilon", "v_prediction"):
            scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085,
                                      beta_end=0.012, beta_schedule="scaled_linear",
                                      prediction_type=prediction)
            for gamma, name in ((0.0, "plain"), (GAMMA, "snr5")):
                with torch.no_grad():
                    loss = loss_of(model, scheduler, latents.to(dtype), noise.to(dtype),
                                   timesteps, context.to(dtype), gamma)
                arrays[f"loss{tag}_{prediction}_{name}"] = loss.numpy()
                print(tag, prediction, name, loss.numpy())
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(OUT / "reference.npz", **arrays)
    print(f"wrote {OUT / 'reference.npz'}")


if __name__ == "__main__":
    main()
