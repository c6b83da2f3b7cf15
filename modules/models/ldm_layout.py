"""State-dict key layout: original single-file Stable Diffusion checkpoints <-> diffusers/transformers modules.

Original ("LDM") checkpoints are the single files A1111 users have: the CompVis/Stability layout with
`model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE) and the text encoders under
`cond_stage_model.*` (SD 1.x / 2.x) or `conditioner.embedders.N.*` (SDXL). The diffusers side is the plain
`state_dict()` of `UNet2DConditionModel`, `AutoencoderKL`, `CLIPTextModel` and `CLIPTextModelWithProjection`.

Component dicts (what `split_original` returns and `join_original` takes) carry keys with the family prefix
stripped:

- unet: `input_blocks.0.0.weight`, ... (prefix `model.diffusion_model.`)
- vae: `encoder.down.0.block.0.conv1.weight`, ... (prefix `first_stage_model.`)
- clip_l: `text_model.encoder.layers.0.self_attn.q_proj.weight`, ... (prefix `cond_stage_model.transformer.` or
  `conditioner.embedders.0.transformer.`)
- open_clip: `transformer.resblocks.0.attn.in_proj_weight`, `text_projection`, ... (prefix
  `cond_stage_model.model.`, `conditioner.embedders.1.model.` or `conditioner.embedders.0.model.`)

The `*_to_diffusers` text converters also accept the one-level-longer forms `transformer.text_model.*` and
`model.*`.

Why the UNet and VAE use one table of our own instead of diffusers' `convert_ldm_unet_checkpoint` /
`convert_ldm_vae_checkpoint`: diffusers ships only the original -> diffusers direction. The table here is built
from the parameter names of the real diffusers module (instantiated on the meta device, so it costs no memory)
and is checked to be one-to-one. Both directions read the same table, so a round trip is exact by
construction, and a key with no counterpart raises `LayoutError` instead of being dropped. The tests check that
the diffusers converters give the same result on every tiny family.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

# Text-encoder prefixes of each original family, by component name.
TEXT_PREFIXES: Mapping[str, Mapping[str, str]] = {
    "sd1": {"clip_l": "cond_stage_model.transformer."},
    "sd2": {"open_clip": "cond_stage_model.model."},
    "sdxl": {"clip_l": "conditioner.embedders.0.transformer.", "open_clip": "conditioner.embedders.1.model."},
    "sdxl_refiner": {"open_clip": "conditioner.embedders.0.model."},
}
LAYOUTS = tuple(TEXT_PREFIXES)

# (diffusers prefix, original prefix, renames applied to the head of the rest of the key)
_PrefixRule = tuple[str, str, tuple[tuple[str, str], ...]]

_UNET_RESNET_PARTS = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
)
_VAE_RESNET_PARTS = (("conv_shortcut.", "nin_shortcut."),)
_VAE_ATTENTION_PARTS = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)
_VAE_ATTENTION_WEIGHT = re.compile(r"(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")

_CLIP_BODY_HEADS = ("embeddings.", "encoder.", "final_layer_norm.")
_OPEN_CLIP_LAYER_PARTS = (
    ("ln_1.", "layer_norm1."),
    ("attn.out_proj.", "self_attn.out_proj."),
    ("ln_2.", "layer_norm2."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
)
_OPEN_CLIP_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)$")
# Buffers or training-only values that real files carry and the diffusers/transformers modules do not.
_OPEN_CLIP_DROPPED = ("logit_scale", "attn_mask")


class LayoutError(ValueError):
    """A state dict does not fit the expected key layout."""


# ---------------------------------------------------------------------------------------------- shared helpers


def _swap_head(rest: str, parts: Iterable[tuple[str, str]]) -> str:
    for old, new in parts:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def _apply_rules(key: str, rules: Iterable[_PrefixRule]) -> str:
    for diffusers_prefix, original_prefix, parts in rules:
        if key.startswith(diffusers_prefix):
            return original_prefix + _swap_head(key[len(diffusers_prefix):], parts)
    raise LayoutError(f"no original-layout name for diffusers key {key!r}")


def _one_to_one(table: dict[str, str], what: str) -> dict[str, str]:
    sources: dict[str, list[str]] = {}
    for key, name in table.items():
        sources.setdefault(name, []).append(key)
    clashes = [keys for keys in sources.values() if len(keys) > 1]
    if clashes:
        raise LayoutError(f"{what} key map is not one-to-one: {clashes[:3]}")
    return table


def _rename_all(
    sd: Mapping[str, Tensor], table: Mapping[str, str], reshape: Callable[[str, Tensor], Tensor], what: str
) -> dict[str, Tensor]:
    unknown = [k for k in sd if k not in table]
    if unknown:
        raise LayoutError(f"{what}: {len(unknown)} keys fit no known name, e.g. {unknown[:5]}")
    return {table[k]: reshape(table[k], v) for k, v in sd.items()}


def _keep(_key: str, value: Tensor) -> Tensor:
    return value


def _per_block(value: int | Iterable[int], count: int) -> list[int]:
    return [int(value)] * count if isinstance(value, int) else [int(v) for v in value]


# ------------------------------------------------------------------------------------------------------- UNet


def _meta_state_keys(model_class: type, config: Mapping) -> list[str]:
    # The meta device gives the module's exact parameter names without allocating any weights.
    with torch.device("meta"):
        model = model_class.from_config(dict(config))
    return list(model.state_dict())


def _unet_rules(config: Mapping, diffusers_keys: list[str]) -> list[_PrefixRule]:
    levels = len(config["block_out_channels"])
    layers = _per_block(config["layers_per_block"], levels)
    rules: list[_PrefixRule] = [
        ("time_embedding.linear_1.", "time_embed.0.", ()),
        ("time_embedding.linear_2.", "time_embed.2.", ()),
        # SDXL's size/crop conditioning ("text_time") and class conditioning share the original label_emb slot.
        ("add_embedding.linear_1.", "label_emb.0.0.", ()),
        ("add_embedding.linear_2.", "label_emb.0.2.", ()),
        ("class_embedding.linear_1.", "label_emb.0.0.", ()),
        ("class_embedding.linear_2.", "label_emb.0.2.", ()),
        ("class_embedding.", "label_emb.", ()),
        ("conv_in.", "input_blocks.0.0.", ()),
        ("conv_norm_out.", "out.0.", ()),
        ("conv_out.", "out.2.", ()),
        ("mid_block.resnets.0.", "middle_block.0.", _UNET_RESNET_PARTS),
        ("mid_block.attentions.0.", "middle_block.1.", ()),
        ("mid_block.resnets.1.", "middle_block.2.", _UNET_RESNET_PARTS),
    ]
    index = 1  # input_blocks.0 is conv_in
    for level in range(levels):
        for j in range(layers[level]):
            rules.append((f"down_blocks.{level}.resnets.{j}.", f"input_blocks.{index}.0.", _UNET_RESNET_PARTS))
            rules.append((f"down_blocks.{level}.attentions.{j}.", f"input_blocks.{index}.1.", ()))
            index += 1
        if level < levels - 1:  # both layouts downsample after every level but the last
            rules.append((f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{index}.0.op.", ()))
            index += 1
    index = 0
    for level, down_layers in enumerate(reversed(layers)):
        for j in range(down_layers + 1):
            rules.append((f"up_blocks.{level}.resnets.{j}.", f"output_blocks.{index}.0.", _UNET_RESNET_PARTS))
            rules.append((f"up_blocks.{level}.attentions.{j}.", f"output_blocks.{index}.1.", ()))
            index += 1
        # The original upsampler sits in the level's last output block, after the attention if there is one.
        has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in diffusers_keys)
        slot = 2 if has_attention else 1
        rules.append((f"up_blocks.{level}.upsamplers.0.conv.", f"output_blocks.{index - 1}.{slot}.conv.", ()))
    return rules


def unet_key_map(config: Mapping) -> dict[str, str]:
    """diffusers UNet2DConditionModel key -> original key (without `model.diffusion_model.`), one-to-one."""
    from diffusers import UNet2DConditionModel

    keys = _meta_state_keys(UNet2DConditionModel, config)
    rules = _unet_rules(config, keys)
    return _one_to_one({k: _apply_rules(k, rules) for k in keys}, "UNet")


def unet_to_diffusers(sd: Mapping[str, Tensor], config: Mapping) -> dict[str, Tensor]:
    """Original UNet state dict (keys without `model.diffusion_model.`) -> diffusers UNet2DConditionModel keys."""
    to_diffusers = {v: k for k, v in unet_key_map(config).items()}
    return _rename_all(sd, to_diffusers, _keep, "UNet")


def unet_to_original(sd: Mapping[str, Tensor], config: Mapping) -> dict[str, Tensor]:
    """diffusers UNet2DConditionModel state dict -> original keys (without `model.diffusion_model.`)."""
    return _rename_all(sd, unet_key_map(config), _keep, "UNet")


# -------------------------------------------------------------------------------------------------------- VAE


def _vae_rules(config: Mapping) -> list[_PrefixRule]:
    levels = len(config["block_out_channels"])
    layers = int(config["layers_per_block"])
    same = ("conv_in.", "conv_out.")
    rules: list[_PrefixRule] = [("quant_conv.", "quant_conv.", ()), ("post_quant_conv.", "post_quant_conv.", ())]
    for part in ("encoder", "decoder"):
        rules += [(f"{part}.{name}", f"{part}.{name}", ()) for name in same]
        rules += [
            (f"{part}.conv_norm_out.", f"{part}.norm_out.", ()),
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", _VAE_RESNET_PARTS),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", _VAE_RESNET_PARTS),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTENTION_PARTS),
        ]
    for level in range(levels):
        rules += [
            (f"encoder.down_blocks.{level}.resnets.{j}.", f"encoder.down.{level}.block.{j}.", _VAE_RESNET_PARTS)
            for j in range(layers)
        ]
        rules.append((f"encoder.down_blocks.{level}.downsamplers.0.", f"encoder.down.{level}.downsample.", ()))
        # The original decoder numbers its levels from the lowest resolution up; diffusers from the top down.
        original_level = levels - 1 - level
        rules += [
            (f"decoder.up_blocks.{level}.resnets.{j}.", f"decoder.up.{original_level}.block.{j}.", _VAE_RESNET_PARTS)
            for j in range(layers + 1)
        ]
        rules.append((f"decoder.up_blocks.{level}.upsamplers.0.", f"decoder.up.{original_level}.upsample.", ()))
    return rules


def vae_key_map(config: Mapping) -> dict[str, str]:
    """diffusers AutoencoderKL key -> original key (without `first_stage_model.`), one-to-one."""
    from diffusers import AutoencoderKL

    rules = _vae_rules(config)
    return _one_to_one({k: _apply_rules(k, rules) for k in _meta_state_keys(AutoencoderKL, config)}, "VAE")


def _vae_weight_to_conv(original_key: str, value: Tensor) -> Tensor:
    # The original mid-block attention uses 1x1 convolutions where diffusers uses Linear layers.
    if _VAE_ATTENTION_WEIGHT.search(original_key) and value.ndim == 2:
        return value[:, :, None, None]
    return value


def _vae_weight_to_linear(diffusers_key: str, value: Tensor) -> Tensor:
    if ".mid_block.attentions.0." in diffusers_key and diffusers_key.endswith("weight") and value.ndim > 2:
        return value.reshape(value.shape[0], value.shape[1])
    return value


def vae_to_diffusers(sd: Mapping[str, Tensor], config: Mapping) -> dict[str, Tensor]:
    """Original VAE state dict (keys without `first_stage_model.`) -> diffusers AutoencoderKL keys."""
    to_diffusers = {v: k for k, v in vae_key_map(config).items()}
    return _rename_all(sd, to_diffusers, _vae_weight_to_linear, "VAE")


def vae_to_original(sd: Mapping[str, Tensor], config: Mapping) -> dict[str, Tensor]:
    """diffusers AutoencoderKL state dict -> original keys (without `first_stage_model.`)."""
    return _rename_all(sd, vae_key_map(config), _vae_weight_to_conv, "VAE")


# ------------------------------------------------------------------------------------------ CLIP text (OpenAI)


@functools.cache
def _text_model_prefix(model_class: type) -> str:
    """"text_model." where the installed transformers nests the text tower under it, else "".

    transformers >= 5.6 flattened CLIPTextModel (no prefix) but not CLIPTextModelWithProjection; asking the
    installed classes keeps this right across versions.
    """
    from transformers import CLIPTextConfig

    config = CLIPTextConfig(
        hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
        vocab_size=8, max_position_embeddings=4, projection_dim=8,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,  # inside the tiny vocabulary, so no warning
    )
    with torch.device("meta"):
        keys = model_class(config).state_dict()
    return "text_model." if any(k.startswith("text_model.") for k in keys) else ""


def _clip_text_prefix(with_projection: bool) -> str:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return _text_model_prefix(CLIPTextModelWithProjection if with_projection else CLIPTextModel)


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


def _clip_body(key: str) -> str:
    body = _strip(_strip(key, "transformer."), "text_model.")
    if not body.startswith(_CLIP_BODY_HEADS):
        raise LayoutError(f"CLIP text encoder: unexpected key {key!r}")
    return body


def clip_text_to_diffusers(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original CLIP ViT-L text encoder (`text_model.*` or `transformer.text_model.*`) -> CLIPTextModel keys.

    Very old SD 1.x files lack the `text_model.` level; they are accepted too. `position_ids` buffers are
    dropped: CLIPTextModel rebuilds them.
    """
    prefix = _clip_text_prefix(with_projection=False)
    return {prefix + _clip_body(k): v for k, v in sd.items() if not k.endswith("position_ids")}


def clip_text_to_original(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CLIPTextModel state dict -> original component keys `text_model.*` (always with that level)."""
    return {"text_model." + _clip_body(k): v for k, v in sd.items() if not k.endswith("position_ids")}


# --------------------------------------------------------------------------------------------- OpenCLIP text


def _fixed_open_clip_names(prefix: str) -> dict[str, str]:
    """OpenCLIP name -> transformers name for the tensors outside the residual blocks."""
    return {
        "token_embedding.weight": prefix + "embeddings.token_embedding.weight",
        "positional_embedding": prefix + "embeddings.position_embedding.weight",
        "ln_final.weight": prefix + "final_layer_norm.weight",
        "ln_final.bias": prefix + "final_layer_norm.bias",
    }


def open_clip_text_to_diffusers(
    sd: Mapping[str, Tensor], num_layers: int | None = None, with_projection: bool | None = None
) -> dict[str, Tensor]:
    """OpenCLIP text tower (SD2 ViT-H, SDXL ViT-bigG) -> CLIPTextModel / CLIPTextModelWithProjection keys.

    Keys may carry a leading `model.`. The fused `attn.in_proj_*` is split into q/k/v. `text_projection` (a
    [width, proj] matrix used as x @ P) becomes `text_projection.weight` = P.T when `with_projection` is true;
    it defaults to whether the file has one. SD2 needs `with_projection=False`: its files carry a projection that
    SD does not use. `num_layers` keeps only the first residual blocks (e.g. 23 of SD2's 24, for a model built
    to stop at the penultimate layer); None keeps them all. `logit_scale` is dropped.
    """
    body = {_strip(k, "model."): v for k, v in sd.items()}
    if with_projection is None:
        with_projection = "text_projection" in body
    prefix = _clip_text_prefix(with_projection)
    fixed = _fixed_open_clip_names(prefix)
    out: dict[str, Tensor] = {}
    for key, value in body.items():
        block = _OPEN_CLIP_RESBLOCK.match(key)
        if key in fixed:
            out[fixed[key]] = value
        elif key == "text_projection":
            if with_projection:
                out["text_projection.weight"] = value.T.contiguous()
        elif key in _OPEN_CLIP_DROPPED:
            continue
        elif block:
            layer, rest = int(block.group(1)), block.group(2)
            if num_layers is not None and layer >= num_layers:
                continue
            out.update(_open_clip_block_to_diffusers(f"{prefix}encoder.layers.{layer}.", rest, value, key))
        else:
            raise LayoutError(f"OpenCLIP text encoder: unexpected key {key!r}")
    return out


def _open_clip_block_to_diffusers(layer_prefix: str, rest: str, value: Tensor, key: str) -> dict[str, Tensor]:
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = "weight" if rest.endswith("weight") else "bias"
        # clone: three views of one storage could not be saved to safetensors side by side
        q, k, v = (part.clone() for part in value.chunk(3, dim=0))
        return {f"{layer_prefix}self_attn.{name}_proj.{kind}": t for name, t in zip("qkv", (q, k, v))}
    renamed = _swap_head(rest, _OPEN_CLIP_LAYER_PARTS)
    if renamed == rest:
        raise LayoutError(f"OpenCLIP text encoder: unexpected key {key!r}")
    return {layer_prefix + renamed: value}


def open_clip_text_to_original(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CLIPTextModel / CLIPTextModelWithProjection state dict -> OpenCLIP component keys (no `model.`).

    q/k/v are fused back into `attn.in_proj_*`; `text_projection.weight` becomes `text_projection` = W.T.
    """
    fixed = {v: k for k, v in _fixed_open_clip_names("").items()}
    out: dict[str, Tensor] = {}
    fused: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        body = _strip(key, "text_model.")
        layer = _HF_LAYER.match(body)
        if body in fixed:
            out[fixed[body]] = value
        elif body == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif body.endswith("position_ids"):
            continue
        elif layer and (attn := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", layer.group(2))):
            fused.setdefault((int(layer.group(1)), attn.group(2)), {})[attn.group(1)] = value
        elif layer:
            renamed = _swap_head(layer.group(2), [(new, old) for old, new in _OPEN_CLIP_LAYER_PARTS])
            if renamed == layer.group(2):
                raise LayoutError(f"CLIP text encoder: unexpected key {key!r}")
            out[f"transformer.resblocks.{layer.group(1)}.{renamed}"] = value
        else:
            raise LayoutError(f"CLIP text encoder: unexpected key {key!r}")
    for (index, kind), parts in fused.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise LayoutError(f"CLIP text encoder: layer {index} lacks part of q/k/v {kind}")
        out[f"transformer.resblocks.{index}.attn.in_proj_{kind}"] = torch.cat([parts[n] for n in "qkv"], dim=0)
    return out


# ------------------------------------------------------------------------------------- whole single-file dicts


def _component_prefixes() -> list[tuple[str, str]]:
    prefixes = [(UNET_PREFIX, "unet"), (VAE_PREFIX, "vae")]
    for by_component in TEXT_PREFIXES.values():
        prefixes += [(prefix, component) for component, prefix in by_component.items()]
    return prefixes


def split_original(state_dict: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Split a full original checkpoint into "unet", "vae", "clip_l", "open_clip" (prefixes stripped).

    Every other key (EMA weights `model_ema.*`, `alphas_cumprod`, `betas`, ...) lands unchanged under "other".
    All five entries are always present; absent parts are empty dicts.
    """
    prefixes = _component_prefixes()
    parts: dict[str, dict[str, Tensor]] = {"unet": {}, "vae": {}, "clip_l": {}, "open_clip": {}, "other": {}}
    for key, value in state_dict.items():
        match = next(((p, c) for p, c in prefixes if key.startswith(p)), None)
        if match is None:
            parts["other"][key] = value
        else:
            parts[match[1]][key[len(match[0]):]] = value
    return parts


def original_layout(state_dict: Mapping[str, Tensor] | Iterable[str]) -> str:
    """Which text-encoder layout a full original checkpoint uses: "sd1", "sd2", "sdxl" or "sdxl_refiner"."""
    keys = list(state_dict)
    # SDXL base before the refiner: base also has conditioner.embedders.0 (its CLIP-L), but under .transformer.
    for layout in ("sdxl", "sdxl_refiner", "sd2", "sd1"):
        if all(any(k.startswith(p) for k in keys) for p in TEXT_PREFIXES[layout].values()):
            return layout
    raise LayoutError("no known text-encoder prefix in the checkpoint")


def join_original(
    unet: Mapping[str, Tensor],
    vae: Mapping[str, Tensor],
    clip_l: Mapping[str, Tensor] | None = None,
    open_clip: Mapping[str, Tensor] | None = None,
    layout: str = "sd1",
) -> dict[str, Tensor]:
    """The inverse of `split_original`: component dicts -> one original single-file state dict for `layout`."""
    if layout not in TEXT_PREFIXES:
        raise LayoutError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    texts = {"clip_l": clip_l, "open_clip": open_clip}
    wanted = TEXT_PREFIXES[layout]
    given = {name for name, part in texts.items() if part is not None}
    if given != set(wanted):
        raise LayoutError(f"layout {layout!r} takes text encoders {sorted(wanted)}, got {sorted(given)}")
    out = {UNET_PREFIX + k: v for k, v in unet.items()}
    out.update({VAE_PREFIX + k: v for k, v in vae.items()})
    for name, prefix in wanted.items():
        out.update({prefix + k: v for k, v in texts[name].items()})
    return out
