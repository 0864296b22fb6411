"""The training loop: one function, the same on 1 CPU, 8 GPUs or a multi-host TPU pod.

`train(config, workdir)` resumes from the newest checkpoint in WORKDIR if there is one; SIGTERM
(preemption) makes it save at the step it reached and return; a non-finite loss stops it with a
message and no checkpoint of the broken state. Only process 0 writes logs and images; every
process takes part in checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from diffjax import data as data_lib
from diffjax import images
from diffjax.experiment import Experiment, build_experiment, example_input
from diffjax.generation import make_generate_fn
from diffjax.guidance import grid_labels
from diffjax.parallel.mesh import batch_axis_size
from diffjax.parallel.sharding import batch_sharding, replicated
from diffjax.checkpointing import Checkpointer
from diffjax.train_state import TrainState, count_params, create_state
from diffjax.training.step import make_train_step
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


class PreemptionWatcher:
    """SIGTERM sets a flag; every host must agree on the step at which to stop."""

    def __init__(self, check_every: int):
        self.requested = False
        self.check_every = check_every
        self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint at the next step and exiting.")
        self.requested = True

    def should_stop(self, step: int, checkpointer: Checkpointer) -> bool:
        if jax.process_count() == 1:
            return self.requested or checkpointer.reached_preemption(step)
        if step % self.check_every:
            return False
        flags = multihost_utils.process_allgather(np.asarray(self.requested))
        return bool(np.any(flags)) or checkpointer.reached_preemption(step)

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def raise_if_nonfinite(state: TrainState, last_saved: int | None) -> None:
    bad_step = int(jax.device_get(state.first_nonfinite_step))
    if bad_step >= 0:
        saved = f"the newest checkpoint (step {last_saved})" if last_saved is not None else \
            "no checkpoint"
        raise NonFiniteLossError(
            f"The loss became NaN/Inf at step {bad_step}; training stopped and {saved} is kept. "
            f"Fix: lower --config.optim.lr, keep --config.optim.grad_clip > 0, or check the data."
        )


def global_batch(local_batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(sharding, v)
            for k, v in local_batch.items()}


def write_sample_grid(experiment: Experiment, generate, params, step: int, workdir: str,
                      writer) -> str | None:
    config = experiment.config
    n = config.training.num_sample_images
    rng = jax.random.fold_in(jax.random.key(config.seed), 0x5A3)
    labels = grid_labels(n, config.data.num_classes) if config.model.conditional else None
    samples, nfe = generate(params, rng, labels)
    pixels = data_lib.from_model_range(
        multihost_utils.process_allgather(samples, tiled=True),
        centered=config.data.centered, dequantize=config.data.dequantize)
    if jax.process_index() != 0:
        return None
    columns = n // config.data.num_classes if config.model.conditional else None
    grid = images.make_grid(pixels, columns=columns)
    path = images.save_png(os.path.join(workdir, "samples", f"step_{step:08d}.png"), grid)
    writer.write_images(step, {"samples": grid[None]})
    writer.write_scalars(step, {"sample_nfe": float(nfe)})
    return path


def train(config, workdir: str, devices=None) -> dict[str, Any]:
    """Trains (or resumes) and returns a summary: final step, loss, steps/s, paths, state.

    `devices` defaults to all devices; tests pass a subset to compare meshes in one process.
    """
    # Installed first: a preemption during set-up or compilation must still end in a save.
    preemption = PreemptionWatcher(config.training.preemption_check_every_steps)
    try:
        with contextlib.ExitStack() as context:
            return _train(config, os.path.abspath(workdir), devices, preemption, context)
    finally:
        preemption.restore()


def _train(config, workdir: str, devices, preemption: PreemptionWatcher,
           context: contextlib.ExitStack) -> dict[str, Any]:
    t_cfg = config.training
    experiment = build_experiment(config, devices)
    mesh = experiment.mesh
    check_batch_size(config, mesh)
    is_chief = jax.process_index() == 0
    if is_chief:
        os.makedirs(workdir, exist_ok=True)
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)

    # Global batches prefetched onto the devices; its state counts only the batches handed out.
    loader = context.enter_context(data_lib.DevicePrefetch(data_lib.TrainLoader(
        config.data, global_batch_size=t_cfg.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count()),
        batch_sharding(mesh), size=config.data.prefetch))
    checkpointer = Checkpointer(workdir, max_to_keep=t_cfg.max_checkpoints_to_keep,
                                async_save=t_cfg.async_checkpointing)
    latest = checkpointer.latest_step()
    if latest is not None:
        state, data_state = checkpointer.restore(experiment.spec, latest)
        loader.set_state(data_state)
        logging.info("Resumed from %s at step %d.", checkpointer.directory, latest)
    else:
        state = create_state(experiment.model, experiment.optimizer, example_input(config),
                             config.seed, experiment.spec)
    step = int(jax.device_get(state.step))
    if is_chief:
        logging.info("Model %s with %s parameters; mesh %s.", config.model.name,
                     f"{count_params(state.params):,}", dict(mesh.shape))

    batch_spec = batch_sharding(mesh)
    train_step = jax.jit(
        make_train_step(config, experiment.model, experiment.sde, experiment.optimizer),
        in_shardings=(experiment.spec.shardings, batch_spec),
        out_shardings=(experiment.spec.shardings, replicated(mesh)),
        donate_argnums=(0,),
    )
    generate = make_generate_fn(config, experiment.model, experiment.sde, mesh,
                                t_cfg.num_sample_images)
    # The mesh and rules must be active whenever a network is traced (activation constraints).
    context.enter_context(experiment.activate())
    first_batch = next(loader)
    compile_start = time.perf_counter()
    compiled_step = train_step.lower(state, first_batch).compile()
    compile_seconds = time.perf_counter() - compile_start
    throughput = Throughput(batch_size=t_cfg.batch_size, flops_per_step=compiled_flops(compiled_step),
                            num_devices=mesh.size)
    if is_chief:
        logging.info("Compiled the train step in %.1fs (%s FLOPs/step).", compile_seconds,
                     f"{throughput.flops_per_step:.3g}" if throughput.flops_per_step else "unknown")
    hooks = [periodic_actions.ReportProgress(num_train_steps=t_cfg.num_train_steps, writer=writer,
                                             every_steps=t_cfg.log_every_steps)] if is_chief else []
    if t_cfg.profile_first_step >= 0 and is_chief:
        hooks.append(periodic_actions.Profile(
            logdir=os.path.join(workdir, "profile"), first_profile=t_cfg.profile_first_step,
            num_profile_steps=t_cfg.profile_num_steps,
            # Steps alone bound the trace: clu's defaults also keep it open for at least 3 s (a
            # fast run ended with the trace never written) and start another every hour.
            profile_duration_ms=None, every_secs=None))

    last_saved = latest
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
            state, metrics = compiled_step(state, batch)
            batch = None
            step += 1
            pending_metrics.append(metrics)
            for hook in hooks:
                hook(step)
            final = step == t_cfg.num_train_steps
            if step % t_cfg.log_every_steps == 0 or final:
                raise_if_nonfinite(state, last_saved)
                averaged = jax.tree.map(lambda *v: float(np.mean(v)),
                                        *jax.device_get(pending_metrics))
                pending_metrics.clear()
                last_loss = averaged["loss"]
                rates = throughput.report(step)
                writer.write_scalars(step, {**averaged, **rates})
            if step % t_cfg.sample_every_steps == 0 or final:
                sample_path = write_sample_grid(experiment, generate, state.ema_params, step,
                                                workdir, writer) or sample_path
            preempted = preemption.should_stop(step, checkpointer)
            if step % t_cfg.checkpoint_every_steps == 0 or final or preempted:
                raise_if_nonfinite(state, last_saved)
                checkpointer.save(step, state, loader.get_state())
                last_saved = step
            if preempted:
                logging.warning("Preempted: checkpoint saved at step %d.", step)
                break
    finally:
        if t_cfg.profile_first_step >= 0 and is_chief:
            with contextlib.suppress(RuntimeError):  # training ended inside the traced steps
                jax.profiler.stop_trace()
        checkpointer.wait()
        checkpointer.close()
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
