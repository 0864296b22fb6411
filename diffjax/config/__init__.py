"""Configs: the one schema, the presets config files start from, loading and the key checks.

    config = diffjax.config.load("configs/digits.py:test", {"training.num_train_steps": 20})

Files: schema.py (`base_config()`: every key, its type and default), presets.py (shared starting
points such as score_sde's CIFAR-10 settings), loading.py (`load`, the CLI's parser from Python;
`load_recorded`, a run's own config; `unknown_config_key`), recorded.py (a run's config.json read
back over the schema), checks.py (ranges and syntax a config fails on its own; `ConfigError`).
Imports: parallel (the default sharding rules), storage (a run's config.json), runtime; nothing
that builds models or reads data.
"""

from diffjax.config.checks import ConfigError, check_ranges
from diffjax.config.loading import load, load_recorded, unknown_config_key
from diffjax.config.schema import base_config

__all__ = ["ConfigError", "base_config", "check_ranges", "load", "load_recorded",
           "unknown_config_key"]
