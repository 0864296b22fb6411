"""Command line: python -m diffjax.main --config=configs/digits.py --workdir=DIR [--mode=train].

Any config field can be overridden, e.g. --config.optim.lr=1e-4; configs are locked, so an
unknown key is an error, not a silently ignored setting.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from diffjax import cli_errors, modes

config_flags.DEFINE_config_file("config", None, "Config file, optionally with an argument: "
                                "configs/digits.py:test.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs, samples and reports.")
flags.DEFINE_enum("mode", "train", sorted(modes.MODES), "What to do.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host on CPU/GPU "
                    "without a cluster manager); TPU pods and SLURM are detected automatically.")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.coordinator_address:
        os.environ["DIFFJAX_COORDINATOR_ADDRESS"] = FLAGS.coordinator_address
        os.environ["DIFFJAX_NUM_PROCESSES"] = str(FLAGS.num_processes)
        os.environ["DIFFJAX_PROCESS_ID"] = str(FLAGS.process_id)
    modes.run(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == "__main__":
    cli_errors.run_main(main)
