"""A diffusers pipeline folder: which pipeline it is, and whether every component is there.

A folder is what `DiffusionPipeline.save_pretrained` writes or `huggingface-cli download
stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir DIR` fetches: `model_index.json` names
the pipeline class and each component's library and class; every component has a subfolder
(config.json + safetensors; the scheduler's scheduler_config.json). diffjax reads the classes it
has ports of and says, in one line, what it cannot use and what to do instead.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from diffjax.storage import filesystem as fs

INDEX_FILE = "model_index.json"
HOW_TO_GET = ("download a diffusers folder on a machine with internet, e.g. huggingface-cli "
              "download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir DIR "
              "--exclude '*.bin' '*.ckpt', and pass DIR")

# Pipeline class -> (kind, the components it needs). ControlNet pipelines are an SD folder plus
# a ControlNet folder (`load_pipeline(folder, controlnet=...)`), as diffusers composes them; a
# ControlNet pipeline's own folder also holds it in controlnet/ (`PipelineFolder.controlnet`).
PIPELINE_CLASSES: dict[str, tuple[str, tuple[str, ...]]] = {
    "StableDiffusionPipeline": ("sd", ("text_encoder", "tokenizer", "unet", "vae", "scheduler")),
    "StableDiffusionControlNetPipeline": (
        "sd", ("text_encoder", "tokenizer", "unet", "vae", "scheduler")),
    "StableDiffusionXLPipeline": (
        "sdxl", ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae",
                 "scheduler")),
    "StableDiffusionXLControlNetPipeline": (
        "sdxl", ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae",
                 "scheduler")),
}
# What each component's class must be (diffjax has ports of these).
COMPONENT_CLASSES = {
    "text_encoder": ("CLIPTextModel", "CLIPTextModelWithProjection"),
    "text_encoder_2": ("CLIPTextModel", "CLIPTextModelWithProjection"),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "tokenizer_2": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
}
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")


@dataclasses.dataclass(frozen=True)
class PipelineFolder:
    path: str
    pipeline_class: str
    kind: str  # "sd" or "sdxl"
    index: dict[str, Any]

    def component(self, name: str) -> str:
        return fs.join(self.path, name)

    @property
    def controlnet(self) -> str | None:
        """The folder's own controlnet/ (what a saved ControlNet pipeline holds), if any."""
        entry = self.index.get("controlnet")
        if not entry or entry[0] is None:
            return None
        if entry[1] != "ControlNetModel":
            raise ValueError(f"{fs.join(self.path, INDEX_FILE)}: controlnet is a {entry[1]}; "
                             f"diffjax runs one ControlNetModel (pass controlnet=FOLDER).")
        return self.component("controlnet")

    @property
    def force_zeros_for_empty_prompt(self) -> bool:
        return bool(self.index.get("force_zeros_for_empty_prompt", self.kind == "sdxl"))


def read_pipeline_folder(folder: str) -> PipelineFolder:
    """The pipeline in `folder`, checked: a supported class, every component present."""
    if not folder:
        raise FileNotFoundError(f"No pipeline folder given (pipeline.folder); {HOW_TO_GET}.")
    if fs.is_file(folder) and folder.lower().endswith(SINGLE_FILE_SUFFIXES):
        raise ValueError(
            f"{folder} is a single-file checkpoint; diffjax reads diffusers folders. Convert it "
            f"once with diffusers (StableDiffusionPipeline.from_single_file(PATH)"
            f".save_pretrained(DIR), or StableDiffusionXLPipeline for SDXL) and pass DIR.")
    index_path = fs.join(folder, INDEX_FILE)
    if not fs.is_file(index_path):
        what = "does not exist" if not fs.exists(folder) else f"has no {INDEX_FILE}"
        raise FileNotFoundError(f"Pipeline folder {folder} {what}: it must be a diffusers "
                                f"pipeline folder; {HOW_TO_GET}.")
    try:
        index = json.loads(fs.read_text(index_path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{index_path} is not valid JSON ({error}); {HOW_TO_GET}.") from None
    cls = str(index.get("_class_name", ""))
    if cls not in PIPELINE_CLASSES:
        raise ValueError(f"{index_path}: pipeline class {cls!r} is not supported; diffjax runs "
                         f"{sorted(PIPELINE_CLASSES)}.")
    kind, needed = PIPELINE_CLASSES[cls]
    for name in needed:
        entry = index.get(name)
        if not entry or entry[0] is None:
            raise ValueError(f"{index_path}: the pipeline has no {name}; diffjax needs "
                             f"{', '.join(needed)}.")
        if name in COMPONENT_CLASSES and entry[1] not in COMPONENT_CLASSES[name]:
            raise ValueError(f"{index_path}: {name} is a {entry[1]}; diffjax reads "
                             f"{' or '.join(COMPONENT_CLASSES[name])} there.")
        if not fs.is_dir(fs.join(folder, name)):
            raise FileNotFoundError(f"Pipeline folder {folder} has no {name}/ folder (named in "
                                    f"{INDEX_FILE}); {HOW_TO_GET}.")
    return PipelineFolder(path=folder, pipeline_class=cls, kind=kind, index=index)
