"""Train a LoRA with diffjax (qwix) on the tiny SD 1.x U-Net fixture and write it as a
diffusers/PEFT file, so that tools/make_lora_fixtures.py --check-diffjax can load it in diffusers.

Writes tests/fixtures/lora/diffjax_trained/:
* pytorch_lora_weights.safetensors: the adapter (`diffjax.lora.save_lora`, PEFT layout with
  its LoraConfig in the metadata): rank 4, alpha 8, on the attention projections and the
  resnets' conv1 (a conv LoRA), after 40 Adam steps (lr 1e-2) of noise prediction on random
  latents, so every lora_B is far from its zero start;
* diffjax_outputs.npz: the U-Net inputs (tests/fixtures/sd_unet/reference_sd1.npz's sample,
  float timesteps and context) and diffjax's float32 outputs with the LoRA (`lora`, computed by
  the qwix network, i.e. x A B added next to W x) and without it (`base`).

Run with diffjax's environment from the repository root, then the diffusers check:

    .venv/bin/python tools/train_lora_fixture.py
    /work/toolsenv/bin/python tools/make_lora_fixtures.py --check-diffjax
"""

from __future__ import annotations

import pathlib

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffjax import lora
from diffjax.models import sd_unet_weights

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "lora" / "diffjax_trained"
SETTINGS = lora.LoraSettings(rank=4, alpha=8.0, targets=r"sd_attention,.*/resnets_\d+/conv1")


def main() -> None:
    module, params, _ = sd_unet_weights.read_folder(str(REPO / "tests/fixtures/sd_unet/sd1"))
    network = lora.lora_network(module, SETTINGS)
    ref = np.load(REPO / "tests/fixtures/sd_unet/reference_sd1.npz")
    sample = ref["sample"].astype(np.float32)
    t, context = ref["t_float"].astype(np.float32), ref["context"].astype(np.float32)
    variables = network.init(jax.random.key(1), sample, t, context)
    _, adapter = lora.split(flax.linen.unbox(variables["params"]))
    base = params

    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((8, 8, 8, 4)).astype(np.float32)
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    steps = rng.uniform(0, 1000, (8,)).astype(np.float32)
    alpha = np.cos(steps / 1000 * np.pi / 2)[:, None, None, None].astype(np.float32)
    noisy = alpha * x0 + np.sqrt(1 - alpha ** 2) * eps
    text = rng.standard_normal((8, 5, context.shape[-1])).astype(np.float32)

    def loss(adapter):
        out = network.apply({"params": lora.merge(base, adapter)}, noisy, steps, text)
        return jnp.mean((out - eps) ** 2)

    optimizer = optax.adam(1e-2)
    state = optimizer.init(adapter)

    @jax.jit
    def step(adapter, state):
        value, grad = jax.value_and_grad(loss)(adapter)
        updates, state = optimizer.update(grad, state)
        return optax.apply_updates(adapter, updates), state, value

    for i in range(40):
        adapter, state, value = step(adapter, state)
        if i % 10 == 0 or i == 39:
            print(f"step {i}: loss {float(value):.4f}")

    forward = jax.jit(lambda p: network.apply({"params": p}, sample, t, context))
    with_lora = np.asarray(forward(lora.merge(base, adapter)))
    without = np.asarray(module.apply({"params": base}, sample, t, context))
    OUT.mkdir(parents=True, exist_ok=True)
    exported = lora.adapter_from_qwix(adapter, SETTINGS.scale, name="diffjax")
    lora.save_lora(str(OUT / "pytorch_lora_weights.safetensors"), exported, {"unet": base})
    np.savez_compressed(OUT / "diffjax_outputs.npz", sample=ref["sample"], t_float=ref["t_float"],
                        context=ref["context"], lora=with_lora, base=without)
    change = np.linalg.norm(with_lora - without) / np.linalg.norm(without)
    print(f"{len(exported.layers['unet'])} adapted layers, {exported.num_params()} parameters; "
          f"output change {change:.3f} (relative L2)")


if __name__ == "__main__":
    main()
