"""Process-wide runtime settings that entry points (CLI, tests, notebooks) opt into explicitly.

- XLA:CPU flags measured to be faster on the pinned jaxlib (`configure_xla_flags`). XLA reads
  XLA_FLAGS once, when JAX starts its first backend, so this must run before the first
  computation; `enable_compilation_cache` applies it too, so every entry point that turns on the
  cache gets the flags without a second call.
- A persistent XLA compilation cache: compiling a U-Net train step takes tens of seconds on a CPU
  and is identical across runs of the same config, so reruns, resumes and tests reuse it.
- No TPU backend on a host without TPU chips (`skip_absent_tpu`): libtpu, installed to compile for
  TPUs (`--mode=compile`), would otherwise be started by every JAX process on a CPU host.
"""

from __future__ import annotations

import logging
import os
import shlex

import jax

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "diffjax", "xla")

XLA_CPU_DEFAULTS_ENV_VAR = "DIFFJAX_XLA_CPU_DEFAULTS"  # "off" keeps XLA's own defaults

# Flags diffjax adds to XLA_FLAGS, per jaxlib version on which they were measured. XLA aborts the
# process on a flag it does not know, and what helps changes between releases, so an unlisted
# jaxlib gets no flags until someone re-measures (benchmarks/xla_cpu_flags.py) and adds a row.
#
# jaxlib 0.10.2, AMD EPYC (Zen 4, AVX-512), 2 cores, interleaved runs (benchmarks/xla_cpu_flags.py;
# README "Measured" has the tables): `--xla_cpu_experimental_ynn_fusion_type=reduce` keeps YNNPACK
# for reductions only and routes convolutions and dots back to XLA's own emitters. YNNPACK's
# convolution fusions took 89% of the FID Inception pass; with reductions only it runs 1.3x
# faster (1.55x per CPU-second) at half the peak memory, a DiT-S/2 train step 1.38x faster and a
# DDPM++ train step 1.07x. Turning YNNPACK off entirely (`=`) is as good for the Inception pass
# but halves the DDPM++ train step, whose GroupNorm reductions YNNPACK does well. Results agree
# to float32 rounding (tests/test_runtime_flags.py).
XLA_CPU_DEFAULTS: dict[str, tuple[str, ...]] = {
    "0.10.2": ("--xla_cpu_experimental_ynn_fusion_type=reduce",),
}


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0].lstrip("-")


def merge_xla_flags(user_flags: str, defaults: tuple[str, ...]) -> str:
    """`defaults` then the user's flags; a default the user sets (any value) is dropped."""
    user = shlex.split(user_flags or "")
    named = {_flag_name(flag) for flag in user}
    kept = [flag for flag in defaults if _flag_name(flag) not in named]
    return " ".join(kept + user)


def default_xla_flags(jaxlib_version: str | None = None) -> tuple[str, ...]:
    """The flags diffjax adds on this jaxlib (none when DIFFJAX_XLA_CPU_DEFAULTS=off)."""
    if os.environ.get(XLA_CPU_DEFAULTS_ENV_VAR, "on").lower() in ("off", "0", "false", "no"):
        return ()
    if jaxlib_version is None:
        from jaxlib import version

        jaxlib_version = version.__version__
    return XLA_CPU_DEFAULTS.get(jaxlib_version, ())


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without this private helper: assume not
        return False


def configure_xla_flags() -> str:
    """Adds diffjax's XLA:CPU defaults to XLA_FLAGS (the user's own settings win); returns it.

    Call before the first JAX computation. Afterwards XLA has read its flags already: then this
    only warns when the defaults are missing (the process runs with XLA's own defaults).
    """
    current = os.environ.get("XLA_FLAGS", "")
    merged = merge_xla_flags(current, default_xla_flags())
    if merged == current.strip() or merged == current:
        return current
    if _backends_started():
        logging.warning("JAX started before diffjax.runtime.xla.configure_xla_flags(); XLA runs "
                        "without diffjax's flags %s.", merged)
        return current
    os.environ["XLA_FLAGS"] = merged
    return merged


def skip_absent_tpu() -> bool:
    """Makes JAX's TPU backend fail at once, without loading libtpu, when libtpu is installed but
    this host has no TPU chip and the user chose no platforms (JAX_PLATFORMS); returns whether
    it did.

    JAX would try a TPU client in every process: 0.4 s, six lines of libtpu warnings about
    worker hostnames on stderr, and libtpu's lock file held for the life of the process, so a
    second JAX process on the host cannot load libtpu (to compile for a TPU topology) until the
    first ends. Compiling for a topology needs libtpu's compiler, never its client. "tpu" stays
    a known platform (modules register TPU lowerings as they import).
    """
    if os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or _backends_started():
        return False
    try:
        import dataclasses
        import importlib.util

        from jax._src import hardware_utils, xla_bridge

        registration = xla_bridge._backend_factories.get("tpu")
        if registration is None or importlib.util.find_spec("libtpu") is None:
            return False
        if hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0:
            return False
        xla_bridge._backend_factories["tpu"] = dataclasses.replace(
            registration, factory=_no_tpu_chip, fail_quietly=True)
        return True
    except (ImportError, AttributeError, TypeError):  # a JAX without these private helpers
        return False


def _no_tpu_chip():
    raise RuntimeError("this host has no TPU chip (libtpu is installed to compile for TPUs)")


def enable_compilation_cache(cache_dir: str | None = None) -> str | None:
    """Turns on the persistent cache (DIFFJAX_COMPILATION_CACHE=off disables it).

    Also applies `configure_xla_flags` and `skip_absent_tpu`: all are set once, before the first
    computation.
    """
    configure_xla_flags()
    skip_absent_tpu()
    cache_dir = cache_dir or os.environ.get("DIFFJAX_COMPILATION_CACHE", DEFAULT_CACHE_DIR)
    if cache_dir == "off":
        return None
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache_dir
