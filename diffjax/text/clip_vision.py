"""CLIP's vision tower and the whole CLIPModel (both towers, both projections): CLIP score.

Layer for layer transformers' `CLIPVisionModel` / `CLIPModel` (the Flax paths are the file's
names: `vision_model.encoder.layers.0.mlp.fc1.weight` is
params['vision_model']['encoder']['layers_0']['mlp']['fc1']['kernel']):
- embeddings: a bias-free Conv2d patch embedding (kernel = stride = patch_size), a learned
  `class_embedding` token in front, learned position embeddings over 1 + (image/patch)^2
  tokens;
- `pre_layrnorm` (transformers' spelling), the same pre-LN encoder layers as the text tower
  (clip.CLIPEncoder) WITHOUT any mask, `post_layernorm` on the class token = pooler_output;
- `visual_projection` (no bias) -> image_embeds; the text tower is clip.CLIPTextModel with its
  `text_projection` (no bias) -> text_embeds. `logit_scale` is read and kept aside.

`preprocess` is transformers' (slow, PIL) CLIPImageProcessor for uint8 images: resize the
shortest side to `image_size` with PIL bicubic (sizes rounded as transformers'
`get_resize_output_image_size`), center crop, /255, normalise with CLIP's mean and std; grey
images are repeated to 3 channels. transformers 5's default *fast* processor resizes with
torchvision instead, which differs slightly (tests/test_clip_vision.py pins the slow one).

`CLIPScorer.score(images, captions)` is torchmetrics' CLIPScore: the mean over pairs of
100 * cos(image_embeds, text_embeds), then max(mean, 0). torchmetrics takes max(., 0) of the
average, not of each pair, and so does diffjax. Differences: captions are tokenized by
diffjax's CLIP tokenizer, which cleans text as the original CLIP (ftfy, HTML unescape) where
transformers 5's fast tokenizer does not, and a caption longer than 77 tokens keeps its end
token (torchmetrics cuts the ids at 77, dropping it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.storage import torch_layout
from diffjax.storage import model_folders as folders
from diffjax.text import layers
from diffjax.text.clip import CLIPEncoder, CLIPTextConfig, CLIPTextModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HOW_TO_GET = ("a transformers CLIPModel folder (config.json with text_config and vision_config, "
              "model.safetensors, vocab.json, merges.txt), e.g. huggingface-cli download "
              "openai/clip-vit-large-patch14 --local-dir DIR on a machine with internet")


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """The sizes of a CLIP vision tower (transformers' CLIPVisionConfig defaults)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_json(cls, config: Mapping[str, Any], source: str = "config.json"
                  ) -> "CLIPVisionConfig":
        vision = dict(config.get("vision_config") or config)
        if "projection_dim" in config:
            vision["projection_dim"] = config["projection_dim"]
        fields = {f.name for f in dataclasses.fields(cls)}
        made = cls(**{k: v for k, v in vision.items() if k in fields and v is not None})
        layers.activation(made.hidden_act, source)
        if made.hidden_size % made.num_attention_heads or made.image_size % made.patch_size:
            raise ValueError(f"{source}: vision hidden_size {made.hidden_size} / heads "
                             f"{made.num_attention_heads} or image_size {made.image_size} / "
                             f"patch_size {made.patch_size} do not divide.")
        return made


class CLIPVisionEmbeddings(nn.Module):
    config: CLIPVisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        c = self.config
        p = c.patch_size
        patches = nn.Conv(c.hidden_size, (p, p), strides=(p, p), padding="VALID",
                          use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                          kernel_init=nn.with_logical_partitioning(
                              nn.initializers.normal(0.02), (None, None, None, "embed")),
                          name="patch_embedding")(pixels.astype(self.dtype))
        batch = patches.shape[0]
        patches = patches.reshape(batch, -1, c.hidden_size)
        cls = self.param("class_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("embed",)), (c.hidden_size,), jnp.float32)
        tokens = jnp.concatenate(
            [jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, c.hidden_size)), patches], 1)
        positions = layers.embedding(tokens.shape[1], c.hidden_size, ("length", "embed"),
                                     self.dtype, "position_embedding")(
            jnp.arange(tokens.shape[1]))
        return tokens + positions[None]


class CLIPVisionTransformer(nn.Module):
    """pixels [B, H, W, 3] (CLIP-normalised) -> (last_hidden_state, pooler_output)."""
    config: CLIPVisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = self.config
        x = CLIPVisionEmbeddings(c, self.dtype, name="embeddings")(pixels)
        x = layers.layer_norm(c.layer_norm_eps, self.dtype, "pre_layrnorm")(x)
        last = CLIPEncoder(c, self.dtype, causal=False, name="encoder")(x, None)[-1]
        pooled = layers.layer_norm(c.layer_norm_eps, self.dtype, "post_layernorm")(last[:, 0])
        out = layers.output_dtype(self.dtype)
        return last.astype(out), pooled.astype(out)


class CLIPModel(nn.Module):
    """transformers' CLIPModel without logit_scale: `image_embeds(pixels)` and
    `text_embeds(input_ids, attention_mask)`, both projected, not normalised."""
    text_config: CLIPTextConfig
    vision_config: CLIPVisionConfig
    dtype: Any = jnp.float32

    def setup(self):
        self.text_model = CLIPTextModel(self.text_config, with_projection=False,
                                        dtype=self.dtype)
        self.vision_model = CLIPVisionTransformer(self.vision_config, self.dtype)
        dim = self.vision_config.projection_dim
        self.visual_projection = layers.dense(dim, ("embed", None), self.dtype,
                                              "visual_projection", use_bias=False)
        self.text_projection = layers.dense(dim, ("embed", None), self.dtype,
                                            "text_projection", use_bias=False)

    def image_embeds(self, pixels: jax.Array) -> jax.Array:
        return self.visual_projection(self.vision_model(pixels)[1])

    def text_embeds(self, input_ids: jax.Array, attention_mask: jax.Array | None = None
                    ) -> jax.Array:
        return self.text_projection(self.text_model(input_ids, attention_mask).pooler_output)

    def __call__(self, pixels: jax.Array, input_ids: jax.Array,
                 attention_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        return self.image_embeds(pixels), self.text_embeds(input_ids, attention_mask)


def abstract_params(module: CLIPModel) -> Any:
    v = module.vision_config
    pixels = jax.ShapeDtypeStruct((1, v.image_size, v.image_size, v.num_channels), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return nn.unbox(jax.eval_shape(module.init, jax.random.key(0), pixels, ids)["params"])


def _file_name(path: tuple[str, ...]) -> str:
    # Every CLIPModel tensor is named by its module path, `text_model.`/`vision_model.` included.
    return torch_layout.torch_name(path)


def read_clip_model(folder: str, dtype: Any = None) -> tuple[CLIPModel, dict, float]:
    """(module, numpy float32 params, logit_scale) of a transformers CLIPModel folder."""
    folder = folders.resolve_folder(folder, "", folders.CONFIG_FILE, "CLIPModel", HOW_TO_GET)
    config_path = folders.join_config(folder)
    config = folders.read_json(config_path, HOW_TO_GET)
    if not isinstance(config.get("vision_config"), dict) or \
            not isinstance(config.get("text_config"), dict):
        raise ValueError(f"{config_path} is not a CLIPModel config (no text_config and "
                         f"vision_config); pass {HOW_TO_GET}.")
    module = CLIPModel(CLIPTextConfig.from_json(config, config_path),
                       CLIPVisionConfig.from_json(config, config_path), dtype or jnp.float32)
    tensors, source = folders.read_weights(folder, HOW_TO_GET)
    scale = float(np.asarray(tensors.pop("logit_scale", np.log(1 / 0.07))))
    params = folders.convert(tensors, abstract_params(module), source, HOW_TO_GET, _file_name)
    return module, params, scale


def _resized_size(height: int, width: int, shortest: int) -> tuple[int, int]:
    """transformers' get_resize_output_image_size(default_to_square=False): the short side
    becomes `shortest`, the long one int(shortest * long / short)."""
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = shortest, int(shortest * long / short)
    return (new_short, new_long) if height <= width else (new_long, new_short)


def preprocess(images: np.ndarray, size: int, crop: int | None = None) -> np.ndarray:
    """uint8 [N, H, W, C] (C = 1 or 3) -> float32 [N, crop, crop, 3], CLIPImageProcessor's."""
    from PIL import Image

    crop = crop or size
    out = np.zeros((len(images), crop, crop, 3), np.float32)
    for i, image in enumerate(np.asarray(images)):
        if image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        height, width = _resized_size(image.shape[0], image.shape[1], size)
        resized = np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
        top, left = (height - crop) // 2, (width - crop) // 2
        out[i] = resized[top:top + crop, left:left + crop] / 255.0
    return ((out - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
            ).astype(np.float32)


class CLIPScorer:
    """torchmetrics' CLIPScore with a CLIPModel folder, in Flax."""

    def __init__(self, folder: str, batch_size: int = 32):
        from diffjax.text.clip_tokenizer import CLIPTokenizer

        self.module, self.params, self.logit_scale = read_clip_model(folder)
        self.tokenizer = CLIPTokenizer(folder, "tokenizer")
        self.batch_size = int(batch_size)
        module = self.module
        self._images = jax.jit(lambda p, x: module.apply({"params": p}, x,
                                                         method=CLIPModel.image_embeds))
        self._texts = jax.jit(lambda p, ids, mask: module.apply(
            {"params": p}, ids, mask, method=CLIPModel.text_embeds))

    def pair_scores(self, images: np.ndarray, captions: Sequence[str]) -> np.ndarray:
        """100 * cos(image, caption) per pair, float64."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions.")
        size = self.module.vision_config.image_size
        scores = []
        for begin in range(0, len(images), self.batch_size):
            chunk = slice(begin, begin + self.batch_size)
            x = preprocess(images[chunk], size)
            n = len(x)
            pad = self.batch_size - n  # one compiled shape
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            tokens = self.tokenizer(list(captions[chunk]) + [""] * pad)
            image = np.asarray(self._images(self.params, x), np.float64)[:n]
            text = np.asarray(self._texts(self.params, tokens.input_ids,
                                          tokens.attention_mask), np.float64)[:n]
            image /= np.linalg.norm(image, axis=-1, keepdims=True)
            text /= np.linalg.norm(text, axis=-1, keepdims=True)
            scores.append(100.0 * (image * text).sum(-1))
        return np.concatenate(scores)

    def score(self, images: np.ndarray, captions: Sequence[str]) -> float:
        """torchmetrics' CLIPScore: max(mean(100 cos), 0)."""
        return float(max(self.pair_scores(images, captions).mean(), 0.0))
