"""Published checkpoints -> ordinary diffjax checkpoints: `python -m diffjax.convert`.

    python -m diffjax.convert --source=score_sde --checkpoint=checkpoint_26.pth \
        --config=configs/cifar10_ddpmpp_vp.py:deep --workdir=DIR

writes DIR/checkpoints/<step>/, which `--mode=sample`, `--mode=eval` and `--mode=likelihood`
restore unchanged and `--mode=train` fine-tunes. Sources (`SOURCES`):
- `score_sde`: score_sde_pytorch `checkpoint_<n>.pth` (raw weights -> params, EMA -> ema_params,
  its step);
- `dit`: facebookresearch/DiT `DiT-XL-2-256x256.pt` / `-512x512.pt` (EMA weights -> both, step 0);
- `edm`: NVlabs/edm network pickles of SongUNet (DDPM++/NCSN++) networks (EMA -> both, step 0);
- `sit`: willisma/SiT `SiT-XL-2-256x256.pt` (DiT's format; flow-matching velocity, step 0);
- `adm_classifier`: openai/guided-diffusion's noise-conditional classifiers
  (`64x64_classifier.pt` ... `512x512_classifier.pt`) into DIR/classifier/checkpoints/0/, the
  classifier that `sampling.classifier_scale` uses (`classifier.name=adm`).
No torch at run time: files are read with `diffjax.storage.torch_files`. The checkpoint must hold the
network the config builds; otherwise the conversion stops before writing, naming the first
parameter whose name or shape differs and the config keys that decide it.

Imports: experiment (the network a config builds, its state spec), models, config, state,
storage, runtime.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import zipfile
from typing import Any, Callable

from diffjax.convert import adm, dit, edm, score_sde
from diffjax.convert.target import Target, build_target, check_empty, write_checkpoint
from diffjax.latents.latent_mode import resolve_paths
from diffjax.storage import filesystem, workdir as workdir_lib
from diffjax.storage.workdir_lock import WorkdirLock


@dataclasses.dataclass(frozen=True)
class Source:
    read: Callable[[Any], Any]  # file stream -> loaded checkpoint
    convert: Callable[[Target, Any], tuple[dict, dict, int]]  # -> params, ema_params, step
    task: str = "diffusion"  # "classifier": the run's classifier (WORKDIR/classifier)


SOURCES: dict[str, Source] = {
    "score_sde": Source(score_sde.read, score_sde.convert),
    "dit": Source(dit.read, dit.convert),
    "edm": Source(edm.read, edm.convert),
    "sit": Source(dit.read, dit.convert_sit),
    "adm_classifier": Source(adm.read, adm.convert, task="classifier"),
}


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"Unknown --source={name!r}; choose one of {sorted(SOURCES)}.") from None


def load(source: str, checkpoint: str):
    reader = get_source(source).read
    if not filesystem.exists(checkpoint):
        raise FileNotFoundError(f"No checkpoint file {checkpoint}; check --checkpoint.")
    if filesystem.is_dir(checkpoint):
        raise IsADirectoryError(f"--checkpoint={checkpoint} is a folder; pass the checkpoint "
                                f"file itself (.pth, .pt or .pkl).")
    with filesystem.open_file(checkpoint) as stream:
        data = io.BytesIO(stream.read())
    if not data.getbuffer().nbytes:
        raise ValueError(f"--checkpoint={checkpoint} is empty (0 bytes); download it again "
                         f"(an interrupted download?) and pass the complete file.")
    try:
        return reader(data)
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, TypeError,
            ValueError) as error:
        if isinstance(error, ValueError) and "--source" in str(error):
            raise
        raise ValueError(f"{checkpoint} is not a checkpoint of --source={source} "
                         f"({type(error).__name__}: {error}); check --source and "
                         f"--checkpoint.") from None


def convert_params(source: str, checkpoint: str, config) -> tuple[Target, dict, dict, int]:
    """Reads and converts without writing: (target, params, ema_params, step)."""
    loaded = load(source, checkpoint)
    if get_source(source).task == "classifier":
        from diffjax.experiment import classifier_training_config

        if config.classifier.name != "adm":
            raise ValueError(f"--source={source} converts guided-diffusion's classifiers: set "
                             f"--config.classifier.name=adm (it is {config.classifier.name!r}), "
                             f"e.g. configs/imagenet_adm_classifier.py:64.")
        target = build_target(classifier_training_config(config), task="classifier")
    else:
        target = build_target(config)
    params, ema_params, step = get_source(source).convert(target, loaded)
    return target, params, ema_params, step


def convert(source: str, checkpoint: str, config, workdir: str, step: int | None = None) -> str:
    """Converts `checkpoint` for `config` into WORKDIR/checkpoints/<step>/; returns that path.

    Like training, the conversion is a writer: it holds the workdir lock, and it records the
    config in WORKDIR/config.json, so a later run with other shapes names the keys that differ.
    """
    if get_source(source).task == "classifier":
        # A classifier is its own run, WORKDIR/classifier (classifier.pretrained), beside a
        # diffusion run that may already be there.
        from diffjax.experiment import classifier_training_config, resolve_classifier_path

        config = resolve_classifier_path(config, workdir)
        run, recorded = config.classifier.pretrained, classifier_training_config(config)
    else:
        run, recorded = workdir, None
    check_empty(run)
    # Relative latent paths (autoencoder.pretrained) are inside the workdir, as for every mode.
    config = resolve_paths(config, filesystem.absolute(workdir))
    # Everything is read and checked before the workdir is touched: a mismatch writes nothing.
    target, params, ema_params, found_step = convert_params(source, checkpoint, config)
    workdir_lib.check_writable(filesystem.absolute(run))
    with WorkdirLock(filesystem.absolute(run), purpose="conversion"):
        check_empty(run)
        path = write_checkpoint(target, params, ema_params,
                                found_step if step is None else step, run)
        workdir_lib.record_config(filesystem.absolute(run), recorded or config)
    return path
