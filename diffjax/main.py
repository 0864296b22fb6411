"""diffjax: train, sample and evaluate score-based diffusion models.

Usage:
  python -m diffjax.main --config=CONFIG_FILE[:ARG] --workdir=DIR [--mode=MODE] [--config.a.b=V ...]

Modes:
{modes}

Any config field can be overridden, e.g. --config.optim.lr=1e-4. Configs are locked: an unknown
key, a wrong type or an invalid value ends with one line that names it. Without --config, the
modes that read a trained run ({reads_a_run}) take its DIR/config.json; overrides apply.
Examples:
  python -m diffjax.main --config=configs/digits.py --workdir=workdirs/digits
  python -m diffjax.main --config=configs/digits.py --workdir=workdirs/digits --mode=eval
  python -m diffjax.main --workdir=workdirs/digits --mode=sample --config.sampling.num_steps=50
"""

import os
import re
import sys

# Before TensorFlow (imported by the data pipeline) loads: its C++ start-up banners (oneDNN, absl
# preamble) are noise in a training log. TensorFlow only reads data and writes summaries here, so
# its oneDNN kernels (the source of one banner) do nothing for diffjax.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from diffjax.runtime import preemption  # noqa: E402  (imports nothing heavy)

# Covers start-up: a SIGTERM that arrives while libraries import or the step compiles is
# remembered, and training stops cleanly at its first chance instead of dying with -15.
preemption.install()

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffjax import modes  # noqa: E402
from diffjax.config import recorded, unknown_config_key  # noqa: E402
from diffjax.runtime import cli  # noqa: E402
from diffjax.storage import filesystem as fs  # noqa: E402

# The mode list comes from the registry, so --help names every mode.
__doc__ = __doc__.format(modes=modes.summaries(), reads_a_run=", ".join(modes.READS_A_RUN))


def define_flags(flag_values: flags.FlagValues) -> flags.FlagValues:
    """The command line's flags on `flag_values` (tests parse documented commands with it)."""
    config_flags.DEFINE_config_file("config", None, "Config file, optionally with an argument: "
                                    "configs/digits.py:test.", lock_config=True,
                                    flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "Folder (or gs:// URL) for checkpoints, logs, samples "
                        "and reports.", flag_values=flag_values)
    flags.DEFINE_enum("mode", "train", sorted(modes.MODES), "What to do.",
                      flag_values=flag_values)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host on "
                        "CPU/GPU without a cluster manager); TPU pods and SLURM are detected "
                        "automatically.", flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "Number of processes (with "
                         "--coordinator_address).", flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "This process's index (with "
                         "--coordinator_address).", flag_values=flag_values)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)
    return flag_values


FLAGS = define_flags(flags.FLAGS)


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value of --name=V or --name V in `argv` (the last one wins, as in absl)."""
    value = None
    for index, arg in enumerate(argv):
        match = re.fullmatch(rf"--?{name}(=(.*))?", arg)
        if match and match.group(1) is not None:
            value = match.group(2)
        elif match and index + 1 < len(argv):
            value = argv[index + 1]
    return value


def with_recorded_config(argv: list[str]) -> list[str]:
    """`argv`, plus --config=<the run's config.json> when a mode that reads a trained run gets a
    --workdir and no --config (ml_collections then parses the --config.a.b=V overrides)."""
    if any(arg in cli.HELP_FLAGS for arg in argv) or \
            any(re.match(r"--?config(=|$)", arg) for arg in argv):
        return argv
    mode, workdir = _flag_value(argv, "mode") or "train", _flag_value(argv, "workdir")
    if mode not in modes.READS_A_RUN or not workdir:
        return argv
    if not fs.exists(recorded.record_path(workdir)):
        cli.usage_error(f"--mode={mode} without --config reads the run's own config, but "
                        f"{recorded.record_path(workdir)} does not exist; pass --config=FILE"
                        f"[:ARG] or the --workdir of a training run.")
    return [argv[0], f"--config={recorded.__file__}:{workdir}", *argv[1:]]


def main(argv):
    if len(argv) > 1:
        cli.usage_error(f"unexpected argument(s) {' '.join(argv[1:])}: flags take the form "
                        f"--name=value (see --help).")
    if FLAGS.coordinator_address:
        os.environ["DIFFJAX_COORDINATOR_ADDRESS"] = FLAGS.coordinator_address
        os.environ["DIFFJAX_NUM_PROCESSES"] = str(FLAGS.num_processes)
        os.environ["DIFFJAX_PROCESS_ID"] = str(FLAGS.process_id)
    modes.run(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == "__main__":
    sys.argv = with_recorded_config(sys.argv)
    cli.run_main(main, unknown_config_key)
