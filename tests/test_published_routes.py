"""Every route of docs/published_checkpoints.md runs as written, on tiny checkpoints.

Each ```bash block of the doc that converts a checkpoint is parsed (test_docs.py's command
parser) and replayed in this process: its shell variables expanded, its `huggingface-cli download`
replaced by a copy of the matching fixture folder, its `python -m diffjax.convert` run on a tiny
random checkpoint in the official format (tests/fixtures, built by the reference code:
tools/make_reference_fixtures.py, make_vae_fixture.py), and its final `python -m diffjax.main
... --mode=eval` run as `--mode=sample` (evaluation needs data and Inception). The documented
config and overrides are kept; only the sizes are shrunk to the fixture's, and sampling to two
images of two steps. So a command the doc shows cannot drift from what the code accepts.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
from conftest import REPO
from test_docs import command_lines

DOC = os.path.join(REPO, "docs", "published_checkpoints.md")
FIXTURES = os.path.join(REPO, "tests", "fixtures")
DOWNLOADS = {"stabilityai/sd-vae-ft-ema": os.path.join(FIXTURES, "vae_sd")}

TINY_UNET = ["data.image_size=8", "model.unet.nf=8", "model.unet.ch_mult=(1, 2)",
             "model.unet.num_res_blocks=1", "model.unet.attn_resolutions=(4,)"]
# 16 px images through the fixture VAE (factor 2, 4 channels): DiT's 8x8x4 input, 4x4 tokens.
TINY_DIT = ["data.image_size=16", "data.num_classes=10", "model.dit.size=",
            "model.dit.hidden_size=24", "model.dit.depth=2", "model.dit.num_heads=2"]
# (source, config file) -> (fixture, size overrides, the step the conversion records).
ROUTES = {
    ("score_sde", "configs/cifar10_ddpmpp_vp.py"): (
        "score_sde_ddpmpp_vp.pth", [*TINY_UNET, "data.num_channels=1"], 1234),
    ("score_sde", "configs/cifar10_ncsnpp_ve.py"): ("score_sde_ncsnpp_ve.pth", TINY_UNET, 1234),
    ("score_sde", "configs/cifar10_ddpm.py"): ("score_sde_ddpm.pth", TINY_UNET, 4321),
    ("edm", "configs/cifar10_edm.py"): ("edm_ddpmpp_cond.pkl", TINY_UNET, 0),
    ("dit", "configs/imagenet256_dit.py"): ("dit_tiny.pt", TINY_DIT, 0),
    ("sit", "configs/imagenet256_sit.py"): ("dit_tiny.pt", TINY_DIT, 0),
}
FAST_SAMPLING = ["sampling.num_samples=2", "sampling.batch_size=2", "sampling.num_steps=2"]


def _blocks() -> list[str]:
    """The doc's bash blocks that convert a checkpoint."""
    text = open(DOC).read()
    return [b for b in re.findall(r"```bash\n(.*?)```", text, re.S)
            if command_lines(b, "python -m diffjax.convert")]


def _expand(block: str) -> str:
    variables = dict(re.findall(r"^(\w+)=(\S+)$", block, re.M))
    for name, value in variables.items():
        block = re.sub(rf"\${name}\b|\${{{name}}}", value, block)
    return block


def _flags(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """({flag: value} of the non-config flags, ["a.b=v", ...] config overrides)."""
    named, overrides = {}, []
    for word in words:
        if word.startswith("--config."):
            overrides.append(word[len("--config."):])
        elif word.startswith("--") and "=" in word:
            key, value = word[2:].split("=", 1)
            named[key] = value
    return named, overrides


def _route(block: str) -> tuple[str, str]:
    (convert,) = command_lines(_expand(block), "python -m diffjax.convert")
    named, _ = _flags(convert)
    return named["source"], named["config"].split(":")[0]


BLOCKS = _blocks()


def test_every_published_route_has_a_fixture():
    routes = [_route(b) for b in BLOCKS]
    assert sorted(set(routes)) == sorted(ROUTES), routes  # score_sde, DDPM, EDM, DiT, SiT


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{s}-{os.path.basename(c)}"
                                               for s, c in map(_route, BLOCKS)])
def test_the_documented_commands_convert_and_sample(block, tmp_path):
    from diffjax.config import load
    from diffjax.convert import convert
    from diffjax.modes import run

    block = _expand(block)
    (convert_words,) = command_lines(block, "python -m diffjax.convert")
    named, overrides = _flags(convert_words)
    fixture, sizes, step = ROUTES[(named["source"], named["config"].split(":")[0])]
    workdir = str(tmp_path / "run")

    def here(path: str) -> str:  # the doc's workdir is this test's
        return workdir + path[len(named["workdir"]):] if path.startswith(named["workdir"]) \
            else path

    for words in command_lines(block, "huggingface-cli download"):
        repository = words[2]
        (target,) = [w.split("=", 1)[1] for w in words if w.startswith("--local-dir=")]
        shutil.copytree(DOWNLOADS[repository], here(target))

    config = load(named["config"], [*overrides, *sizes])
    path = convert(named["source"], os.path.join(FIXTURES, fixture), config, workdir)
    assert path == os.path.join(workdir, "checkpoints", str(step))

    (evaluate,) = [w for w in command_lines(block, "python -m diffjax.main")
                   if "--mode=eval" in w]
    named_eval, overrides_eval = _flags(evaluate)
    assert here(named_eval["workdir"]) == workdir, "convert and eval use different workdirs"
    summary = run(load(named_eval["config"], [*overrides_eval, *sizes, *FAST_SAMPLING]),
                  workdir, "sample")
    assert summary["step"] == step and os.path.exists(summary["png"]), summary
