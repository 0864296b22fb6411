"""The training loop: one function, the same on 1 CPU, 8 GPUs or a multi-host TPU pod.

`train(config, workdir)` resumes from the newest checkpoint in WORKDIR if there is one; SIGTERM
(preemption) makes it save at the step it reached and return; a non-finite loss stops it with a
message and no checkpoint of the broken state. Only process 0 writes logs and images; every
process takes part in checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from clu import periodic_actions
from jax.sharding import Mesh

from diffjax import data as data_lib
from diffjax.data.subsets import training_source
from diffjax.experiment import Experiment, build_experiment, load_first_stage
from diffjax.latents import LatentSource
from diffjax.latents.latent_mode import is_latent, resolve_paths, uses_cache
from diffjax.latents.reader import check_first_stage
from diffjax.outputs.metric_writers import create_writer
from diffjax.parallel import peers
from diffjax.parallel.mesh import batch_axis_size
from diffjax.parallel.sharding import batch_sharding
from diffjax.runtime.preemption import PreemptionWatcher
from diffjax.state.optimizer import learning_rate_schedule
from diffjax.state.train_state import TrainState, count_params, create_state, state_bytes
from diffjax.storage import filesystem as fs, workdir as workdir_lib
from diffjax.storage.checkpoints import Checkpointer
from diffjax.storage.workdir_lock import lock_for_job, lock_held, release_job_lock
from diffjax.training.grids import grid_for
from diffjax.training.held_out import held_out_loss
from diffjax.training.objectives import objective_for
from diffjax.training.progress import Progress
from diffjax.training.step import jit_train_step, step_arguments
from diffjax.training.throughput import Throughput, compiled_flops


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/Inf; the message names the step and the fixes."""


def check_batch_size(config, mesh: Mesh) -> None:
    b, k = config.training.batch_size, config.training.microbatches
    data_parallel = batch_axis_size(mesh)
    if b % k or (b // k) % data_parallel:
        raise ValueError(
            f"training.batch_size={b} with microbatches={k} must give a per-pass batch divisible "
            f"by the {data_parallel} data-parallel devices (mesh data x fsdp); change "
            f"--config.training.batch_size or --config.training.microbatches."
        )


def raise_if_nonfinite(state: TrainState, last_saved: int | None) -> None:
    bad_step = int(jax.device_get(state.first_nonfinite_step))
    if bad_step >= 0:
        saved = f"the newest checkpoint (step {last_saved})" if last_saved is not None else \
            "no checkpoint"
        raise NonFiniteLossError(
            f"The loss became NaN/Inf at step {bad_step}; training stopped and {saved} is kept. "
            f"Fix: lower --config.optim.lr, keep --config.optim.grad_clip > 0, or check the data."
        )


def train(config, workdir: str, devices=None, task: str = "diffusion") -> dict[str, Any]:
    """Trains (or resumes) and returns a summary: final step, loss, steps/s, paths, state.

    `task` is "diffusion" (on pixels, or on latents when data.latent_dir is set),
    "autoencoder" (the first stage; `modes` passes `first_stage.autoencoder_training_config`) or
    "classifier" (`modes.train_classifier` passes its config).
    `devices` defaults to all devices; tests pass a subset to compare meshes in one process.
    """
    workdir = fs.absolute(workdir)
    config = resolve_paths(config, workdir)
    preemption = PreemptionWatcher(config.training.preemption_check_every_steps)
    try:
        with contextlib.ExitStack() as context:
            return _train(config, workdir, devices, preemption, context, task)
    finally:
        preemption.restore()


def _resume_or_initialise(experiment: Experiment, checkpointer: Checkpointer, workdir: str,
                          teacher=None):
    """(state, data-iterator state or None, step) from the newest readable checkpoint, or fresh
    (a distillation student fresh from its teacher's EMA weights)."""
    config = experiment.config
    explain = workdir_lib.explain_differences(workdir, config)
    restored = checkpointer.restore_latest(experiment.spec, explain)
    frozen = experiment.frozen
    if restored is not None:
        # Same shapes, another model (VP weights under an EDM config): refused as well, before
        # the record is overwritten.
        workdir_lib.check_same_model(workdir, config, experiment.task)
        state, data_state, step = restored
        if frozen is not None:
            frozen.check(data_state, f"checkpoint {step} in {checkpointer.directory}")
        logging.info("Resumed from %s at step %d.", checkpointer.directory, step)
        return state, data_state, step
    state = create_state(experiment.model, experiment.optimizer, experiment.example_input(),
                         config.seed, experiment.spec,
                         trainable=frozen.select if frozen else None)
    if frozen is not None and frozen.initialise is not None:
        # A ControlNet starts as a copy of the base's layers (diffusers' from_unet).
        start = jax.jit(lambda s, base: s.replace(params=frozen.initialise(s.params, base),
                                                  ema_params=frozen.initialise(s.ema_params,
                                                                               base)),
                        out_shardings=experiment.spec.shardings)
        state = start(state, frozen.params)
    if config.model.name == "sd_unet" and config.model.get("pretrained", "") and \
            experiment.task == "diffusion":
        state = _start_from_pretrained(experiment, state)
    if teacher is not None:
        from diffjax.training.teacher import initial_params

        params = initial_params(state.params, teacher.params)
        # Two buffers: the step donates the state, and one buffer cannot be donated twice.
        state = state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))
        logging.info("The student starts from the teacher's EMA weights (step %d).",
                     teacher.step)
    return state, None, 0


def _start_from_pretrained(experiment: Experiment, state: TrainState) -> TrainState:
    """A fine-tune starts (params and EMA) from model.pretrained's U-Net, read with numpy."""
    from diffjax.models.sd_denoiser import pretrained_params

    weights, where = pretrained_params(experiment.model, experiment.config.model.pretrained)

    def place(array, sharding):
        return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

    shardings = experiment.spec.shardings
    params = jax.tree.map(place, weights, shardings.params)
    ema = jax.tree.map(place, weights, shardings.ema_params)
    logging.info("The U-Net starts from %s.", where)
    return state.replace(params=params, ema_params=ema)


def _train(config, workdir: str, devices, preemption: PreemptionWatcher,
           context: contextlib.ExitStack, task: str) -> dict[str, Any]:
    t_cfg = config.training
    experiment = build_experiment(config, devices, task)
    mesh = experiment.mesh
    check_batch_size(config, mesh)
    is_chief = jax.process_index() == 0
    checkpoint_bytes = state_bytes(experiment.spec.abstract)
    # Before any compute or data: a workdir that cannot take a checkpoint fails now, in one line.
    if is_chief:
        workdir_lib.prepare_for_writing(workdir, checkpoint_bytes=checkpoint_bytes)
    # Process 0 holds the lock for the whole run (taken here unless the CLI already took it).
    if not lock_held(workdir):
        lock_for_job(workdir)
        context.callback(release_job_lock, workdir)

    checkpointer = Checkpointer(workdir, max_to_keep=t_cfg.max_checkpoints_to_keep,
                                async_save=t_cfg.async_checkpointing, clear_partial_saves=True)
    context.callback(checkpointer.close)
    teacher = None
    if task == "diffusion" and config.model.get("teacher", ""):
        from diffjax.training.teacher import load_teacher

        teacher = load_teacher(config, devices=list(mesh.devices.flat))
    state, data_state, step = _resume_or_initialise(experiment, checkpointer, workdir, teacher)
    last_saved = step if data_state is not None else None
    if is_chief:
        workdir_lib.record_config(workdir, config)
        name = {"autoencoder": "first stage (AutoencoderKL)",
                "classifier": f"classifier ({config.classifier.name})"}.get(task,
                                                                           config.model.name)
        if experiment.frozen is None:
            logging.info("Model %s with %s parameters; mesh %s.", name,
                         f"{count_params(state.params):,}", dict(mesh.shape))
        else:
            logging.info("Model %s: a %s of %s trainable parameters on the frozen base %s (%s "
                         "parameters); mesh %s.", name, experiment.frozen.kind,
                         f"{count_params(state.params):,}", experiment.frozen.identity.folder,
                         f"{count_params(experiment.frozen.params):,}", dict(mesh.shape))
    if preemption.stop_before_first_step():
        return _stop_during_start_up(step, checkpointer, workdir, state)
    if step >= t_cfg.num_train_steps:
        logging.warning("The newest checkpoint (step %d) is already at or past "
                        "training.num_train_steps=%d: nothing to train; raise "
                        "--config.training.num_train_steps to continue.", step,
                        t_cfg.num_train_steps)
        # A finished run (a notebook rerun): no data, no compilation (tens of seconds).
        return _already_trained(step, checkpointer, workdir, state)

    # Global batches prefetched onto the devices; its state counts only the batches handed out.
    loader = context.enter_context(data_lib.DevicePrefetch(data_lib.TrainLoader(
        config.data, global_batch_size=t_cfg.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        source=LatentSource(config.data.latent_dir) if uses_cache(config) else
        training_source(config.data)),
        batch_sharding(mesh), size=config.data.prefetch))
    if data_state is not None:
        loader.set_state(data_state)
    writer = create_writer(workdir, config, is_chief=is_chief)
    context.callback(writer.close)
    # The config beside the curves (TensorBoard's Text tab), at every start: what this run is.
    writer.write_texts(step, {"config": config_text(config)})

    frozen = experiment.frozen
    objective = objective_for(experiment, teacher)
    train_step = jit_train_step(experiment, objective)
    # Frozen arrays are arguments of the step (never donated), not constants: a frozen base
    # (LoRA, ControlNet) and the objective's own (a distillation teacher's parameters).
    step_args = step_arguments(experiment, objective)
    record = frozen.record() if frozen is not None else {}
    decoder = load_first_stage(config, mesh=mesh) if is_latent(config) else None
    if decoder is not None:  # latents of an older first stage would train a model it can't decode
        check_first_stage(config, decoder, required=True)
    write_grid = grid_for(experiment, workdir, writer, decoder)
    evaluate_held_out = held_out_loss(experiment, objective, step)
    # The mesh and rules must be active whenever a network is traced (activation constraints).
    context.enter_context(experiment.activate())
    first_batch = next(loader)
    compile_start = time.perf_counter()
    compiled_step = train_step.lower(state, first_batch, *step_args).compile()
    compile_seconds = time.perf_counter() - compile_start
    throughput = Throughput(batch_size=t_cfg.batch_size, flops_per_step=compiled_flops(compiled_step),
                            num_devices=mesh.size)
    if is_chief:
        logging.info("Compiled the train step in %.1fs (%s FLOPs/step).", compile_seconds,
                     f"{throughput.flops_per_step:.3g}" if throughput.flops_per_step else "unknown")
    if preemption.stop_before_first_step():
        return _stop_during_start_up(step, checkpointer, workdir, state)
    learning_rate = learning_rate_schedule(config.optim, t_cfg.num_train_steps)
    progress = Progress(t_cfg.num_train_steps, step, enabled=is_chief)
    context.callback(progress.close)
    profiler = None
    if t_cfg.profile_first_step >= 0 and is_chief:
        profiler = periodic_actions.Profile(
            logdir=fs.join(workdir, "profile"), first_profile=t_cfg.profile_first_step,
            num_profile_steps=t_cfg.profile_num_steps,
            # Steps alone bound the trace: clu's defaults also keep it open for at least 3 s (a
            # fast run ended with the trace never written) and start another every hour.
            profile_duration_ms=None, every_secs=None)

    pending_metrics: list[dict] = []
    rates: dict[str, float] = {}
    last_loss = None
    sample_path = None
    preempted = False
    batch = first_batch
    throughput.start(step)
    try:
        while step < t_cfg.num_train_steps:
            if batch is None:
                batch = next(loader)
            state, metrics = compiled_step(state, batch, *step_args)
            batch = None
            step += 1
            pending_metrics.append(metrics)
            if profiler is not None:
                profiler(step)
            final = step == t_cfg.num_train_steps
            if step % t_cfg.log_every_steps == 0 or final:
                raise_if_nonfinite(state, last_saved)
                averaged = jax.tree.map(lambda *v: float(np.mean(v)),
                                        *jax.device_get(pending_metrics))
                pending_metrics.clear()
                last_loss = averaged["loss"]
                rates = throughput.report(step)
                # The lr applied by the update that produced `step` (optax counts from 0).
                scalars = {**averaged, **rates, "lr": float(learning_rate(step - 1))}
                writer.write_scalars(step, scalars)
                progress.update(step, scalars)
            if t_cfg.sample_every_steps and (step % t_cfg.sample_every_steps == 0 or final):
                sample_path = write_grid(experiment.network_params(state.ema_params),
                                         step) or sample_path
            if evaluate_held_out is not None and step % t_cfg.eval_every_steps == 0:
                writer.write_scalars(step, {"eval_loss": evaluate_held_out(
                    experiment.network_params(state.ema_params))})
            preempted = preemption.should_stop(step, checkpointer)
            if step % t_cfg.checkpoint_every_steps == 0 or final or preempted:
                raise_if_nonfinite(state, last_saved)
                checkpointer.save(step, state, {**loader.get_state(), **record},
                                  checkpoint_bytes)
                last_saved = step
            if preempted:
                logging.warning("Preempted: checkpoint saved at step %d.", step)
                break
        checkpointer.wait()
    except Exception as error:
        # A lost peer: exit before the clean-up below waits on barriers it never reaches.
        peers.exit_if_lost(error, checkpointer.directory if fs.is_local(workdir) else None)
        raise
    finally:
        if profiler is not None:
            with contextlib.suppress(RuntimeError):  # training ended inside the traced steps
                jax.profiler.stop_trace()
        writer.flush()

    summary = {
        "step": step,
        "preempted": preempted,
        "loss": last_loss,
        "steps_per_sec": rates.get("steps_per_sec"),
        "checkpoints": checkpointer.directory,
        "tensorboard": workdir,
        "samples": sample_path,
        "state": state,
    }
    if is_chief:
        print(f"Trained to step {step}. Checkpoints: {checkpointer.directory}\n"
              f"TensorBoard: tensorboard --logdir {workdir}\nSamples: {sample_path}", flush=True)
    return summary


def config_text(config) -> str:
    """The resolved config as Markdown (a code block) for a TensorBoard text summary."""
    text = json.dumps(workdir_lib.config_to_dict(config), indent=2, sort_keys=True)
    return "\n".join("    " + line for line in text.splitlines())


def _already_trained(step: int, checkpointer: Checkpointer, workdir: str, state
                     ) -> dict[str, Any]:
    grid = fs.join(workdir, "samples", f"step_{step:08d}.png")
    sample_path = grid if fs.exists(grid) else None
    if jax.process_index() == 0:
        print(f"Already trained to step {step}. Checkpoints: {checkpointer.directory}\n"
              f"TensorBoard: tensorboard --logdir {workdir}\nSamples: {sample_path}", flush=True)
    return {"step": step, "preempted": False, "loss": None, "steps_per_sec": None,
            "checkpoints": checkpointer.directory, "tensorboard": workdir,
            "samples": sample_path, "state": state}


def _stop_during_start_up(step: int, checkpointer: Checkpointer, workdir: str, state
                          ) -> dict[str, Any]:
    """SIGTERM before the first step: the newest checkpoint already holds this state."""
    logging.warning("SIGTERM during start-up: stopping before the first step; nothing new to "
                    "save (newest checkpoint: %s).", step if checkpointer.all_steps() else "none")
    if jax.process_index() == 0:
        print(f"Stopped before training (SIGTERM) at step {step}. Checkpoints: "
              f"{checkpointer.directory}", flush=True)
    return {"step": step, "preempted": True, "loss": None, "steps_per_sec": None,
            "checkpoints": checkpointer.directory, "tensorboard": workdir, "samples": None,
            "state": state}
