"""Check that diffusers loads a diffjax fine-tune's export and draws what diffjax draws.

The round trip, on the tiny random SD 1.x folder of the tests (every weight random):
  1. with diffjax (its own virtualenv, `--diffjax-python`, default .venv/bin/python): assemble the
     folder, write captioned images, `--mode=encode_latents`, train `configs/sd.py:finetune,test`
     for 4 steps from the folder's U-Net (Min-SNR 5, offset noise 0.05), `--mode=export`;
     then, in diffjax, the trained network (the checkpoint's EMA weights, as sampling uses them)
     on fixed latents / steps / text states, and diffjax's pipeline on the exported folder with
     fixed initial latents (DDIM, 4 steps, guidance 7.5);
  2. with torch + diffusers (this interpreter): `UNet2DConditionModel.from_pretrained(export/unet)`
     on the same inputs, and `StableDiffusionPipeline.from_pretrained(export)` with the same
     prompts, initial latents, steps and guidance.
It prints the relative L2 differences and fails (exit 1) above 1e-5 (U-Net) / 2e-3 (images, the
tolerance of tests/test_pipelines.py).

Run from the repository root in the reference environment (README, "Reference environments"):

    toolsenv/bin/python tools/check_sd_export.py [--diffjax-python .venv/bin/python] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a picture of thing 1", "a picture of thing 4"]

# Runs in diffjax's virtualenv: train, export, and diffjax's outputs on fixed inputs.
DIFFJAX_SIDE = r'''
import json, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, "tests")
from sd_pipeline_folders import assemble
from test_sd_training import captioned_images
from conftest import run_cli
import jax, jax.numpy as jnp
import diffjax
from diffjax.experiment import build_experiment, network
from diffjax.pipelines.stable_diffusion import load_pipeline
from diffjax.storage.checkpoints import Checkpointer

work = Path(sys.argv[1])
sd1 = assemble("sd1", work / "sd1")
images = captioned_images(work / "images")
run = work / "run"
common = (f"--config=configs/sd.py:finetune,test,folder={sd1}", f"--workdir={run}",
          f"--config.data.image_folder={images}")
run_cli(*common, "--mode=encode_latents")
run_cli(*common, "--config.training.min_snr_gamma=5", "--config.training.noise_offset=0.05")
run_cli(f"--workdir={run}", "--mode=export")
inputs = np.load(work / "inputs.npz")
config = diffjax.load_config(f"configs/sd.py:finetune,test,folder={sd1}",
                             [f"--config.data.latent_dir={run / 'latents'}"])
experiment = build_experiment(config)
checkpointer = Checkpointer(str(run), async_save=False, max_to_keep=None, create=False)
with experiment.activate():
    state, _ = checkpointer.restore(experiment.spec, 4)
checkpointer.close()
net = network(experiment.model, state.ema_params, train=False)
context = jnp.asarray(inputs["context"])
text = {"states": context, "mask": jnp.ones(context.shape[:2], jnp.int32), "pooled": context[:, 0]}
unet_out = net(jnp.asarray(inputs["sample"]), jnp.asarray(inputs["timesteps"], jnp.float32), text)
pipe = load_pipeline(str(run / "export" / "step_4"))
pictures = pipe(json.loads(str(inputs["prompts"])), num_inference_steps=4, guidance_scale=7.5,
                latents=inputs["latents"])
np.savez(work / "diffjax.npz", unet=np.asarray(unet_out), images=np.asarray(pictures))
print(run / "export" / "step_4")
'''


def relative(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--diffjax-python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--keep", default="", help="work in this folder and keep it")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="sd_export_"))
    work.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    inputs = {"sample": torch.randn(2, 8, 8, 4, generator=generator).numpy(),  # NHWC
              "timesteps": np.array([10, 700]), "context": torch.randn(
                  2, 77, 32, generator=generator).numpy(),
              "latents": torch.randn(2, 16, 16, 4, generator=generator).numpy(),  # 32 px
              "prompts": json.dumps(PROMPTS)}
    np.savez(work / "inputs.npz", **inputs)
    done = subprocess.run([args.diffjax_python, "-c", DIFFJAX_SIDE, str(work)], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        print(done.stderr[-4000:])
        return 1
    export = Path(done.stdout.strip().splitlines()[-1])
    ours = np.load(work / "diffjax.npz")

    unet = UNet2DConditionModel.from_pretrained(export / "unet").eval()
    with torch.no_grad():
        out = unet(torch.from_numpy(inputs["sample"]).permute(0, 3, 1, 2),
                   torch.from_numpy(inputs["timesteps"]),
                   torch.from_numpy(inputs["context"])).sample.permute(0, 2, 3, 1).numpy()
    pipe = StableDiffusionPipeline.from_pretrained(export, safety_checker=None,
                                                   requires_safety_checker=False)
    pictures = pipe(PROMPTS, num_inference_steps=4, guidance_scale=7.5, output_type="np",
                    latents=torch.from_numpy(inputs["latents"]).permute(0, 3, 1, 2)).images
    unet_error, image_error = relative(ours["unet"], out), relative(ours["images"], pictures)
    print(f"export: {export}")
    print(f"U-Net (diffjax checkpoint EMA vs diffusers from_pretrained(export/unet)): "
          f"relative L2 {unet_error:.2e}")
    print(f"images (diffjax pipeline vs StableDiffusionPipeline on the export, DDIM 4 steps, "
          f"guidance 7.5): relative L2 {image_error:.2e}")
    return int(unet_error > 1e-5 or image_error > 2e-3)


if __name__ == "__main__":
    sys.exit(main())
