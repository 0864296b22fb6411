"""python -m diffjax.convert --source=NAME --checkpoint=FILE --config=CFG[:ARG] --workdir=DIR.

Takes the same --config and --config.a.b=v overrides as diffjax.main.
"""

import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

from diffjax import cli_errors, runtime
from diffjax.convert import SOURCES, convert

config_flags.DEFINE_config_file("config", None, "Config file of the network the checkpoint "
                                "holds, optionally with an argument: configs/x.py:deep.",
                                lock_config=True)
flags.DEFINE_enum("source", None, sorted(SOURCES), "Where the checkpoint comes from.")
flags.DEFINE_string("checkpoint", None, "The published checkpoint file (.pth, .pt or .pkl).")
flags.DEFINE_string("workdir", None, "Folder to write checkpoints/<step>/ into (empty).")
flags.DEFINE_integer("step", None, "Step to record; default: the checkpoint's (score_sde) or 0.")
flags.mark_flags_as_required(["config", "source", "checkpoint", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    runtime.quiet_library_logs()
    path = convert(FLAGS.source, FLAGS.checkpoint, FLAGS.config, FLAGS.workdir, FLAGS.step)
    config_args = " ".join(shlex.quote(a) for a in sys.argv[1:] if a.startswith("--config"))
    print(f"Converted {FLAGS.source} checkpoint {FLAGS.checkpoint} to {path}\n"
          f"Evaluate: python -m diffjax.main {config_args} --workdir={FLAGS.workdir} --mode=eval")


if __name__ == "__main__":
    cli_errors.run_main(main)
