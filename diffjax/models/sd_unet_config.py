"""The architecture a diffusers `UNet2DConditionModel` config.json describes, resolved per block.

`UNetConfig.from_diffusers(config.json dict)` reads every key the way diffusers 0.42's
`UNet2DConditionModel.__init__` does and spells the result out per block (heads, transformer
depth per layer, cross-attention flags, resnets per block), so the Flax network
(`diffjax.models.sd_unet`) never re-derives diffusers' conventions. `to_diffusers()` writes the
config.json back for an exported folder.

diffusers' naming quirk, reproduced: for these blocks `attention_head_dim` is the NUMBER of heads
(each head is `channels // heads` wide), and a config that sets `num_attention_heads` is refused,
as diffusers refuses it. Keys that only affect block types diffjax does not build
(`resnet_skip_time_act`, `resnet_out_scale_factor`, `cross_attention_norm`,
`mid_block_only_cross_attention`, `addition_embed_type_num_heads`) change nothing here either,
exactly as in diffusers. Keys that select something diffjax does not implement (class
embeddings, encoder_hid_dim projections, other block or embedding types, GLIGEN, LCM's
`time_cond_proj_dim`, ...) are one-line ValueErrors naming the key. Unknown keys are ignored, as
diffusers ignores them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

DOWN_BLOCKS = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}  # name -> has attention
UP_BLOCKS = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
MID_BLOCKS = ("UNetMidBlock2DCrossAttn", None)
ACTIVATION_NAMES = ("silu", "swish", "mish", "gelu", "relu")

# Keys whose only supported value is diffusers' default: (key, default, what diffjax lacks).
_DEFAULT_ONLY = (
    ("class_embed_type", None, "class embeddings"),
    ("num_class_embeds", None, "class embeddings"),
    ("class_embeddings_concat", False, "class embeddings"),
    ("encoder_hid_dim", None, "an encoder_hid_proj"),
    ("encoder_hid_dim_type", None, "an encoder_hid_proj"),
    ("dual_cross_attention", False, "DualTransformer2DModel"),
    ("attention_type", "default", "GLIGEN's gated attention"),
    ("resnet_time_scale_shift", "default", "scale-shift time conditioning"),
    ("time_embedding_type", "positional", "Fourier time features"),
    ("time_cond_proj_dim", None, "a timestep_cond projection (LCM)"),
    ("num_attention_heads", None, "it: diffusers refuses it too (attention_head_dim is the "
                                  "head count)"),
)


def _per_block(value: Any, count: int, key: str, source: str) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{source}: {key}={list(value)} has {len(value)} entries but there "
                             f"are {count} down blocks; give one per block.")
        return tuple(value)
    return (value,) * count


def _depths(value: Any, layers: int) -> tuple[int, ...]:
    """Transformer depth of each attention layer of a block (an int or a per-layer list)."""
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value[:layers])
    return (int(value),) * layers


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Per-block architecture of a UNet2DConditionModel (up-block entries in up-block order)."""

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_attention: tuple[bool, ...] = (True, True, True, False)
    up_attention: tuple[bool, ...] = (False, True, True, True)
    layers_per_block: tuple[int, ...] = (2, 2, 2, 2)  # resnets per down block
    heads: tuple[int, ...] = (8, 8, 8, 8)  # per down block
    down_depths: tuple[tuple[int, ...], ...] = ((1, 1),) * 4  # transformer layers per attention
    up_depths: tuple[tuple[int, ...], ...] = ((1, 1, 1),) * 4
    mid_depth: int = 1
    mid_block: bool = True
    only_cross_attention: tuple[bool, ...] = (False,) * 4  # per down block
    in_channels: int = 4
    out_channels: int = 4
    cross_attention_dim: int = 1280
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    act_fn: str = "silu"
    use_linear_projection: bool = False
    upcast_attention: bool = False
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    time_embedding_dim: int = 1280
    time_embedding_act_fn: str | None = None
    timestep_post_act: str | None = None
    addition_embed_type: str | None = None  # None or "text_time" (SDXL)
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    dropout: float = 0.0
    sample_size: Any = None  # kept for the exported config.json only

    @property
    def num_blocks(self) -> int:
        return len(self.block_out_channels)

    @property
    def up_heads(self) -> tuple[int, ...]:
        return tuple(reversed(self.heads))

    @property
    def up_only_cross_attention(self) -> tuple[bool, ...]:
        return tuple(reversed(self.only_cross_attention))

    @property
    def num_skips(self) -> int:
        """Skip connections the down path hands the up path (conv_in's output included)."""
        return 1 + sum(self.layers_per_block) + self.num_blocks - 1

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any], source: str = "config.json"
                       ) -> "UNetConfig":
        get = config.get
        name = get("_class_name", "UNet2DConditionModel")
        if name != "UNet2DConditionModel":
            raise ValueError(f"{source} describes a {name!r}, not a 'UNet2DConditionModel'; "
                             f"diffjax's SD U-Net loads UNet2DConditionModel folders only.")
        for key, default, lacks in _DEFAULT_ONLY:
            if get(key, default) != default:
                raise ValueError(f"{source}: {key}={get(key)!r} is not supported (diffjax's "
                                 f"UNet2DConditionModel has no {lacks}); only {default!r} is.")
        down = tuple(get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)))
        up = tuple(get("up_block_types", ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3))
        # diffusers drops a "UNetRes" prefix from block names.
        down = tuple(t[7:] if t.startswith("UNetRes") else t for t in down)
        up = tuple(t[7:] if t.startswith("UNetRes") else t for t in up)
        for key, types, known in (("down_block_types", down, DOWN_BLOCKS),
                                  ("up_block_types", up, UP_BLOCKS)):
            for t in types:
                if t not in known:
                    raise ValueError(f"{source}: {key} contains {t!r}, which diffjax does not "
                                     f"implement; supported: {sorted(known)}.")
        mid = get("mid_block_type", "UNetMidBlock2DCrossAttn")
        if mid not in MID_BLOCKS:
            raise ValueError(f"{source}: mid_block_type={mid!r} is not supported; diffjax "
                             f"builds 'UNetMidBlock2DCrossAttn' or none (null).")
        channels = tuple(int(c) for c in get("block_out_channels", (320, 640, 1280, 1280)))
        n = len(channels)
        if len(down) != n or len(up) != n:
            raise ValueError(f"{source}: down_block_types ({len(down)}), up_block_types "
                             f"({len(up)}) and block_out_channels ({n}) must have one entry per "
                             f"block each.")
        groups = get("norm_num_groups", 32)
        if groups is None:
            raise ValueError(f"{source}: norm_num_groups=None (no output norm) is not "
                             f"supported; diffjax's U-Net blocks need GroupNorm groups.")
        for c in channels:
            if c % int(groups):
                raise ValueError(f"{source}: block_out_channels={list(channels)} has {c} "
                                 f"channels, not divisible by norm_num_groups={groups}.")
        for key in ("act_fn", "time_embedding_act_fn", "timestep_post_act"):
            value = get(key, "silu" if key == "act_fn" else None)
            if value is not None and str(value).lower() not in ACTIVATION_NAMES:
                raise ValueError(f"{source}: {key}={value!r} is not an activation diffusers "
                                 f"knows; choose one of {list(ACTIVATION_NAMES)}.")
        addition = get("addition_embed_type", None)
        if addition not in (None, "text_time"):
            raise ValueError(f"{source}: addition_embed_type={addition!r} is not supported; "
                             f"diffjax implements None and 'text_time' (SDXL).")
        if addition == "text_time" and (get("addition_time_embed_dim") is None or
                                        get("projection_class_embeddings_input_dim") is None):
            raise ValueError(f"{source}: addition_embed_type='text_time' needs "
                             f"addition_time_embed_dim and projection_class_embeddings_input_dim.")

        layers = tuple(int(v) for v in _per_block(get("layers_per_block", 2), n,
                                                  "layers_per_block", source))
        heads = tuple(int(v) for v in _per_block(get("attention_head_dim", 8), n,
                                                 "attention_head_dim", source))
        cross = _per_block(get("cross_attention_dim", 1280), n, "cross_attention_dim", source)
        if len(set(cross)) != 1:
            raise ValueError(f"{source}: cross_attention_dim={list(cross)} differs between "
                             f"blocks; one encoder_hidden_states cannot feed them all, and "
                             f"diffjax supports a single value.")
        only_cross = tuple(bool(v) for v in _per_block(get("only_cross_attention", False), n,
                                                       "only_cross_attention", source))
        depth = get("transformer_layers_per_block", 1)
        reverse = get("reverse_transformer_layers_per_block", None)
        nested = isinstance(depth, (list, tuple)) and any(
            isinstance(d, (list, tuple)) for d in depth)
        if nested and reverse is None:
            raise ValueError(f"{source}: transformer_layers_per_block={depth} gives per-layer "
                             f"depths, which needs reverse_transformer_layers_per_block (as "
                             f"diffusers requires).")
        depth = _per_block(depth, n, "transformer_layers_per_block", source)
        up_depth = tuple(reversed(depth)) if reverse is None else tuple(reverse)
        base = int(channels[0])
        return cls(
            block_out_channels=channels,
            down_attention=tuple(DOWN_BLOCKS[t] for t in down),
            up_attention=tuple(UP_BLOCKS[t] for t in up),
            layers_per_block=layers, heads=heads,
            down_depths=tuple(_depths(d, k) for d, k in zip(depth, layers)),
            up_depths=tuple(_depths(d, k + 1) for d, k in zip(up_depth, reversed(layers))),
            mid_depth=_depths(depth[-1], 1)[0],
            mid_block=mid is not None,
            only_cross_attention=only_cross,
            in_channels=int(get("in_channels", 4)), out_channels=int(get("out_channels", 4)),
            cross_attention_dim=int(cross[0]),
            norm_num_groups=int(groups), norm_eps=float(get("norm_eps", 1e-5)),
            act_fn=str(get("act_fn", "silu")).lower(),
            use_linear_projection=bool(get("use_linear_projection", False)),
            upcast_attention=bool(get("upcast_attention", False)),
            center_input_sample=bool(get("center_input_sample", False)),
            flip_sin_to_cos=bool(get("flip_sin_to_cos", True)),
            freq_shift=get("freq_shift", 0),
            time_embedding_dim=int(get("time_embedding_dim", None) or 4 * base),
            time_embedding_act_fn=_lower(get("time_embedding_act_fn", None)),
            timestep_post_act=_lower(get("timestep_post_act", None)),
            addition_embed_type=addition,
            addition_time_embed_dim=_int_or_none(get("addition_time_embed_dim", None)),
            projection_class_embeddings_input_dim=_int_or_none(
                get("projection_class_embeddings_input_dim", None)),
            conv_in_kernel=int(get("conv_in_kernel", 3)),
            conv_out_kernel=int(get("conv_out_kernel", 3)),
            downsample_padding=int(get("downsample_padding", 1)),
            mid_block_scale_factor=float(get("mid_block_scale_factor", 1.0)),
            dropout=float(get("dropout", 0.0)),
            sample_size=_frozen(get("sample_size", None)),
        )

    def to_diffusers(self) -> dict[str, Any]:
        """config.json of this architecture for `UNet2DConditionModel.from_pretrained`."""
        down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.down_attention]
        up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in self.up_attention]
        uniform = lambda values: values[0] if len(set(values)) == 1 else list(values)  # noqa: E731
        down_depths = [list(d) if len(set(d)) > 1 else (d[0] if d else 1)
                       for d in self.down_depths]
        up_default = list(reversed(down_depths))
        up_depths = [list(d) if len(set(d)) > 1 else (d[0] if d else 1) for d in self.up_depths]
        nested = any(isinstance(d, list) for d in down_depths + up_depths)
        return {
            "_class_name": "UNet2DConditionModel",
            **{key: default for key, default, _ in _DEFAULT_ONLY},
            "act_fn": self.act_fn,
            "addition_embed_type": self.addition_embed_type,
            "addition_time_embed_dim": self.addition_time_embed_dim,
            "attention_head_dim": uniform(self.heads),
            "block_out_channels": list(self.block_out_channels),
            "center_input_sample": self.center_input_sample,
            "conv_in_kernel": self.conv_in_kernel,
            "conv_out_kernel": self.conv_out_kernel,
            "cross_attention_dim": self.cross_attention_dim,
            "down_block_types": down,
            "downsample_padding": self.downsample_padding,
            "dropout": self.dropout,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift,
            "in_channels": self.in_channels,
            "layers_per_block": uniform(self.layers_per_block),
            "mid_block_scale_factor": self.mid_block_scale_factor,
            "mid_block_type": "UNetMidBlock2DCrossAttn" if self.mid_block else None,
            "norm_eps": self.norm_eps,
            "norm_num_groups": self.norm_num_groups,
            "only_cross_attention": uniform(self.only_cross_attention),
            "out_channels": self.out_channels,
            "projection_class_embeddings_input_dim": self.projection_class_embeddings_input_dim,
            "reverse_transformer_layers_per_block": (
                up_depths if nested or up_depths != up_default else None),
            "sample_size": list(self.sample_size) if isinstance(self.sample_size, tuple)
            else self.sample_size,
            "time_embedding_act_fn": self.time_embedding_act_fn,
            "time_embedding_dim": (None if self.time_embedding_dim == 4 * self.block_out_channels[0]
                                   else self.time_embedding_dim),
            "timestep_post_act": self.timestep_post_act,
            "transformer_layers_per_block": (down_depths if nested or len(set(
                map(str, down_depths))) > 1 else down_depths[0]),
            "up_block_types": up,
            "upcast_attention": self.upcast_attention,
            "use_linear_projection": self.use_linear_projection,
        }


def _lower(value):
    return None if value is None else str(value).lower()


def _int_or_none(value):
    return None if value is None else int(value)


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value
