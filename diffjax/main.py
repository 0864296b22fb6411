"""diffjax: train, sample and evaluate score-based diffusion models.

Usage:
  python -m diffjax.main --config=CONFIG_FILE[:ARG] --workdir=DIR [--mode=MODE] [--config.a.b=V ...]

Modes:
  train           train, or resume from the newest checkpoint in DIR (default)
  sample          images of a checkpoint: a PNG grid, an .npz, optionally one PNG per image
  eval            FID/KID of checkpoints (resumable; sweeps over sampler settings)
  fid_stats       reference Inception statistics of eval.reference_split
  likelihood      bits/dim of eval.likelihood_split through the probability-flow ODE
  compile         compile the train step (or sampler) for a TPU topology on this host
                  (--config.compile.topology=v5p-256): memory per chip, FLOPs, collectives

Any config field can be overridden, e.g. --config.optim.lr=1e-4. Configs are locked: an unknown
key, a wrong type or an invalid value ends with one line that names it. Examples:
  python -m diffjax.main --config=configs/digits.py --workdir=workdirs/digits
  python -m diffjax.main --config=configs/digits.py --workdir=workdirs/digits --mode=eval
"""

import os

# Before TensorFlow (imported by the data pipeline) loads: its C++ start-up banners (oneDNN, absl
# preamble) are noise in a training log. TensorFlow only reads data and writes summaries here, so
# its oneDNN kernels (the source of one banner) do nothing for diffjax.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from diffjax.runtime import preemption  # noqa: E402  (imports nothing heavy)

# Covers start-up: a SIGTERM that arrives while libraries import or the step compiles is
# remembered, and training stops cleanly at its first chance instead of dying with -15.
preemption.install()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffjax import modes  # noqa: E402
from diffjax.config import unknown_config_key  # noqa: E402
from diffjax.runtime import cli  # noqa: E402


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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.coordinator_address:
        os.environ["DIFFJAX_COORDINATOR_ADDRESS"] = FLAGS.coordinator_address
        os.environ["DIFFJAX_NUM_PROCESSES"] = str(FLAGS.num_processes)
        os.environ["DIFFJAX_PROCESS_ID"] = str(FLAGS.process_id)
    modes.run(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == "__main__":
    cli.run_main(main, unknown_config_key)
