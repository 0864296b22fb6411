"""NVlabs/edm network pickles (*.pkl) -> diffjax NCSNpp parameters, without running EDM's code.

An EDM snapshot is `pickle.dump(dict(ema=<VPPrecond|VEPrecond|EDMPrecond>, ...))`, the
preconditioner holding the network as `.model`, every class pickled with its source code
(`torch_utils.persistence`). diffjax reads the state with `diffjax.storage.torch_files`, never imports or
executes that code, and converts the EMA network (`ema`; for a bare pickled preconditioner, that).

Supported: `SongUNet`, EDM's reimplementation of score_sde's DDPM++ (`--arch=ddpmpp`: positional
embedding, [1, 1] resampling = fir=False) and NCSN++ (`--arch=ncsnpp`: Fourier embedding, input
pyramid 'residual', FIR [1, 3, 3, 1]) with encoder_type 'standard'/'residual' and decoder_type
'standard' -- the EDM and "baseline" CIFAR-10, FFHQ and AFHQv2 pickles. The function is then
diffjax's NCSNpp exactly (tests/test_convert.py): EDM's sin/cos swap after a positional embedding
with endpoint=True is score_sde's embedding; its blocks hold the attention that score_sde keeps
in separate blocks (the qkv 1x1 conv interleaves q, k, v per channel); its class labels enter as
one-hot vectors times sqrt(label_dim) through a Linear added to the noise features, which is a
table of W * sqrt(label_dim) + b per class with the bias alone as the null class
(`model.unet.label_embedding=noise_features`). `map_augment` (augmentation labels, zero at
sampling) becomes the `augment_embedding` layer of `model.unet.augment_dim` (EDM: 9), so the
converted network has EDM's exact parameter count. Not supported: `DhariwalUNet` (ADM, ImageNet-64) and the 'skip'
encoder/decoder, which no released EDM network uses.

The preconditioning (VP: c_noise = 999 t as diffjax's VP; VE: c_noise = log(sigma / 2) for data
in [-1, 1], i.e. score_sde's log sigma for [0, 1] data; EDM: c_noise = log(sigma) / 4 and the
c_skip/c_out/c_in scalings) is the config's process and parameterisation, not the network's.
"""

from __future__ import annotations

import collections
import math

import numpy as np

from diffjax.convert.mapping import (CheckpointMismatch, Rule, apply_rules, conv_kernel,
                                     dense_kernel, one_to_one, same)
from diffjax.convert.target import Target
from diffjax.models.fir import setup_kernel
from diffjax.storage.torch_files import PersistentObject, PickledObject

PRECONDITIONERS = ("VPPrecond", "VEPrecond", "EDMPrecond", "iDDPMPrecond")


def _class_name(obj) -> str:
    if isinstance(obj, PersistentObject):
        return obj.class_name
    return getattr(obj, "pickled_global", type(obj).__name__)


def read(checkpoint):
    from diffjax.storage.torch_files import load_plain_pickle

    data = load_plain_pickle(checkpoint)
    net = data.get("ema") if isinstance(data, dict) else data
    if not isinstance(net, (PersistentObject, PickledObject)) or not isinstance(net.state, dict):
        raise ValueError("not an EDM network pickle (no 'ema' network); check --source.")
    return net


def _network(net) -> tuple[str, object, dict]:
    """(preconditioner name, SongUNet object, its constructor arguments)."""
    precond = _class_name(net)
    model = net.state.get("_modules", {}).get("model") if precond in PRECONDITIONERS else net
    name = _class_name(model)
    if name == "DhariwalUNet":
        raise CheckpointMismatch("EDM's DhariwalUNet (ADM, the ImageNet-64 networks) is not "
                                 "supported: diffjax has no ADM network; only SongUNet "
                                 "(DDPM++/NCSN++) pickles convert.")
    if name != "SongUNet":
        raise CheckpointMismatch(f"the pickle holds {name!r}, not EDM's SongUNet; check --source.")
    return precond, model, dict(model.state.get("_init_kwargs") or {})


def _check_architecture(kwargs: dict, config) -> None:
    unet = config.model.unet
    sizes = (("img_resolution", "data.image_size", config.data.image_size),
             ("in_channels", "data.num_channels", config.data.num_channels),
             ("model_channels", "model.unet.nf", unet.nf),
             ("channel_mult", "model.unet.ch_mult", tuple(unet.ch_mult)),
             ("num_blocks", "model.unet.num_res_blocks", unet.num_res_blocks),
             ("attn_resolutions", "model.unet.attn_resolutions", tuple(unet.attn_resolutions)))
    for key, config_key, value in sizes:
        if key in kwargs:
            theirs = tuple(kwargs[key]) if isinstance(kwargs[key], (list, tuple)) else kwargs[key]
            if theirs != value:
                shown = f"'{theirs}'" if isinstance(theirs, tuple) else theirs
                raise CheckpointMismatch(f"the pickle's SongUNet has {key}={kwargs[key]}; set "
                                         f"--config.{config_key}={shown}.")
    label_dim = int(kwargs.get("label_dim", 0) or 0)
    classes = config.data.num_classes if config.model.conditional else 0
    if label_dim != classes:
        fix = (f"--config.model.conditional=True --config.data.num_classes={label_dim}"
               if label_dim else "--config.model.conditional=False")
        raise CheckpointMismatch(f"the pickle's SongUNet has label_dim={label_dim}; set {fix}.")
    wanted = {"encoder_type": {"standard": "none", "residual": "residual"},
              "decoder_type": {"standard": "none"}}
    for key, config_key, value in (("encoder_type", "progressive_input", unet.progressive_input),
                                   ("decoder_type", "progressive", unet.progressive)):
        arch = kwargs.get(key, "standard")
        if arch not in wanted[key]:
            raise CheckpointMismatch(f"EDM {key}={arch!r} is not supported (no released network "
                                     f"uses it); only {sorted(wanted[key])}.")
        if wanted[key][arch] != value:
            raise CheckpointMismatch(
                f"the pickle's SongUNet has {key}={arch!r}; set "
                f"--config.model.unet.{config_key}={wanted[key][arch]}.")
    augment_dim = int(kwargs.get("augment_dim", 0) or 0)
    if augment_dim != unet.augment_dim:
        raise CheckpointMismatch(f"the pickle's SongUNet has augment_dim={augment_dim}; set "
                                 f"--config.model.unet.augment_dim={augment_dim}.")
    if kwargs.get("channel_mult_emb", 4) != 4:
        raise CheckpointMismatch("EDM channel_mult_emb != 4 has no NCSNpp counterpart "
                                 "(score_sde's embedding is 4 nf wide).")
    embedding = kwargs.get("embedding_type", "positional")
    if embedding != config.model.noise_embedding:
        raise CheckpointMismatch(f"the pickle's SongUNet has embedding_type={embedding!r}; set "
                                 f"--config.model.noise_embedding={embedding}.")
    if config.model.conditional and config.model.unet.label_embedding != "noise_features":
        raise CheckpointMismatch("EDM adds class labels to the noise features; set "
                                 "--config.model.unet.label_embedding=noise_features.")


def _edm_names(target: Target) -> dict[str, tuple[str, str | None]]:
    """diffjax top-level module -> (EDM module name, part): part 'attention' for the attention
    half of an EDM block."""
    config = target.config
    resolution = config.data.image_size
    levels = len(config.model.unet.ch_mult)
    blocks = config.model.unet.num_res_blocks
    def res(level):
        return f"{resolution >> max(level, 0)}x{resolution >> max(level, 0)}"

    names = {"noise_features": ("map_noise", None), "temb_0": ("map_layer0", None),
             "temb_1": ("map_layer1", None), "label_embedding": ("map_label", None),
             "augment_embedding": ("map_augment", None),
             "conv_in": (f"enc.{res(0)}_conv", None),
             "mid_block_0": (f"dec.{res(levels - 1)}_in0", None),
             "mid_attn": (f"dec.{res(levels - 1)}_in0", "attention"),
             "mid_block_1": (f"dec.{res(levels - 1)}_in1", None),
             "norm_out": (f"dec.{res(0)}_aux_norm", None),
             "conv_out": (f"dec.{res(0)}_aux_conv", None)}
    for level in range(levels):
        for i in range(blocks):
            names[f"down_{level}_block_{i}"] = (f"enc.{res(level)}_block{i}", None)
            names[f"down_{level}_attn_{i}"] = (f"enc.{res(level)}_block{i}", "attention")
        names[f"down_{level}_resample"] = (f"enc.{res(level + 1)}_down", None)
        names[f"down_{level}_pyramid"] = (f"enc.{res(level + 1)}_aux_residual", None)
        for i in range(blocks + 1):
            names[f"up_{level}_block_{i}"] = (f"dec.{res(level)}_block{i}", None)
        names[f"up_{level}_attn"] = (f"dec.{res(level)}_block{blocks}", "attention")
        names[f"up_{level}_resample"] = (f"dec.{res(level - 1)}_up", None)
    return names


# diffjax submodule inside a residual block -> EDM layer.
RESBLOCK = {"GroupNorm_0": "norm0", "Conv_0": "conv0", "Dense_0": "affine",
            "GroupNorm_1": "norm1", "Conv_1": "conv1", "Conv_2": "skip"}
LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def _label_rule(path, shape, prefix) -> list[Rule]:
    rows, dim = shape
    classes = rows - 1
    scale = math.sqrt(classes)

    def convert(arrays):
        weight, bias = arrays  # Linear(label_dim -> noise channels) of one-hot labels
        return [np.concatenate([weight.T * scale + bias, bias[None]], axis=0)]

    return [Rule((f"{prefix}.weight", f"{prefix}.bias"), ((dim, classes), (dim,)), (path,),
                 convert)]


def _attention_rules(top, shapes, prefix) -> list[Rule]:
    """AttnBlockpp (GroupNorm_0, NIN_0..3) <- EDM norm2, qkv (interleaved), proj."""
    channels = shapes[(top, "NIN_0", "kernel")][0]
    qkv = lambda arrays: [arrays[0][j::3, :, 0, 0].T for j in range(3)]  # noqa: E731
    qkv_bias = lambda arrays: [arrays[0][j::3] for j in range(3)]  # noqa: E731
    return [
        one_to_one(f"{prefix}.norm2.weight", (channels,), (top, "GroupNorm_0", "scale")),
        one_to_one(f"{prefix}.norm2.bias", (channels,), (top, "GroupNorm_0", "bias")),
        Rule((f"{prefix}.qkv.weight",), ((3 * channels, channels, 1, 1),),
             tuple((top, f"NIN_{j}", "kernel") for j in range(3)), qkv),
        Rule((f"{prefix}.qkv.bias",), ((3 * channels,),),
             tuple((top, f"NIN_{j}", "bias") for j in range(3)), qkv_bias),
        one_to_one(f"{prefix}.proj.weight", (channels, channels, 1, 1), (top, "NIN_3", "kernel"),
                   lambda a: a[:, :, 0, 0].T),
        one_to_one(f"{prefix}.proj.bias", (channels,), (top, "NIN_3", "bias")),
    ]


def rules(target: Target, prefix: str) -> list[Rule]:
    names = _edm_names(target)
    result: list[Rule] = []
    done: set[str] = set()
    for path, shape in target.shapes.items():
        top = path[0]
        if top not in names:
            raise CheckpointMismatch(f"diffjax's {top} has no EDM SongUNet counterpart; "
                                     f"check model.unet.resblock_type (EDM: 'biggan').")
        edm, part = names[top]
        edm = f"{prefix}{edm}"
        if part == "attention":
            if top not in done:
                done.add(top)
                result += _attention_rules(top, target.shapes, edm)
            continue
        if top == "label_embedding":
            result += _label_rule(path, shape, edm)
            continue
        if top == "noise_features":
            result.append(one_to_one(f"{edm}.freqs", shape, path))
            continue
        top_class = dict(target.calls).get((top,), "")
        if len(path) == 2:  # a top-level Conv, Dense or GroupNorm
            layer = f"{edm}.{LEAF[path[-1]]}"
        elif top_class == "ResnetBlockBigGANpp":
            layer = f"{edm}.{RESBLOCK[path[1]]}.{LEAF[path[-1]]}"
        elif top_class == "Downsample" and path[1] == "Conv2d_0":  # the input pyramid's conv
            layer = f"{edm}.{LEAF[path[-1]]}"
        else:
            raise CheckpointMismatch(f"diffjax's {'/'.join(path)} ({top_class}) has no EDM "
                                     f"SongUNet counterpart; check model.unet.resblock_type "
                                     f"(EDM: 'biggan') and model.unet.fir.")
        if path[-1] == "kernel":
            source_shape, convert = (conv_kernel if len(shape) == 4 else dense_kernel)(shape)
        else:
            source_shape, convert = same(shape)
        result.append(one_to_one(layer, source_shape, path, convert))
    return result


def convert(target: Target, net) -> tuple[dict, dict, int]:
    from diffjax.storage.torch_files import module_state

    precond, model, kwargs = _network(net)
    config = target.config
    _check_architecture(kwargs, config)
    prefix = "model." if model is not net else ""
    tensors = collections.OrderedDict(module_state(net))
    unet = config.model.unet
    expected = setup_kernel(unet.fir_kernel) if unet.fir else setup_kernel([1, 1])
    for name, value in tensors.items():
        if name.endswith("resample_filter"):
            value = np.asarray(value)[0, 0]
            if value.shape != expected.shape or not np.allclose(value, expected, atol=1e-6):
                raise CheckpointMismatch(
                    f"the pickle resamples with the FIR filter {name!r} of shape "
                    f"{list(value.shape)} (EDM resample_filter={kwargs.get('resample_filter')}); "
                    f"set --config.model.unet.fir=True with that kernel as fir_kernel, or "
                    f"fir=False for [1, 1].")
    ignored = lambda n: n.endswith("resample_filter")  # noqa: E731
    params = apply_rules(rules(target, prefix), tensors, source=f"EDM {precond}", ignore=ignored)
    return params, params, 0
