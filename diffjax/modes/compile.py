"""`--mode=compile`: the real train step (or sampler) compiled for a TPU topology on this host.

    python -m diffjax.main --mode=compile --config=configs/imagenet256_dit.py:XL --workdir=W \\
        --config.compile.topology=v5p-256

Nobody should book a pod to learn that a batch does not fit. This mode builds the configured mesh
over the abstract devices of the topology (`diffjax.parallel.topologies`, libtpu's compiler; no
TPU), the state's shapes and shardings from `jax.eval_shape` (no parameter is ever allocated),
and lowers `diffjax.training.step.jit_train_step` (the function the training loop runs) or the
sampler of `diffjax.sampling.generate` for them, as MaxText's `train_compile.py` does for LLMs.
It prints, per chip, and writes to WORKDIR/compile/<topology>_<what>.json:
- memory (XLA's memory analysis): parameters, EMA, optimizer state, batch, activations and
  temporaries, outputs, against the chip's HBM; a plan that does not fit ends with one line,
  "does not fit: needs X GiB of Y GiB per chip", and the switches that would help;
- the FLOPs of one step per chip (XLA's cost analysis: remat recomputation included);
- the collectives of the compiled program (count and bytes of all-gather, reduce-scatter,
  all-reduce, all-to-all and collective-permute, read from the HLO);
- XLA's cost-model ESTIMATE of the step time ("optimal_seconds", TPU only) and the MFU it implies.
  It is the compiler's model, never a measurement.
XLA counts the body of a loop once: the sampler's steps and training.microbatches > 1 are loops,
so their FLOPs, collectives and time are per iteration (the report says so and scales FLOPs and
time by the trip count). `compile.save_executable=PATH` writes the serialized executable
(`load_executable` reads it back onto matching devices).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import pickle
import re
import time
from typing import Any

import jax
import jax.numpy as jnp

from diffjax.experiment import Experiment, build_experiment
from diffjax.latents import text_cache
from diffjax.parallel.sharding import batch_sharding, replicated
from diffjax.parallel.topologies import (CPU, CompileTarget, compile_target,
                                         host_memory_gib_per_device)
from diffjax.runtime.cli import UserError
from diffjax.storage import filesystem as fs
from diffjax.training.objectives import objective_for
from diffjax.training.step import abstract_batch, jit_train_step, step_arguments

GIB = 2.0**30
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
WHAT = ("train", "sample")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s4": 0.5, "u4": 0.5, "s16": 2, "u16": 2, "f16": 2,
                "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1, "f8e4m3b11fnuz": 1,
                "f8e4m3fnuz": 1, "f8e5m2fnuz": 1}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_DTYPE_BYTES, key=len, reverse=True)) +
                    r")\[([\d,]*)\]")
_COLLECTIVE_LINE = re.compile(
    r"=\s*(?P<shape>.*?)\s(?P<op>" + "|".join(COLLECTIVES) + r")(?P<phase>-start|-done)?\(")


class CompilePlanError(UserError, ValueError):
    """The plan does not fit the chip's memory; the message names the need and the switches."""


def shape_bytes(shape_text: str) -> int:
    """Bytes of an HLO shape ("f32[8,128]{1,0}" or a tuple of them)."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape_text):
        total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return int(total)


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """{op: {"count", "bytes"}} of the collectives in a compiled module's text, per chip.

    Asynchronous pairs count once, at their "-done" (whose result is the collective's); bytes
    are the results' sizes. A loop's body is one occurrence, as in the program text.
    """
    found = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
    for line in hlo_text.splitlines():
        match = _COLLECTIVE_LINE.search(line)
        if not match or match.group("phase") == "-start":
            continue
        entry = found[match.group("op")]
        entry["count"] += 1
        entry["bytes"] += shape_bytes(match.group("shape"))
    return found


def _per_chip_bytes(tree: Any) -> int:
    """Bytes of one chip's shard of every leaf (abstract arrays with shardings)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return total


def _analysis(compiled) -> dict[str, float]:
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # a backend without it
        return {}
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return dict(analysis or {})


@dataclasses.dataclass
class Plan:
    """What is compiled: the lowered program, its abstract inputs and how often its loop runs."""

    what: str
    lowered: Any
    inputs: dict[str, Any]  # name -> abstract tree (per-chip bytes are reported by name)
    loop_trips: int  # iterations of the program's main loop (1: none)
    loop_name: str
    batch_size: int


def _null_for_plan(config) -> dict[str, jax.Array] | None:
    """Zeros shaped as the null caption when the text cache holds none yet (a plan made before
    --mode=encode_latents): the null is a constant of the step, so the program is the same."""
    if not text_cache.is_text(config) or \
            fs.exists(fs.join(config.data.latent_dir, text_cache.NULL_FILE)):
        return None
    length, width, pooled = text_cache.conditioning_shapes(config)
    return {"states": jnp.zeros((length, width), jnp.float32),
            "mask": jnp.ones((length,), jnp.int32), "pooled": jnp.zeros((pooled,), jnp.float32)}


def _train_plan(experiment: Experiment) -> Plan:
    state, batch = experiment.spec.abstract, abstract_batch(experiment)
    objective = objective_for(experiment, null=_null_for_plan(experiment.config))
    step = jit_train_step(experiment, objective)  # outside the mesh: it computes its key eagerly
    extra = step_arguments(experiment, objective, abstract=True)
    with experiment.activate():
        lowered = step.lower(state, batch, *extra)
    inputs = {"parameters": state.params, "EMA parameters": state.ema_params,
              "optimizer state": state.opt_state, "batch": batch,
              **({"frozen base": extra[0]} if extra and extra[0] is not None else {}),
              **({"objective constants": extra[1]} if len(extra) > 1 else {})}
    t = experiment.config.training
    return Plan("train", lowered, inputs, int(t.microbatches), "microbatch", int(t.batch_size))


def _sample_plan(experiment: Experiment) -> Plan:
    from diffjax import sampling
    from diffjax.sampling.generate import make_generate_fn

    config, mesh = experiment.config, experiment.mesh
    if text_cache.is_text(config):  # prompts are encoded on the host, outside the sampler
        raise UserError("--config.compile.what=sample does not plan text-conditioned models "
                        "(their prompts are encoded outside the sampler); compile "
                        "--config.compile.what=train.")
    batch_size = int(config.sampling.batch_size)
    # Latent models decode in the same program at sampling time; the first stage's weights are
    # not needed to compile the sampler of the latents, which is what is compiled here.
    generate = make_generate_fn(config, experiment.model, experiment.sde, mesh, batch_size)
    params = experiment.abstract_network_params()  # with a LoRA/ControlNet's frozen base
    key = jax.eval_shape(lambda: jax.random.key(0))
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated(mesh))
    labels = None
    if config.model.conditional:
        labels = jax.ShapeDtypeStruct((generate.padded_batch_size,), jnp.int32,
                                      sharding=batch_sharding(mesh))
    with experiment.activate():
        lowered = generate.lower(params, rng, labels)
    steps = int(sampling.sampler_options(config.sampling).get("num_steps", 1))
    return Plan("sample", lowered, {"parameters": params}, steps, "sampler step", batch_size)


def _capacity_gib(config, target: CompileTarget) -> float:
    if float(config.compile.memory_per_chip_gib) > 0:
        return float(config.compile.memory_per_chip_gib)
    if target.chip is CPU:
        return host_memory_gib_per_device(target.devices)
    return float(target.chip.usable_hbm_gib)


def suggestions(config, target: CompileTarget, fsdp: int, state_gib: float, temp_gib: float,
                what: str) -> list[str]:
    """The switches that cut per-chip memory, the largest part's first (`fsdp`: the mesh's)."""
    t = config.training
    chips = target.num_chips // max(1, target.num_slices)
    state_hints, activation_hints = [], []
    if fsdp < chips:
        state_hints.append(f"--config.mesh.fsdp={chips} --config.mesh.data=1 (state "
                           f"{state_gib:.3g} -> {state_gib * fsdp / chips:.3g} GiB)")
    if what == "train":
        if not config.model.remat and config.model.name in ("dit", "ncsnpp", "unet"):
            activation_hints.append("--config.model.remat=True")
        per_pass = t.batch_size // t.microbatches
        parallel = target.num_chips  # enough to keep every data-parallel device busy
        if (per_pass // 2) % parallel == 0 and per_pass >= 2:
            activation_hints.append(f"--config.training.microbatches={2 * t.microbatches}")
    else:
        activation_hints.append(f"--config.sampling.batch_size="
                                f"{max(1, int(config.sampling.batch_size) // 2)}")
    if config.model.dtype == "float32":
        activation_hints.append("--config.model.dtype=bfloat16")
    return (state_hints + activation_hints) if state_gib >= temp_gib else \
        (activation_hints + state_hints)


def _does_not_fit(config, target, fsdp, need_gib, capacity_gib, state_gib, temp_gib, what,
                  source) -> CompilePlanError:
    hints = suggestions(config, target, fsdp, state_gib, temp_gib, what)
    try_ = f"; try {', '.join(hints)}" if hints else ""
    return CompilePlanError(
        f"does not fit: needs {need_gib:.3g} GiB of {capacity_gib:.3g} GiB per chip on "
        f"{target.name} ({source}: state {state_gib:.3g} GiB, activations and temporaries "
        f"{temp_gib:.3g} GiB){try_}.")


@contextlib.contextmanager
def _persistent_cache(enabled: bool):
    """A compile-only TPU executable cannot be read back from the persistent cache (JAX needs a
    TPU client to load one): storing it would only fill the cache (~100 MB for DiT-XL/2)."""
    previous = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", previous and enabled)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", previous)


_XLA_OOM = re.compile(r"\(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)")
_UNITS = {"K": 2.0**-20, "M": 2.0**-10, "G": 1.0, "T": 2.0**10}


def without_first_stage_weights(config):
    """`config`, or a copy whose missing first-stage folder is dropped: a latent model's input
    shape then comes from the configured autoencoder architecture (diffjax's defaults are the
    SD-VAE's: 8x downsampling, 4 channels), so a laptop without the VAE can compile for a pod."""
    from diffjax.latents.first_stage import is_diffjax_run
    from diffjax.latents.latent_mode import is_latent

    path = config.autoencoder.pretrained
    if not is_latent(config) or not path or is_diffjax_run(path) or fs.exists(path):
        return config
    logging.info("No first stage at %s: the latent shape comes from config.autoencoder.", path)
    copy = config.copy_and_resolve_references()
    with copy.unlocked():
        copy.autoencoder.pretrained = ""
    copy.lock()
    return copy


def compile_plan(config, target: CompileTarget, what: str | None = None) -> dict[str, Any]:
    """Compiles the configured train step (or sampler) for `target`; the report (a dict).

    Raises CompilePlanError when it does not fit. Used by the mode and by
    benchmarks/tpu_compile.py.
    """
    what = what or config.compile.what
    config = without_first_stage_weights(config)
    experiment = build_experiment(config, devices=target.devices)
    plan = _train_plan(experiment) if what == "train" else _sample_plan(experiment)
    capacity = _capacity_gib(config, target)
    fsdp = int(experiment.mesh.shape["fsdp"])
    inputs = {name: _per_chip_bytes(tree) for name, tree in plan.inputs.items()}
    state_gib = sum(v for k, v in inputs.items() if k != "batch") / GIB
    start = time.perf_counter()
    try:
        with _persistent_cache(target.chip is CPU):
            compiled = plan.lowered.compile()
    except Exception as error:  # XLA:TPU refuses a program over its HBM at compile time
        text = str(error)
        if "RESOURCE_EXHAUSTED" not in text:
            raise
        match = _XLA_OOM.search(text)
        if match:
            temp = float(match.group(1)) * _UNITS[match.group(2)]
            capacity = float(match.group(3)) * _UNITS[match.group(4)]
            need = temp + sum(inputs.values()) / GIB
        else:
            temp, need = float("nan"), float("nan")
        raise _does_not_fit(config, target, fsdp, need, capacity, state_gib, temp, what,
                            "XLA") from None
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    mem = {name: int(getattr(memory, f"{name}_size_in_bytes", 0) or 0)
           for name in ("argument", "output", "alias", "temp", "generated_code")}
    total = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"] + mem["generated_code"]
    costs = _analysis(compiled)
    flops = float(costs.get("flops", 0.0)) or None
    bytes_accessed = float(costs.get("bytes accessed", 0.0)) or None
    # XLA's own estimate; it can come out <= 0 (seen for DiT-XL/2 on v5p): then it is not one.
    optimal = costs.get("optimal_seconds")
    seconds_estimate = float(optimal) if optimal and optimal > 0 else None
    loop = max(1, plan.loop_trips)
    chip = target.chip
    peak = chip.peak_bf16_flops
    step_flops = flops * loop if flops else None
    step_seconds = seconds_estimate * loop if seconds_estimate else None
    mfu = (step_flops / step_seconds / peak) if (step_flops and step_seconds and peak) else None
    roofline = None
    if flops and bytes_accessed and peak and chip.hbm_bytes_per_second:
        roofline = loop * max(flops / peak, bytes_accessed / chip.hbm_bytes_per_second)
    report = {
        "what": what,
        "topology": target.name,
        "jax_topology": target.jax_topology if target.chip is not CPU else "cpu",
        "num_slices": target.num_slices,
        "chips": target.num_chips,
        "hosts": target.num_hosts,
        "device_kind": target.devices[0].device_kind,
        "mesh": {k: int(v) for k, v in experiment.mesh.shape.items()},
        "batch_size": plan.batch_size,
        "compile_seconds": seconds,
        "memory_per_chip": {
            **{name: int(b) for name, b in inputs.items()},
            "arguments": mem["argument"], "outputs": mem["output"], "aliased": mem["alias"],
            "temporaries": mem["temp"], "code": mem["generated_code"], "total": int(total),
            "capacity": int(capacity * GIB),
        },
        "fits": total <= capacity * GIB,
        "flops_per_chip": flops,
        "bytes_accessed_per_chip": bytes_accessed,
        "loop": {"name": plan.loop_name, "trips": loop},
        "flops_per_chip_per_call": step_flops,
        "collectives_per_chip": collectives(compiled.as_text()),
        "estimate": {
            "source": "XLA cost model (optimal_seconds): an estimate, not a measurement",
            "xla_optimal_seconds": float(optimal) if optimal is not None else None,
            "seconds_per_iteration": seconds_estimate,
            "seconds_per_call": step_seconds,
            "mfu": mfu,
            "peak_bf16_flops_per_chip": peak,
            # Not XLA's: max(FLOPs / peak, bytes accessed / HBM bandwidth), collectives left out.
            "roofline_seconds_per_call": roofline,
        },
    }
    report["_compiled"] = compiled
    if not report["fits"]:
        raise _does_not_fit(config, target, fsdp, total / GIB, capacity, state_gib,
                            mem["temp"] / GIB, what, "XLA memory analysis")
    return report


def _size(value: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if value >= 0.1 * scale or unit == "KiB":
            return f"{value / scale:8.2f} {unit}"


def format_report(report: dict[str, Any]) -> str:
    m = report["memory_per_chip"]
    what = "train step" if report["what"] == "train" else "sampler"
    loop = report["loop"]
    lines = [
        f"Compiled the {what} for {report['topology']} ({report['jax_topology']}"
        f"{' x %d slices' % report['num_slices'] if report['num_slices'] > 1 else ''}: "
        f"{report['chips']} x {report['device_kind']}, {report['hosts']} host(s)); mesh "
        f"{report['mesh']}; batch {report['batch_size']}; {report['compile_seconds']:.1f} s.",
        "Memory per chip (XLA memory analysis):"]
    for name in [k for k in ("parameters", "EMA parameters", "optimizer state", "frozen base",
                                 "batch") if k in m]:
        lines.append(f"  {name:<26}{_size(m[name])}")
    lines += [f"  {'activations/temporaries':<26}{_size(m['temporaries'])}",
              f"  {'outputs (not donated)':<26}{_size(m['outputs'] - m['aliased'])}",
              f"  {'total':<26}{_size(m['total'])} of {m['capacity'] / GIB:.2f} GiB "
              f"({m['total'] / m['capacity']:.0%}): {'fits' if report['fits'] else 'DOES NOT FIT'}"]
    per = f" per {loop['name']} (x{loop['trips']} per call)" if loop["trips"] > 1 else ""
    if report["flops_per_chip"]:
        lines.append(f"FLOPs per chip: {report['flops_per_chip']:.4g}{per} (XLA cost analysis, "
                     f"remat recomputation included).")
    coll = report["collectives_per_chip"]
    used = [f"{op} {c['count']} x ({_size(c['bytes']).strip()})" for op, c in coll.items()
            if c["count"]]
    lines.append("Collectives per chip in the program: " + (", ".join(used) if used else "none")
                 + (f" (a loop body counted once: {per.strip()})" if per else "") + ".")
    est = report["estimate"]
    if est["seconds_per_call"]:
        mfu = f", MFU {est['mfu']:.1%} of {est['peak_bf16_flops_per_chip'] / 1e12:.0f} " \
              f"TFLOP/s bf16" if est["mfu"] else ""
        lines.append(f"ESTIMATE (XLA's cost model, not a measurement): "
                     f"{est['seconds_per_call'] * 1e3:.1f} ms per {report['what']} call{mfu}.")
    elif est["xla_optimal_seconds"] is not None:
        lines.append(f"No step-time estimate: XLA's cost model gave "
                     f"{est['xla_optimal_seconds']:.3g} s, which is not a time.")
    else:
        lines.append("No step-time estimate: XLA gives one for TPU targets only.")
    if est["roofline_seconds_per_call"]:
        lines.append(f"Roofline bound (not XLA's estimate; FLOPs / peak and bytes / HBM "
                     f"bandwidth, collectives left out): >= "
                     f"{est['roofline_seconds_per_call'] * 1e3:.1f} ms per call.")
    return "\n".join(lines)


def report_path(workdir: str, report: dict[str, Any]) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", report["topology"])
    slices = f"x{report['num_slices']}" if report["num_slices"] > 1 else ""
    return fs.join(fs.absolute(workdir), "compile", f"{name}{slices}_{report['what']}.json")


def save_executable(compiled, path: str) -> int:
    """Writes the serialized executable with its argument and result trees; returns its bytes."""
    from jax.experimental.serialize_executable import serialize

    payload, in_tree, out_tree = serialize(compiled)
    data = pickle.dumps({"payload": payload, "in_tree": in_tree, "out_tree": out_tree,
                         "jax": jax.__version__})
    fs.write_atomic(path, data)
    return len(data)


def load_executable(path: str, backend=None):
    """The executable `save_executable` wrote, loaded onto this process's devices (the jax,
    jaxlib and libtpu versions must be the ones it was compiled with)."""
    from jax.experimental.serialize_executable import deserialize_and_load

    saved = pickle.loads(fs.read_bytes(path))
    if saved["jax"] != jax.__version__:
        raise ValueError(f"{path} was compiled with jax {saved['jax']}, this is "
                         f"{jax.__version__}; compile it again with --mode=compile.")
    return deserialize_and_load(saved["payload"], saved["in_tree"], saved["out_tree"],
                                backend=backend)


def compile_mode(config, workdir: str) -> dict[str, Any]:
    c = config.compile
    target = compile_target(c.topology, int(c.num_slices))
    logging.info("Compiling the %s for %s.", c.what, target.describe())
    report = compile_plan(config, target)
    compiled = report.pop("_compiled")
    if c.save_executable:
        size = save_executable(compiled, c.save_executable)
        report["executable"] = {"path": fs.absolute(c.save_executable), "bytes": size}
    path = report_path(workdir, report)
    fs.makedirs(fs.join(fs.absolute(workdir), "compile"))
    fs.write_atomic(path, json.dumps(report, indent=2, sort_keys=False) + "\n")
    if jax.process_index() == 0:
        print(format_report(report) + f"\nReport: {path}", flush=True)
    report["report"] = path
    return report

