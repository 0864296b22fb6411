"""Modes of `python -m diffjax.main`, by name. Each takes (config, workdir) and returns a summary.

Each mode is imported only when it runs, so `--mode=sample` never loads the training loop.

Also here: preflight.py, the whole config checked before anything compiles (a dry run of the
modes, so it lives with them).
Imports: anything below (training, sampling, evaluation, convert, pipelines, experiment and the
foundations); only diffjax.main imports the modes.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import jax

from diffjax.latents import latent_mode
from diffjax.modes import preflight
from diffjax.parallel import distributed, peers
from diffjax.runtime import logs, preemption, xla
from diffjax.storage import filesystem as fs, workdir as workdir_lib, workdir_lock


def _train(config, workdir: str) -> dict[str, Any]:
    """train, or resume from the newest checkpoint in DIR (default)"""
    from diffjax.training.loop import train

    return train(config, workdir)


def _train_autoencoder(config, workdir: str) -> dict[str, Any]:
    """the first stage of latent diffusion, into DIR/autoencoder"""
    from diffjax.modes.first_stage import train_autoencoder

    return train_autoencoder(config, workdir)


def _train_classifier(config, workdir: str) -> dict[str, Any]:
    """the noise-conditional classifier of classifier guidance, into DIR/classifier"""
    from diffjax.modes.classifier import train_classifier

    return train_classifier(config, workdir)


def _encode_latents(config, workdir: str) -> dict[str, Any]:
    """data.split encoded by the first stage into data.latent_dir"""
    from diffjax.modes.encode_latents import encode_latents

    return encode_latents(config, workdir)


def _fid_stats(config, workdir: str) -> dict[str, Any]:
    """reference Inception statistics of eval.reference_split"""
    from diffjax.evaluation.stats import fid_stats

    return fid_stats(config, workdir)


def _eval(config, workdir: str) -> dict[int, dict]:
    """FID/KID of checkpoints (resumable; sweeps over sampler settings) or of a pipeline"""
    if config.pipeline.folder:
        from diffjax.modes.pipeline import evaluate_pipeline

        return evaluate_pipeline(config, workdir)
    from diffjax.modes.evaluate import evaluate

    return evaluate(config, workdir)


def _sample(config, workdir: str) -> dict[str, Any]:
    """images of a checkpoint or a pipeline: a PNG grid, an .npz, optionally one PNG each"""
    if config.pipeline.folder:
        from diffjax.modes.pipeline import sample_pipeline

        return sample_pipeline(config, workdir)
    from diffjax.modes.sample import sample

    return sample(config, workdir)


def _likelihood(config, workdir: str) -> dict[str, Any]:
    """bits/dim of eval.likelihood_split through the probability-flow ODE"""
    from diffjax.modes.likelihood import evaluate_likelihood

    return evaluate_likelihood(config, workdir)


def _compile(config, workdir: str) -> dict[str, Any]:
    """the train step (or sampler) compiled for compile.topology: memory per chip, FLOPs"""
    from diffjax.modes.compile import compile_mode

    return compile_mode(config, workdir)


def _export(config, workdir: str) -> dict[str, Any]:
    """a Stable Diffusion U-Net run as a diffusers folder (a pipeline when it has a base)"""
    from diffjax.modes.export import export

    return export(config, workdir)


MODES: dict[str, Callable[[Any, str], Any]] = {
    "train": _train,
    "train_autoencoder": _train_autoencoder,
    "train_classifier": _train_classifier,
    "encode_latents": _encode_latents,
    "fid_stats": _fid_stats,
    "eval": _eval,
    "sample": _sample,
    "likelihood": _likelihood,
    "compile": _compile,
    "export": _export,
}


def summaries() -> str:
    """One line per mode, from the registry (the --help text)."""
    return "\n".join(f"  {name:<18}{(function.__doc__ or '').strip()}"
                     for name, function in MODES.items())


# Modes that read a trained run: without a config they take the run's own (its config.json), and
# a config that describes another model than the run's is refused.
READS_A_RUN = ("sample", "eval", "likelihood", "export")


def _local_checkpoints(workdir: str) -> str | None:
    return fs.join(fs.absolute(workdir), "checkpoints") if fs.is_local(workdir) else None


# Modes that write checkpoints; the others only read a workdir and run beside training.
WRITING_MODES = ("train", "train_autoencoder", "train_classifier")


def run(config, workdir: str, mode: str = "train") -> Any:
    """Initialises multi-host JAX when needed, validates the whole config, then runs one mode.

    `config` None: the run's own config (WORKDIR/config.json), for the modes in READS_A_RUN.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown --mode={mode!r}; choose one of {sorted(MODES)}.")
    if config is None:
        if mode not in READS_A_RUN:
            raise ValueError(f"--mode={mode} needs a config; only {', '.join(READS_A_RUN)} "
                             f"read a trained run's own.")
        from diffjax.config.loading import load_recorded

        config = load_recorded(workdir)
    if mode not in WRITING_MODES:
        preemption.release()
    logs.quiet_library_logs()
    xla.enable_compilation_cache()
    distributed.initialize_from_environment()
    if jax.process_index() == 0:
        logging.info("JAX %s: %d processes, %d devices (%s).", jax.__version__,
                     jax.process_count(), jax.device_count(), jax.devices()[0].device_kind)
    writes = mode in WRITING_MODES
    if writes:
        # Before the (seconds-long) validation, so that a second writer is refused at once.
        if jax.process_index() == 0:
            workdir_lib.check_writable(fs.absolute(workdir))
        workdir_lock.lock_for_job(workdir)
    peers.start_watchdog(_local_checkpoints(workdir))
    # Relative latent paths (data.latent_dir, autoencoder.pretrained) are inside the workdir.
    config = latent_mode.resolve_paths(config, workdir)
    from diffjax.experiment import resolve_classifier_path

    config = resolve_classifier_path(config, workdir)  # "" = WORKDIR/classifier
    try:
        # Before anything is built (train checks when it resumes); a pipeline is no run.
        if mode in READS_A_RUN and not config.pipeline.folder:
            workdir_lib.check_same_model(fs.absolute(workdir), config)
        preflight.validate(config, mode)
        result = MODES[mode](config, workdir)
        peers.stop_watchdog()
        return result
    except Exception as error:
        peers.exit_if_lost(error, _local_checkpoints(workdir))
        raise
    finally:
        if writes:
            workdir_lock.release_job_lock(workdir)
