"""Stable Diffusion 1.x / 2.x / XL from a diffusers folder: prompts in, images out, one program.

    pipe = diffjax.pipelines.load_pipeline("/data/sd15")
    images = pipe(["a photo of a cat"], num_inference_steps=50, guidance_scale=7.5, seed=0)
    # float32 NHWC in [0, 1], as diffusers' output_type="np"

What a call computes is diffusers' `StableDiffusionPipeline` / `StableDiffusionXLPipeline`
`__call__` step for step (tests/test_pipelines.py compares images, final latents and prompt
embeddings with diffusers on tiny random folders): the prompts' conditioning (prompts.py), the
initial latents times the scheduler's init_noise_sigma, the scheduler's loop (schedulers.py,
built on diffjax's samplers) over the U-Net with classifier-free guidance
(out_uncond + s (out_text - out_uncond), s > 1, the two halves in one batch), then the VAE
decoder on latents / scaling_factor, mapped to [0, 1]. Text encoders, the loop, guidance and the
decoder are one jitted program whose batch is split over the mesh's data axes; its parameters
are laid out by their logical axes (diffjax.parallel.sharding), as in training.

LoRA and ControlNet (adapters.py): `pipe.load_lora(path, scale, adapter_name)` adds a
diffusers/PEFT or kohya-ss LoRA file to the U-Net and text encoders, unmerged (several, each with
its own scale: `set_lora_scale`), `fuse_lora` / `unfuse_lora` merge them into the weights and
back, `unload_lora` drops them; `load_pipeline(folder, controlnet=cn_folder)` adds a
ControlNetModel and a call takes `image=` (NHWC in [0, 1]), `controlnet_conditioning_scale` and
`guess_mode`: diffusers' `StableDiffusionControlNetPipeline` / `StableDiffusionXLControlNet
Pipeline` step for step (tests/test_pipeline_adapters.py compares images with diffusers').

Where diffjax differs: without `latents`, the initial noise is jax.random.normal(key(seed)),
not torch's generator (pass `latents` to reproduce a diffusers image); no safety checker runs;
callbacks, `denoising_end`, IP-Adapters and `guidance_rescale` are not taken; the conditioning
image is not resized (its size must be the images').
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffjax import lora
from diffjax.latents.vae import VAE, load_vae, local_mesh
from diffjax.models import controlnet as controlnet_lib
from diffjax.models.sd_unet import UNet2DConditionModel, abstract_params, logical_axes
from diffjax.models.sd_unet_weights import read_folder as read_unet
from diffjax.parallel.mesh import batch_axis_size
from diffjax.parallel.sharding import DEFAULT_RULES, batch_sharding, replicated, tree_shardings
from diffjax.pipelines import adapters as adapter_lib
from diffjax.pipelines import prompts as prompt_lib
from diffjax.pipelines.folder import PipelineFolder, read_pipeline_folder
from diffjax.pipelines.schedulers import (SCHEDULERS, DiffusersScheduler, load_scheduler,
                                          scheduler_from_config)

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _place(specs: Any, abstract: Any, params: Any, mesh: Mesh, rules) -> tuple[Any, Any]:
    """`params` laid out on `mesh` by their logical axis names `specs`."""
    shardings = tree_shardings(specs, abstract, mesh, tuple(rules))
    return jax.device_put(params, shardings), shardings


@dataclasses.dataclass(eq=False)
class StableDiffusionPipeline:
    """A loaded diffusers Stable Diffusion folder (see the module docstring)."""

    folder: PipelineFolder
    encoders: tuple[prompt_lib.ClipEncoder, ...]
    unet: UNet2DConditionModel
    vae: VAE
    scheduler: DiffusersScheduler
    params: dict[str, Any]
    shardings: dict[str, Any]
    mesh: Mesh
    clip_skip: int = 0
    controlnet: controlnet_lib.ControlNetModel | None = None
    # Unmerged LoRA adapters by name; fused ones keep (as fused, as loaded) for unfuse_lora.
    adapters: dict[str, lora.Adapter] = dataclasses.field(default_factory=dict)
    fused: dict[str, tuple[lora.Adapter, lora.Adapter]] = dataclasses.field(
        default_factory=dict)

    @property
    def kind(self) -> str:
        return self.folder.kind

    @property
    def vae_scale_factor(self) -> int:
        return self.vae.downsampling_factor

    @property
    def default_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def scheduler_for(self, sampler: Any) -> DiffusersScheduler:
        """None: the folder's scheduler; a class name ("EulerDiscreteScheduler"): that class on
        the folder's betas and settings (diffusers' `Scheduler.from_config(pipe.scheduler.config)`);
        a dict: a whole scheduler_config."""
        if sampler is None:
            return self.scheduler
        if isinstance(sampler, DiffusersScheduler):
            return sampler
        if isinstance(sampler, str):
            if sampler not in SCHEDULERS:
                raise ValueError(f"sampler={sampler!r}; choose one of {sorted(SCHEDULERS)} or "
                                 f"pass a scheduler_config dict.")
            return scheduler_from_config({**self.scheduler.options, "_class_name": sampler})
        return scheduler_from_config(dict(sampler))

    # --- LoRA ------------------------------------------------------------------------------

    def load_lora(self, path: str, scale: float = 1.0, adapter_name: str | None = None) -> str:
        """Adds the LoRA file at `path` (diffusers/PEFT or kohya-ss layout; U-Net and text
        encoders) unmerged, with its own `scale`; returns its name (`adapter_name`, or the
        file's stem). A key that fits no layer is a one-line ValueError naming it."""
        name = adapter_lib.adapter_name(path, [*self.adapters, *self.fused], adapter_name)
        adapter = lora.load_lora(adapter_lib.lora_targets(self.params), path, scale, name=name,
                                 unet_config=self.unet.config)
        self.adapters[name] = jax.device_put(adapter, replicated(self.mesh))
        return name

    def set_lora_scale(self, adapter_name: str, scale: float) -> None:
        self.adapters[self._adapter(adapter_name)] = self.adapters[adapter_name].with_scale(
            scale)

    def fuse_lora(self, lora_scale: float = 1.0, adapter_names: Sequence[str] | None = None
                  ) -> None:
        """Merges the named (default: all unmerged) adapters into the weights, each at its
        scale times `lora_scale` (diffusers' `fuse_lora`); they no longer run unmerged."""
        names = list(self.adapters) if adapter_names is None else [
            self._adapter(n) for n in adapter_names]
        if not names:
            raise ValueError("No LoRA is loaded to fuse; pipe.load_lora(path) first.")
        chosen = {n: self.adapters[n] for n in names}
        scaled = {n: a.with_scale(float(a.scale) * float(lora_scale)) for n, a in chosen.items()}
        self._set_params(adapter_lib.with_lora(self.params, list(scaled.values()), +1.0))
        for n in names:
            self.fused[n] = (scaled[n], self.adapters.pop(n))

    def unfuse_lora(self) -> None:
        """Takes every fused adapter out of the weights again (to float32 rounding); they run
        unmerged at their scales, as in diffusers."""
        if not self.fused:
            return
        self._set_params(adapter_lib.with_lora(
            self.params, [as_fused for as_fused, _ in self.fused.values()], -1.0))
        for n, (_, loaded) in list(self.fused.items()):
            self.adapters[n] = loaded
        self.fused.clear()

    def unload_lora(self, adapter_name: str | None = None) -> None:
        """Drops one adapter (default: all); fused ones are unfused first."""
        self.unfuse_lora()
        if adapter_name is None:
            self.adapters.clear()
        else:
            self.adapters.pop(self._adapter(adapter_name))

    def _adapter(self, name: str) -> str:
        if name not in self.adapters:
            where = " (it is fused: unfuse_lora() first)" if name in self.fused else ""
            raise ValueError(f"No unmerged LoRA adapter named {name!r}{where}; loaded: "
                             f"{sorted(self.adapters)}.")
        return name

    def _set_params(self, params: dict[str, Any]) -> None:
        self.params = jax.device_put(params, self.shardings)

    def encode_prompt(self, prompt: str | Sequence[str], negative_prompt=None) -> tuple:
        """diffusers' `encode_prompt` with guidance: (context, negative context) for SD,
        (context, negative context, pooled, negative pooled) for SDXL; numpy float32. What a
        text-embedding cache stores."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negative = prompt_lib.as_list(negative_prompt, len(prompts), "negative prompt")
        tokens = prompt_lib.tokenize(self.encoders, prompts, negative,
                                     force_zeros_for_empty_prompt=(
                                         self.folder.force_zeros_for_empty_prompt))
        encode = self._encoder_program()
        adapters = tuple(self.adapters.values())
        context, pooled = encode(self.params["text"], adapters, tokens.ids, tokens.mask)
        if tokens.zero_negative:
            negative, negative_pooled = np.zeros_like(context), np.zeros_like(pooled)
        else:
            negative, negative_pooled = encode(self.params["text"], adapters,
                                               tokens.negative_ids, tokens.negative_mask)
        out = (context, negative) + ((pooled, negative_pooled) if self.kind == "sdxl" else ())
        return tuple(np.asarray(a, np.float32) for a in out)

    @functools.lru_cache(maxsize=1)
    def _encoder_program(self):
        encoders, clip_skip = self.encoders, self.clip_skip

        def run(text, adapters, ids, mask):
            text = adapter_lib.adapted_text(text, adapters)
            return prompt_lib.encode(encoders, text, ids, mask, clip_skip)

        return jax.jit(run)

    def __call__(self, prompt: str | Sequence[str], negative_prompt=None, *,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 height: int | None = None, width: int | None = None, latents=None,
                 seed: int = 0, sampler: Any = None, eta: float = 0.0,
                 output_type: str = "np", image=None, controlnet_conditioning_scale: float = 1.0,
                 guess_mode: bool = False) -> np.ndarray:
        """Images (B, H, W, 3) float32 in [0, 1], or the final latents (B, h, w, C) with
        output_type="latent". `latents` is the initial noise (B, h, w, C), NHWC. With a
        ControlNet, `image` is its conditioning image, NHWC in [0, 1] ((H, W, C), one, or one
        per prompt), of the images' size (by default the size is the image's)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts)
        negative = prompt_lib.as_list(negative_prompt, batch, "negative prompt")
        if (image is None) != (self.controlnet is None):
            raise ValueError("This pipeline has no ControlNet: load_pipeline(folder, "
                             "controlnet=CONTROLNET_FOLDER) to condition on an image."
                             if image is not None else
                             "This pipeline has a ControlNet: pass its conditioning image, "
                             "image=(B, H, W, C) NHWC in [0, 1].")
        if image is not None and height is None and width is None:
            height, width = adapter_lib.control_size(image)
        height, width = int(height or self.default_size), int(width or self.default_size)
        f = self.vae_scale_factor
        if height % f or width % f:
            raise ValueError(f"height={height} and width={width} must be multiples of the VAE's "
                             f"downsampling factor {f}.")
        shape = (batch, height // f, width // f, self.unet.config.in_channels)
        if latents is None:
            latents = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
        elif tuple(np.shape(latents)) != shape:
            raise ValueError(f"latents have shape {tuple(np.shape(latents))}; {batch} prompts at "
                             f"{height}x{width} need {shape} (NHWC).")
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type={output_type!r}; choose 'np' or 'latent'.")
        tokens = prompt_lib.tokenize(self.encoders, prompts, negative,
                                     force_zeros_for_empty_prompt=(
                                         self.folder.force_zeros_for_empty_prompt))
        time_ids = prompt_lib.sdxl_time_ids(height, width, batch)
        controlled = self.controlnet is not None
        # diffusers: a ControlNet with global_pool_conditions always runs in guess mode.
        guess = controlled and (bool(guess_mode) or self.controlnet.global_pool_conditions)
        program = self._program(self.scheduler_for(sampler), int(num_inference_steps),
                                guidance_scale > 1.0, tokens.zero_negative,
                                output_type == "latent", float(eta), controlled, guess)
        inputs = (tokens.ids, tokens.mask, tokens.negative_ids, tokens.negative_mask, time_ids,
                  np.asarray(latents, np.float32))
        if controlled:
            inputs += (adapter_lib.control_image(image, batch, height, width,
                                                 self.controlnet.conditioning_channels),)
        rows = -(-batch // batch_axis_size(self.mesh)) * batch_axis_size(self.mesh)
        padded = jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[-1:], rows - batch, 0)])
                              if rows > batch else a, inputs)
        sharding = batch_sharding(self.mesh)
        padded = jax.device_put(padded, jax.tree.map(lambda _: sharding, padded))
        out = program(self.params, tuple(self.adapters.values()), jnp.float32(guidance_scale),
                      jnp.float32(controlnet_conditioning_scale), jax.random.key(seed), *padded)
        return np.asarray(jax.device_get(out))[:batch]

    @functools.lru_cache(maxsize=8)
    def _program(self, scheduler: DiffusersScheduler, num_steps: int, guided: bool,
                 zero_negative: bool, latent_output: bool, eta: float, controlled: bool = False,
                 guess: bool = False):
        encoders, unet, vae, clip_skip = self.encoders, self.unet, self.vae, self.clip_skip
        controlnet = self.controlnet
        sdxl = self.kind == "sdxl"

        def run(params, adapters, scale, control_scale, rng, ids, mask, negative_ids,
                negative_mask, time_ids, noise, control=None):
            params = adapter_lib.adapted(params, adapters)
            context, pooled = prompt_lib.encode(encoders, params["text"], ids, mask, clip_skip)
            text_context, text_added = context, (
                dict(text_embeds=pooled, time_ids=time_ids) if sdxl else {})
            if guided:
                if zero_negative:
                    negative, negative_pooled = jnp.zeros_like(context), jnp.zeros_like(pooled)
                else:
                    negative, negative_pooled = prompt_lib.encode(
                        encoders, params["text"], negative_ids, negative_mask, clip_skip)
                context = jnp.concatenate([negative, context])
                pooled = jnp.concatenate([negative_pooled, pooled]) if sdxl else None
                time_ids = jnp.concatenate([time_ids, time_ids])
                if control is not None and not guess:
                    control = jnp.concatenate([control, control])
            added = dict(text_embeds=pooled, time_ids=time_ids) if sdxl else {}

            def residuals(x, t, x_in, t_in):
                """diffusers' ControlNet call; in guess mode with guidance it sees only the
                text half and the unconditional half gets zero residuals."""
                if control is None:
                    return {}
                halves = guess and guided
                down, mid = controlnet.apply(
                    {"params": params["controlnet"]}, x if halves else x_in,
                    t if halves else t_in, text_context if halves else context, control,
                    conditioning_scale=control_scale, guess_mode=guess,
                    **(text_added if halves else added))
                if halves:
                    down = [jnp.concatenate([jnp.zeros_like(d), d]) for d in down]
                    mid = jnp.concatenate([jnp.zeros_like(mid), mid])
                return dict(down_block_additional_residuals=down,
                            mid_block_additional_residual=mid)

            def model_fn(x, t):
                x_in, t_in = (jnp.concatenate([x, x]), jnp.concatenate([t, t])) if guided else (
                    x, t)
                out = unet.apply({"params": params["unet"]}, x_in, t_in, context, **added,
                                 **residuals(x, t, x_in, t_in))
                if not guided:
                    return out
                uncond, text = jnp.split(out, 2)
                return uncond + scale.astype(out.dtype) * (text - uncond)

            final = scheduler.sample(model_fn, noise, num_steps, rng, eta=eta)
            if latent_output:
                return final
            images = vae.decode_in_graph(params["vae"], final)
            return jnp.clip(images.astype(jnp.float32) / 2 + 0.5, 0.0, 1.0)

        batch = batch_sharding(self.mesh)
        scalar = replicated(self.mesh)
        inputs = 7 if controlled else 6
        return jax.jit(run, in_shardings=(self.shardings, scalar, scalar, scalar, scalar,
                                          *([batch] * inputs)),
                       out_shardings=batch)


def load_pipeline(folder: str, controlnet: str | None = None, *, mesh: Mesh | None = None,
                  dtype: str = "float32", clip_skip: int = 0, tokenizer_cleaning: str = "clip",
                  rules=DEFAULT_RULES) -> StableDiffusionPipeline:
    """The Stable Diffusion pipeline in a diffusers `folder` (model_index.json, text_encoder(_2),
    tokenizer(_2), unet, vae, scheduler), placed on `mesh` (default: this process's devices
    along the data axis). `tokenizer_cleaning`: "clip" cleans prompts as the original CLIP
    tokenizer (ftfy, HTML unescaped); "transformers" as transformers 5's fast tokenizer, which
    diffusers runs — they differ only on prompts with HTML entities, curly quotes or mojibake
    (diffjax.text.clip_tokenizer). `controlnet`: a diffusers ControlNetModel folder made for
    this model (diffusers' StableDiffusion(XL)ControlNetPipeline); by default the folder's own
    controlnet/ where model_index.json names one."""
    layout = read_pipeline_folder(folder)
    controlnet = controlnet or layout.controlnet
    compute = COMPUTE_DTYPES.get(dtype)
    if compute is None:
        raise ValueError(f"dtype={dtype!r}; choose one of {sorted(COMPUTE_DTYPES)}.")
    mesh = mesh if mesh is not None else local_mesh()
    names = (("text_encoder", "tokenizer"),) if layout.kind == "sd" else (
        ("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
    encoders = tuple(prompt_lib.ClipEncoder.load(folder, e, t, compute, tokenizer_cleaning)
                     for e, t in names)
    unet, unet_params, _ = read_unet(layout.component("unet"), compute)
    vae_config = _vae_config(layout)
    if vae_config.get("latents_mean") is not None or vae_config.get("latents_std") is not None:
        raise ValueError(f"{layout.component('vae')}/config.json has latents_mean/latents_std "
                         f"(a VAE diffjax's pipelines do not normalise that way yet).")
    vae = load_vae(layout.component("vae"), mesh, dtype=dtype, rules=rules)
    scheduler = load_scheduler(folder)
    placed_unet, unet_shardings = _place(logical_axes(unet), abstract_params(unet), unet_params,
                                         mesh, rules)
    text_params, text_shardings = [], []
    for encoder in encoders:
        ids = jax.ShapeDtypeStruct((1, encoder.tokenizer.max_length), jnp.int32)
        boxed = jax.eval_shape(encoder.module.init, jax.random.key(0), ids)["params"]
        placed, shardings = _place(nn.get_partition_spec(boxed), nn.unbox(boxed),
                                   encoder.params, mesh, rules)
        text_params.append(placed)
        text_shardings.append(shardings)
    params = {"text": text_params, "unet": placed_unet, "vae": vae.params}
    shardings = {"text": text_shardings, "unet": unet_shardings, "vae": vae.param_shardings}
    control_module = None
    if controlnet:
        control_module, control_params = adapter_lib.load_controlnet(
            controlnet, unet.config, vae.downsampling_factor, compute)
        params["controlnet"], shardings["controlnet"] = _place(
            controlnet_lib.logical_axes(control_module),
            controlnet_lib.abstract_params(control_module), control_params, mesh, rules)
    return StableDiffusionPipeline(
        folder=layout, encoders=encoders, unet=unet, vae=vae, scheduler=scheduler,
        params=params, shardings=shardings, mesh=mesh, clip_skip=int(clip_skip),
        controlnet=control_module)


def _vae_config(layout: PipelineFolder) -> dict[str, Any]:
    from diffjax.latents.diffusers_weights import read_config

    return read_config(layout.component("vae"))
