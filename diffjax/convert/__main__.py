"""python -m diffjax.convert --source=NAME --checkpoint=FILE --config=CFG[:ARG] --workdir=DIR.

Takes the same --config and --config.a.b=v overrides as diffjax.main.
"""

import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

from diffjax.config import unknown_config_key
from diffjax.convert import SOURCES, convert
from diffjax.runtime import cli, logs


def define_flags(flag_values: flags.FlagValues) -> flags.FlagValues:
    """The converter's flags on `flag_values` (tests parse documented commands with it)."""
    config_flags.DEFINE_config_file("config", None, "Config file of the network the checkpoint "
                                    "holds, optionally with an argument: configs/x.py:deep.",
                                    lock_config=True, flag_values=flag_values)
    flags.DEFINE_enum("source", None, sorted(SOURCES), "Where the checkpoint comes from.",
                      flag_values=flag_values)
    flags.DEFINE_string("checkpoint", None, "The published checkpoint file (.pth, .pt or .pkl).",
                        flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "Folder to write checkpoints/<step>/ into (empty).",
                        flag_values=flag_values)
    flags.DEFINE_integer("step", None, "Step to record; default: the checkpoint's (score_sde) "
                         "or 0.", flag_values=flag_values)
    flags.mark_flags_as_required(["config", "source", "checkpoint", "workdir"],
                                 flag_values=flag_values)
    return flag_values


FLAGS = define_flags(flags.FLAGS)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logs.quiet_library_logs()
    path = convert(FLAGS.source, FLAGS.checkpoint, FLAGS.config, FLAGS.workdir, FLAGS.step)
    config_args = " ".join(shlex.quote(a) for a in sys.argv[1:] if a.startswith("--config"))
    then = ("Guide a diffusion run in that workdir: python -m diffjax.main {} --workdir={} "
            "--mode=sample --config.sampling.classifier_scale=1 --config.sampling.labels=0"
            if SOURCES[FLAGS.source].task == "classifier" else
            "Evaluate: python -m diffjax.main {} --workdir={} --mode=eval")
    print(f"Converted {FLAGS.source} checkpoint {FLAGS.checkpoint} to {path}\n"
          + then.format(config_args, FLAGS.workdir))


if __name__ == "__main__":
    cli.run_main(main, unknown_config_key)
