"""Fine-tuning Stable Diffusion's U-Net (model.name="sd_unet", configs/sd.py:finetune).

- The loss is diffusers' train_text_to_image loss: the same U-Net, latents, noise (offset noise
  included), steps and text states give the same per-example values, epsilon and v-prediction,
  with and without Min-SNR-gamma, float32 and float64 (tools/make_sd_train_fixture.py).
- Offset noise is one N(0, offset^2) shift per image and channel.
- End to end from the CLI on the tiny random SD 1.x folder: encode_latents (CLIP + SD-VAE of the
  folder) -> train from the folder's weights with min-SNR and offset noise -> export as a
  diffusers pipeline, whose U-Net is the checkpoint's EMA weights bit for bit and which diffjax's
  pipeline mode samples from; a fine-tune that disagrees with the folder's scheduler and an
  export over an existing folder are refused in one line.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, run_cli
from folder_edits import one_line_error
from sd_pipeline_folders import assemble

import diffjax
from diffjax.diffusion import losses
from diffjax.diffusion.processes import get_process
from diffjax.experiment import build_experiment, score_fn_for
from diffjax.models import build_model
from diffjax.models.sd_denoiser import pretrained_params

FIXTURES = os.path.join(REPO, "tests", "fixtures")
UNET = os.path.join(FIXTURES, "sd_unet", "sd1")
REFERENCE = os.path.join(FIXTURES, "sd_training", "reference.npz")


def finetune_config(*overrides, folder=UNET):
    return diffjax.load_config(f"configs/sd.py:finetune,test,folder={folder}", list(overrides))


def reference_loss(prediction: str, gamma: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(diffjax's per-example loss, diffusers') on the fixture's inputs."""
    ref = np.load(REFERENCE)
    config = finetune_config("--config.model.parameterization=" +
                             ("eps" if prediction == "epsilon" else "v"))
    module = build_model(config)
    params, _ = pretrained_params(module, UNET)
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    process = get_process(config.sde)
    context = jnp.asarray(ref["context"], dtype)
    text = {"states": context, "mask": jnp.ones(context.shape[:2], jnp.int32),
            "pooled": context[:, 0]}
    model = score_fn_for(config, module, process, params, labels=text)
    t = process.step_time(ref["timesteps"])
    ours = losses.denoising_loss(model, process, jnp.asarray(ref["latents"], dtype), t,
                                 jnp.asarray(ref["noise"], dtype), reduce_mean=True,
                                 min_snr_gamma=gamma)
    tag = "32" if dtype == jnp.float32 else "64"
    return np.asarray(ours), ref[f"loss{tag}_{prediction}_{'snr5' if gamma else 'plain'}"]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("gamma", [0.0, 5.0])
def test_loss_is_diffusers_train_text_to_image(prediction, gamma):
    ours, theirs = reference_loss(prediction, gamma, jnp.float32)
    assert np.max(np.abs(ours / theirs - 1)) < 2e-6, (ours, theirs)


def test_loss_in_float64():
    with jax.enable_x64(True):
        for prediction in ("epsilon", "v_prediction"):
            ours, theirs = reference_loss(prediction, 5.0, jnp.float64)
            # diffusers computes the SNR weight in float32 (compute_snr's .float()).
            assert np.max(np.abs(ours / theirs - 1)) < 1e-6, (ours, theirs)


def test_offset_noise_shifts_each_image_and_channel():
    rng = jax.random.key(3)
    plain = losses.offset_noise(rng, (64, 6, 5, 3), jnp.float32, 0.0)
    shifted = losses.offset_noise(rng, (64, 6, 5, 3), jnp.float32, 0.5)
    shift = np.asarray(shifted - plain)
    assert np.allclose(shift, shift[:, :1, :1, :], atol=1e-6)  # constant over H, W
    per_channel = shift[:, 0, 0, :]
    assert np.all(np.abs(per_channel) > 0) and 0.3 < per_channel.std() < 0.7
    assert not np.allclose(per_channel[:, 0], per_channel[:, 1])


def test_a_finetune_starts_from_the_folders_weights(tmp_path):
    from diffjax.state.train_state import create_state
    from diffjax.training.loop import _start_from_pretrained

    config = finetune_config(folder=str(assemble("sd1", tmp_path / "sd1")))
    experiment = build_experiment(config)
    state = create_state(experiment.model, experiment.optimizer, experiment.example_input(),
                         0, experiment.spec)
    state = _start_from_pretrained(experiment, state)
    weights, where = pretrained_params(experiment.model, UNET)  # the same file, copied
    assert where.endswith("diffusion_pytorch_model.safetensors")
    for ours in (state.params, state.ema_params):
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), ours, weights)


def test_from_scratch_takes_the_architecture_only(tmp_path):
    """model.sd_unet_config: the config.json's network, random weights (no fine-tune)."""
    from diffjax.state.train_state import create_state

    sd1 = assemble("sd1", tmp_path / "sd1")
    config = finetune_config("--config.model.pretrained=",
                             f"--config.model.sd_unet_config={sd1 / 'unet' / 'config.json'}",
                             folder=str(sd1))
    experiment = build_experiment(config)
    state = create_state(experiment.model, experiment.optimizer, experiment.example_input(),
                         0, experiment.spec)
    weights, _ = pretrained_params(experiment.model, UNET)
    assert jax.tree.structure(weights) == jax.tree.structure(jax.device_get(state.params))
    assert not np.allclose(state.params["conv_in"]["kernel"], weights["conv_in"]["kernel"])


def test_configuration_errors_are_one_line(tmp_path):
    from diffjax.config.checks import ConfigError
    from diffjax.modes import preflight

    sd1 = assemble("sd1", tmp_path / "sd1")
    wrong = finetune_config("--config.model.parameterization=v", folder=str(sd1))
    message = one_line_error(ConfigError, lambda: preflight.check_pretrained(wrong),
                             "prediction_type 'epsilon'")
    assert "--config.model.parameterization=eps" in message
    linear = finetune_config("--config.sde.beta_schedule=linear", folder=str(sd1))
    one_line_error(ConfigError, lambda: preflight.check_pretrained(linear),
                   "sde.beta_schedule='linear' differs from .*'scaled_linear'")
    sdxl = assemble("sdxl", tmp_path / "sdxl")
    one_line_error(ConfigError, lambda: preflight.check_pretrained(
        finetune_config(folder=str(sdxl))), "SDXL-style U-Net")
    both = finetune_config(f"--config.model.sd_unet_config={UNET}")
    one_line_error(ConfigError, lambda: preflight.check_pretrained(both), "exactly one of")
    other = diffjax.load_config("configs/digits.py:test", [f"--config.model.pretrained={UNET}"])
    one_line_error(ConfigError, lambda: preflight.check_pretrained(other),
                   "read by model.name='sd_unet' only")


def captioned_images(folder, count=6, size=(20, 24)):
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"a picture of thing {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_finetune_export_and_reload_from_the_cli(tmp_path):
    from diffjax.models import sd_unet_weights
    from diffjax.storage.checkpoints import Checkpointer

    sd1 = assemble("sd1", tmp_path / "sd1")
    images = captioned_images(tmp_path / "images")
    workdir = tmp_path / "run"
    common = (f"--config=configs/sd.py:finetune,test,folder={sd1}", f"--workdir={workdir}",
              f"--config.data.image_folder={images}")
    encoded = run_cli(*common, "--mode=encode_latents")
    assert "12 records (8, 8, 4)" in encoded.stdout and "text encoder clip (77 tokens" in \
        encoded.stdout
    trained = run_cli(*common, "--config.training.min_snr_gamma=5",
                      "--config.training.noise_offset=0.05")
    assert "The U-Net starts from" in trained.stderr and "Trained to step 4" in trained.stdout
    recorded = json.loads((workdir / "config.json").read_text())
    assert recorded["model"]["pretrained"] == str(sd1)

    exported = run_cli(f"--workdir={workdir}", "--mode=export")  # the run's own config
    folder = workdir / "export" / "step_4"
    assert f"as a Stable Diffusion pipeline: {folder}" in exported.stdout
    assert sorted(os.listdir(folder)) == sorted(os.listdir(sd1))
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "epsilon" and scheduler["beta_start"] == 0.00085
    assert (folder / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (sd1 / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()

    # The exported U-Net is the checkpoint's EMA network, bit for bit.
    config = diffjax.load_config(f"configs/sd.py:finetune,test,folder={sd1}",
                                 [f"--config.data.image_folder={images}",
                                  f"--config.data.latent_dir={workdir / 'latents'}"])
    experiment = build_experiment(config)
    checkpointer = Checkpointer(str(workdir), async_save=False, max_to_keep=None, create=False)
    try:
        with experiment.activate():
            state, _ = checkpointer.restore(experiment.spec, 4)
    finally:
        checkpointer.close()
    _, reloaded, _ = sd_unet_weights.read_folder(str(folder))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
                 state.ema_params, reloaded)
    _, original, _ = sd_unet_weights.read_folder(str(sd1))
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))),
                                         state.ema_params, original))
    assert max(moved) > 0  # trained: not the folder's weights

    again = run_cli(f"--workdir={workdir}", "--mode=export", check=False)
    assert again.returncode != 0 and "exists; remove it" in again.stderr.strip().splitlines()[-1]

    # diffjax's own pipeline reads the export (diffusers does too: tools/check_sd_export.py).
    shutil.rmtree(tmp_path / "images")
    sampled = run_cli("--config=configs/sd.py:test", f"--workdir={tmp_path / 'pipe'}",
                      "--mode=sample", f"--config.pipeline.folder={folder}",
                      "--config.sampling.prompts=a picture of thing 1",
                      "--config.sampling.num_samples=2", "--config.sampling.batch_size=2")
    [npz] = (tmp_path / "pipe" / "samples").glob("*.npz")
    assert np.load(npz)["images"].shape == (2, 32, 32, 3) and sampled.returncode == 0
