"""The tiny Stable Diffusion folders of the pipeline tests, assembled from component fixtures.

tests/fixtures/sd_pipelines/<name>/ holds what is particular to a pipeline (model_index.json,
scheduler/scheduler_config.json) and components.json, which names the fixture folder of each
component (text encoders, tokenizers, U-Net, VAE), each pinned by its own test. `assemble`
copies them into one diffusers folder; tools/make_sd_pipeline_fixtures.py assembles the same
folders for diffusers, so both sides load identical files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PIPELINES = FIXTURES / "sd_pipelines"
NAMES = ("sd1", "sd2", "sdxl")


def assemble(name: str, target: Path, pipelines: Path = PIPELINES, fixtures: Path = FIXTURES,
             *, with_index: bool = True) -> Path:
    """A complete diffusers folder for pipeline `name` at `target`."""
    source = pipelines / name
    target.mkdir(parents=True, exist_ok=True)
    components = json.loads((source / "components.json").read_text())
    for component, folder in components.items():
        destination = target / component
        shutil.copytree(fixtures / folder, destination, dirs_exist_ok=True)
        # Half-precision variants load in diffusers only with variant="fp16": one name for both.
        for half in destination.glob("*.fp16.safetensors"):
            half.rename(half.with_name(half.name.replace(".fp16", "")))
    if with_index:
        shutil.copytree(source / "scheduler", target / "scheduler", dirs_exist_ok=True)
        shutil.copy(source / "model_index.json", target / "model_index.json")
    return target
