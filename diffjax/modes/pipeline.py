"""`--mode=sample` and `--mode=eval` of a pretrained pipeline (`pipeline.folder`): images from
prompts, and their FID against a dataset.

Sample: `sampling.prompts` (a file, one prompt per line, or "|"-separated) repeated to
`sampling.num_samples`, in batches of `sampling.batch_size`, `sampling.num_steps` steps of the
folder's scheduler (or `pipeline.scheduler`), guidance `sampling.guidance_scale`, one negative
prompt for all (`sampling.negative_prompt`). Writes WORKDIR/samples/<name>.png (a grid),
<name>.npz (images and prompts), <name>.json, and with `sampling.write_pngs` one PNG per image.
Batch i's initial noise is normal(fold_in(key(seed, salt), i)): reruns give the same images.

Adapters: `pipeline.lora` (LoRA files, "path[:scale],..."), `pipeline.controlnet` (a
ControlNet folder) with `pipeline.controlnet_image` (its conditioning image, used for every
prompt) and `pipeline.controlnet_scale`; they are part of the output names.

Eval: `eval.prompts` repeated to `eval.num_samples`; FID/KID/IS against `eval.reference_split`
of `data.dataset` (or `eval.reference_stats`), as for checkpoints. The report,
WORKDIR/eval/pipeline/0/<setting>.json, stores the prompts; sample chunks are kept until it is
written, so an interrupted evaluation continues where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from typing import Any

import jax
import numpy as np

from diffjax.evaluation.inception_weights import load_inception_params
from diffjax.evaluation.reports import ReportStore, summary_line
from diffjax.evaluation.sample_quality import FID_METHOD, sample_metrics
from diffjax.evaluation.stats import reference_statistics
from diffjax.outputs import images as image_files
from diffjax.pipelines import load_pipeline
from diffjax.runtime.console import progress_bar
from diffjax.storage import filesystem as fs
from diffjax.storage.workdir import check_writable

SAMPLE_SALT = 0x5A4  # as --mode=sample of a checkpoint
EVAL_SALT = 0x5A5


def read_prompts(spec: str, what: str) -> list[str]:
    """Prompts from a file (one per line) or a "|"-separated string."""
    spec = str(spec or "").strip()
    if not spec:
        raise ValueError(f"config.{what} is empty; pass a file of prompts (one per line) or "
                         f"prompts separated by '|'.")
    if "|" not in spec and fs.is_file(spec):
        text = fs.read_bytes(spec)
        try:
            lines = text.decode("utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise ValueError(f"config.{what}={spec!r} is not UTF-8 text ({error}).") from None
        prompts = [line.strip() for line in lines if line.strip()]
        if not prompts:
            raise ValueError(f"config.{what}={spec!r} holds no prompt.")
        return prompts
    return [p.strip() for p in spec.split("|")]


def lora_files(spec: str) -> list[tuple[str, float]]:
    """pipeline.lora: "a.safetensors" or "a.safetensors:0.8,gs://b/c.safetensors" ->
    [(path, scale)]; a suffix ":NUMBER" is the scale (a gs:// path keeps its colon)."""
    files = []
    for part in (x.strip() for x in str(spec).split(",")):
        if not part:
            continue
        path, _, scale = part.rpartition(":")
        try:
            files.append((path, float(scale)) if path else (part, 1.0))
        except ValueError:
            files.append((part, 1.0))
    return files


def control_image(config) -> np.ndarray | None:
    """pipeline.controlnet_image as float32 HWC in [0, 1] (RGB), or None without a ControlNet."""
    p = config.pipeline
    if not p.controlnet:
        return None
    from PIL import Image

    with Image.open(io.BytesIO(fs.read_bytes(p.controlnet_image))) as image:
        return np.asarray(image.convert("RGB"), np.float32) / 255.0


def pipeline_for(config):
    p = config.pipeline
    pipe = load_pipeline(p.folder, controlnet=p.controlnet or None, dtype=p.dtype,
                         clip_skip=int(p.clip_skip), tokenizer_cleaning=p.tokenizer_cleaning)
    for path, scale in lora_files(p.lora):
        pipe.load_lora(path, scale=scale)
    return pipe


def _size(config, pipe) -> tuple[int, int]:
    p = config.pipeline
    return int(p.height or pipe.default_size), int(p.width or pipe.default_size)


def draw(config, pipe, prompts: list[str], batch_size: int, salt: int, first: int = 0,
         last: int | None = None, progress: str = ""):
    """Batches [first, last) of the prompts' images, uint8 NHWC, one list entry per batch."""
    s, p = config.sampling, config.pipeline
    height, width = _size(config, pipe)
    f = pipe.vae_scale_factor
    base = jax.random.fold_in(jax.random.key(int(config.seed)), salt)
    count = math.ceil(len(prompts) / batch_size)
    last = count if last is None else min(last, count)
    negative = s.negative_prompt or None
    control = control_image(config)
    bar = progress_bar(len(prompts), progress or "Sampling", initial=first * batch_size,
                       enabled=jax.process_index() == 0)
    for index in range(first, last):
        batch = prompts[index * batch_size:(index + 1) * batch_size]
        shape = (len(batch), height // f, width // f, pipe.unet.config.in_channels)
        noise = jax.random.normal(jax.random.fold_in(base, index), shape)
        pixels = pipe(batch, negative, num_inference_steps=int(s.num_steps),
                      guidance_scale=float(s.guidance_scale), height=height, width=width,
                      latents=noise, sampler=p.scheduler or None, eta=float(s.eta),
                      **({} if control is None else dict(
                          image=control, controlnet_conditioning_scale=float(p.controlnet_scale))))
        bar.update(len(batch))
        yield index, np.round(pixels * 255.0).astype(np.uint8), batch
    bar.close()


def setting_name(config, pipe, count: int) -> str:
    s, p = config.sampling, config.pipeline
    scheduler = p.scheduler or pipe.scheduler.class_name
    height, width = _size(config, pipe)
    parts = [f"{scheduler.removesuffix('Scheduler').lower()}-{int(s.num_steps)}steps",
             f"cfg{float(s.guidance_scale):g}", f"{height}x{width}"]
    if float(s.eta):
        parts.append(f"eta{float(s.eta):g}")
    if s.negative_prompt:
        parts.append("neg" + hashlib.sha256(s.negative_prompt.encode()).hexdigest()[:6])
    if p.lora or p.controlnet:  # the adapters' files and scales, by content of the setting
        adapters = json.dumps([p.lora, p.controlnet, p.controlnet_image,
                               float(p.controlnet_scale) if p.controlnet else None])
        parts.append("adapters" + hashlib.sha256(adapters.encode()).hexdigest()[:6])
    return "_".join(parts + [f"n{count}", f"seed{int(config.seed)}"])


def sample_pipeline(config, workdir: str) -> dict[str, Any]:
    workdir = fs.absolute(workdir)
    out_dir = fs.join(workdir, "samples")
    if jax.process_index() == 0:
        check_writable(out_dir, "the samples folder")
    prompts = read_prompts(config.sampling.prompts, "sampling.prompts")
    count = int(config.sampling.num_samples)
    wanted = [prompts[i % len(prompts)] for i in range(count)]
    pipe = pipeline_for(config)
    parts = [pixels for _, pixels, _ in draw(config, pipe, wanted,
                                             int(config.sampling.batch_size), SAMPLE_SALT,
                                             progress="Sampling the pipeline")]
    pixels = np.concatenate(parts)
    prompt_hash = hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:8]
    name = f"pipeline_{setting_name(config, pipe, count)}_prompts{prompt_hash}"
    summary = {"pipeline": config.pipeline.folder, "class": pipe.folder.pipeline_class,
               "scheduler": config.pipeline.scheduler or pipe.scheduler.class_name,
               "num_steps": int(config.sampling.num_steps),
               "guidance_scale": float(config.sampling.guidance_scale),
               "negative_prompt": config.sampling.negative_prompt, "seed": int(config.seed),
               "num_samples": count, "prompts": wanted, "name": name,
               "lora": config.pipeline.lora or None, "controlnet": config.pipeline.controlnet or None}
    if jax.process_index() != 0:
        return summary
    grid = image_files.make_grid(pixels, columns=min(len(prompts), 8) if len(prompts) > 1
                                 else None)
    paths = {"png": image_files.save_png(fs.join(out_dir, f"{name}.png"), grid)}
    buffer = io.BytesIO()
    np.savez(buffer, images=pixels, prompts=np.array(wanted))
    paths["npz"] = fs.write_atomic(fs.join(out_dir, f"{name}.npz"), buffer.getvalue())
    fs.write_atomic(fs.join(out_dir, f"{name}.json"), json.dumps(summary, indent=2) + "\n")
    if config.sampling.write_pngs:
        folder = fs.join(out_dir, name)
        for index, image in enumerate(pixels):
            fs.write_atomic(fs.join(folder, f"{index:06d}.png"), image_files.png_bytes(image))
        paths["png_dir"] = folder
    lines = "\n".join(f"  {kind}: {path}" for kind, path in paths.items())
    print(f"Pipeline samples ({count} images, {summary['scheduler']}, "
          f"{summary['num_steps']} steps):\n{lines}", flush=True)
    return {**summary, **paths}


def evaluate_pipeline(config, workdir: str) -> list[dict]:
    workdir = fs.absolute(workdir)
    store = ReportStore(fs.join(workdir, "eval", "pipeline"))
    if jax.process_index() == 0:
        check_writable(store.out_dir, "the eval folder")
    prompts = read_prompts(config.eval.prompts, "eval.prompts")
    count, batch_size = int(config.eval.num_samples), int(config.eval.batch_size)
    wanted = [prompts[i % len(prompts)] for i in range(count)]
    pipe = pipeline_for(config)
    inception = load_inception_params()
    reference = reference_statistics(config, inception)
    slug = setting_name(config, pipe, count)
    chief = jax.process_index() == 0
    existing = store.read(0, slug) if chief else None
    if existing is not None:
        print(summary_line({**existing, "existing": True}), flush=True)
        return [existing]
    sizes = [min(batch_size, count - start) for start in range(0, count, batch_size)]
    signature = {"pipeline": config.pipeline.folder, "slug": slug,
                 "prompts": hashlib.sha256("\n".join(wanted).encode()).hexdigest()}
    chunks_store = store.chunks(0, slug, signature) if chief else None
    chunks = chunks_store.load_prefix(sizes) if chief else []
    for index, pixels, _ in draw(config, pipe, wanted, batch_size, EVAL_SALT, first=len(chunks),
                                 progress="Sampling the pipeline for FID"):
        if chief:
            chunks_store.save(index, {"images": pixels})
            chunks.append({"images": pixels})
    if not chief:
        return []
    pixels = np.concatenate([c["images"] for c in chunks])
    metrics = sample_metrics(config, pixels, reference, inception,
                             progress="Inception features of the pipeline's images")
    report = {"step": 0, "setting": slug, **metrics, "pipeline": config.pipeline.folder,
              "class": pipe.folder.pipeline_class,
              "scheduler": config.pipeline.scheduler or pipe.scheduler.class_name,
              "num_steps": int(config.sampling.num_steps), "nfe": int(config.sampling.num_steps),
              "sampler": config.pipeline.scheduler or pipe.scheduler.class_name,
              "guidance_scale": float(config.sampling.guidance_scale),
              "num_samples": count, "prompts": prompts, "fid_method": FID_METHOD,
              "reference": reference.path, "reference_images": reference.num_images}
    image_files.save_png(store.grid_path(0, slug), image_files.make_grid(pixels[:64]))
    report["report"] = store.write(0, slug, report)
    chunks_store.remove()
    print(summary_line(report), flush=True)
    return [report]
