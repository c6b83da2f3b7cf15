"""Turn an original LDM yaml (what A1111 users keep beside checkpoints) into diffusers/transformers configs.

Real yaml files name their text encoders by hub id and carry no sizes, so those sizes are read from the
checkpoint's tensor shapes (a safetensors header is enough); the yaml's own `width`, `layers`, `heads`, ...
under the encoder's params are honoured when present, which is how small custom models describe
themselves. Nothing here loads weights or touches the network.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from diffusers.loaders.single_file_utils import (
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)

from modules.models.model_families import (
    FAMILIES,
    UNET_CONV_IN_KEY,
    Family,
    PredictionType,
    family_from_ldm_yaml,
    target_name,
    text_embedder_sections,
    unet_params_of,
)
from modules.io.paths import CONFIGS_DIR

TOKENIZERS_DIR = CONFIGS_DIR / "tokenizers"
CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
BOS_TOKEN_ID = 49406  # <|startoftext|>
EOS_TOKEN_ID = 49407  # <|endoftext|>
OPEN_CLIP_PAD_TOKEN_ID = 0  # "!", the pad token of diffusers' SD2/SDXL OpenCLIP tokenizers
SDXL_TIME_EMBED_DIM = 256  # ConcatTimestepEmbedderND outdim in every stock SDXL yaml
STOCK_LATENT_SIZE = 64

TextEncoderKind = Literal["clip_l", "open_clip"]
OutputLayer = Literal["last", "penultimate"]
SDXL_FAMILIES = (Family.SDXL, Family.SDXL_INPAINT, Family.SDXL_REFINER)


@dataclass(frozen=True)
class TextEncoderConfig:
    kind: TextEncoderKind
    model_class: Literal["CLIPTextModel", "CLIPTextModelWithProjection"]
    config: dict[str, Any]  # CLIPTextConfig keyword arguments
    tokenizer_dir: Path
    key_prefix: str  # where this encoder's tensors live in the checkpoint
    # The layer whose output the original model conditions on, and whether the final layer norm is applied
    # to it: SD1 last + norm, SD2 penultimate + norm, SDXL (both encoders) penultimate without norm.
    # num_hidden_layers counts every layer in the file, so a user's CLIP skip can go deeper.
    output_layer: OutputLayer
    final_layer_norm: bool


@dataclass(frozen=True)
class ComponentConfigs:
    family: Family
    prediction_type: PredictionType
    unet: dict[str, Any]  # UNet2DConditionModel config
    vae: dict[str, Any]  # AutoencoderKL config
    text_encoders: tuple[TextEncoderConfig, ...]
    scheduler: dict[str, Any]
    scale_factor: float
    image_size: int


def load_ldm_yaml(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        loaded = yaml.safe_load(handle)
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a YAML mapping (an LDM model config), got {type(loaded).__name__}")
    return loaded


# --- UNet -------------------------------------------------------------------------------------------

def _heads_per_block(unet: Mapping[str, Any]) -> int | tuple[int, ...]:
    """Attention heads in diffusers' `attention_head_dim` sense, by openaimodel's own rule: a set
    num_head_channels wins (heads = channels // num_head_channels per level), else num_heads everywhere.
    diffusers' converter reads num_heads first, which gives -1 for yamls that spell out `num_heads: -1`."""
    head_channels = int(unet.get("num_head_channels", -1))
    if head_channels != -1:
        return tuple(int(unet["model_channels"]) * int(mult) // head_channels for mult in unet["channel_mult"])
    return int(unet.get("num_heads", 8))


def _tuples(config: dict[str, Any]) -> dict[str, Any]:
    return {key: tuple(value) if isinstance(value, list) else value for key, value in config.items()}


def _unet_config(ldm_yaml: Mapping[str, Any], family: Family, image_size: int) -> dict[str, Any]:
    unet = dict(unet_params_of(ldm_yaml))
    unet.setdefault("transformer_depth", 1)
    unet_section = "unet_config" if ldm_yaml["model"]["params"].get("unet_config") else "network_config"
    original = {"model": {"params": {**ldm_yaml["model"]["params"], unet_section: {"params": unet}}}}
    # diffusers marks passing image_size as deprecated; without it, it would guess the size from
    # tensors of a full checkpoint, which a header-only shape map cannot provide.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        config = create_unet_diffusers_config_from_ldm(original, {}, image_size=image_size)
    config["attention_head_dim"] = _heads_per_block(unet)
    if family in SDXL_FAMILIES:
        # diffusers decides "text_time" by a context width of 2048/1280; the family is the surer sign.
        config.update(class_embed_type=None, addition_embed_type="text_time",
                      addition_time_embed_dim=_size_embedding_dim(ldm_yaml),
                      projection_class_embeddings_input_dim=int(unet["adm_in_channels"]))
    return _tuples(config)


def _size_embedding_dim(ldm_yaml: Mapping[str, Any]) -> int:
    """Width of each embedded SDXL size/crop/score number: the conditioner's ConcatTimestepEmbedderND outdim."""
    conditioner = ldm_yaml["model"]["params"].get("conditioner_config") or {}
    for model in (conditioner.get("params") or {}).get("emb_models") or []:
        if target_name(model).startswith("ConcatTimestepEmbedder"):
            return int((model.get("params") or {}).get("outdim", SDXL_TIME_EMBED_DIM))
    return SDXL_TIME_EMBED_DIM


def _check_unet_against_weights(unet: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
    conv_in = shapes.get(UNET_CONV_IN_KEY)
    if conv_in is None:
        return
    expected = (unet["block_out_channels"][0], unet["in_channels"])
    if tuple(conv_in[:2]) != expected:
        raise ValueError(
            f"the yaml describes a UNet with {expected[1]} input channels and {expected[0]} base channels, "
            f"but the checkpoint's {UNET_CONV_IN_KEY} has shape {tuple(conv_in)}"
        )
    context_dim = unet["cross_attention_dim"]
    for key, shape in shapes.items():
        if key.startswith("model.diffusion_model.") and key.endswith(".attn2.to_k.weight"):
            if shape[1] != context_dim:
                raise ValueError(f"the yaml says context_dim {context_dim}, but the checkpoint's {key} "
                                 f"has shape {tuple(shape)}")
            return


# --- VAE and scheduler ------------------------------------------------------------------------------

def _image_size(ldm_yaml: Mapping[str, Any], family: Family, prediction_type: PredictionType) -> int:
    """Native resolution in pixels. Every stock ldm yaml says latent size 64 whatever the model's resolution
    (the 768 px SD2-v file too), so 64 or nothing means the family's size; any other value is a custom
    model declaring its own."""
    declared = ldm_yaml["model"]["params"].get("image_size")
    if isinstance(declared, int) and declared != STOCK_LATENT_SIZE:
        ddconfig = ldm_yaml["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
        return declared * 2 ** (len(ddconfig["ch_mult"]) - 1)
    return FAMILIES[family].native_image_size(prediction_type)


def _scale_factor(ldm_yaml: Mapping[str, Any], family: Family) -> float:
    return float(ldm_yaml["model"]["params"].get("scale_factor", FAMILIES[family].latent_scale_factor))


def _vae_config(ldm_yaml: Mapping[str, Any], shapes: Mapping[str, Any], image_size: int,
                scale_factor: float) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        config = create_vae_diffusers_config_from_ldm(ldm_yaml, shapes, image_size=image_size,
                                                      scaling_factor=scale_factor)
    return _tuples(config)


def _scheduler_config(ldm_yaml: Mapping[str, Any], prediction_type: PredictionType) -> dict[str, Any]:
    params = ldm_yaml["model"]["params"]
    # sgm (SDXL) yamls keep the schedule in the denoiser's discretization, whose defaults are SD's.
    denoiser = (params.get("denoiser_config") or {}).get("params") or {}
    discretization = (denoiser.get("discretization_config") or {}).get("params") or {}
    schedule = str(params.get("beta_schedule", "linear"))
    if schedule != "linear":
        raise ValueError(f"unsupported beta_schedule {schedule!r} in the yaml (only 'linear' is)")
    return {
        "num_train_timesteps": int(params.get("timesteps", denoiser.get("num_idx", 1000))),
        "beta_start": float(params.get("linear_start", discretization.get("linear_start", 0.00085))),
        "beta_end": float(params.get("linear_end", discretization.get("linear_end", 0.012))),
        # ldm's "linear" schedule is linear in sqrt(beta): diffusers calls that "scaled_linear".
        "beta_schedule": "scaled_linear",
        "prediction_type": prediction_type,
    }


# --- text encoders ----------------------------------------------------------------------------------

def standard_heads(width: int) -> int:
    """Heads of the CLIP text towers SD uses (ViT-L 768 -> 12, ViT-H 1024 -> 16, ViT-bigG 1280 -> 20)."""
    return {768: 12, 1024: 16, 1280: 20}.get(width, max(1, width // 64))


@dataclass(frozen=True)
class _Layout:
    """Key names of one encoder's tensors in the checkpoint, relative to its prefix."""

    token_embedding: str
    position_embedding: str
    layer_pattern: str
    fc1: str
    projection: str
    projection_axis: int  # which axis of the projection tensor is the projection width


_CLIP_L_LAYOUT = _Layout("embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
                         r"encoder\.layers\.(\d+)\.", "encoder.layers.0.mlp.fc1.weight",
                         "text_projection.weight", 0)
_OPEN_CLIP_LAYOUT = _Layout("token_embedding.weight", "positional_embedding",
                            r"transformer\.resblocks\.(\d+)\.", "transformer.resblocks.0.mlp.c_fc.weight",
                            "text_projection", 1)


def _clip_l_prefix(embedder_index: int, family: Family, shapes: Mapping[str, Any]) -> str:
    if family in (Family.SD1, Family.SD1_INPAINT):
        root = "cond_stage_model.transformer."
    else:
        root = f"conditioner.embedders.{embedder_index}.transformer."
    # Checkpoints saved with old transformers have no "text_model." level.
    if root + _CLIP_L_LAYOUT.token_embedding in shapes:
        return root
    return root + "text_model."


def _open_clip_prefix(embedder_index: int, family: Family) -> str:
    if family in (Family.SD2, Family.SD2_INPAINT):
        return "cond_stage_model.model."
    return f"conditioner.embedders.{embedder_index}.model."


def _size_from(shapes: Mapping[str, tuple[int, ...]], key: str, axis: int) -> int | None:
    shape = shapes.get(key)
    return int(shape[axis]) if shape is not None else None


def _layer_count(shapes: Mapping[str, Any], prefix: str, pattern: str) -> int | None:
    regex = re.compile(re.escape(prefix) + pattern)
    indices = {int(match.group(1)) for key in shapes if (match := regex.match(key))}
    return max(indices) + 1 if indices else None


def _agree(name: str, from_weights: int | None, from_yaml: Any, prefix: str) -> int | None:
    if from_yaml is not None and from_weights is not None and int(from_yaml) != from_weights:
        raise ValueError(f"the yaml gives the text encoder {name}={from_yaml}, but the checkpoint "
                         f"(under '{prefix}') has {from_weights}")
    return from_weights if from_weights is not None else (int(from_yaml) if from_yaml is not None else None)


def _text_config(kind: TextEncoderKind, prefix: str, shapes: Mapping[str, tuple[int, ...]],
                 extra: Mapping[str, Any], pad_token_id: int) -> dict[str, Any]:
    layout = _CLIP_L_LAYOUT if kind == "clip_l" else _OPEN_CLIP_LAYOUT
    width = _agree("width", _size_from(shapes, prefix + layout.token_embedding, 1), extra.get("width"), prefix)
    if width is None:
        raise ValueError(f"no text encoder weights under '{prefix}' (expected '{prefix}{layout.token_embedding}') "
                         "and no width in the yaml")
    layers = _agree("layers", _layer_count(shapes, prefix, layout.layer_pattern), extra.get("layers"), prefix)
    if layers is None:
        raise ValueError(f"cannot tell the number of text encoder layers under '{prefix}'")
    vocab = _agree("vocab_size", _size_from(shapes, prefix + layout.token_embedding, 0),
                   extra.get("vocab_size"), prefix) or CLIP_VOCAB_SIZE
    positions = _agree("max_length", _size_from(shapes, prefix + layout.position_embedding, 0),
                       extra.get("max_length"), prefix) or CLIP_MAX_LENGTH
    intermediate = _size_from(shapes, prefix + layout.fc1, 0) or 4 * width
    projection_key = (prefix.removesuffix("text_model.") if kind == "clip_l" else prefix) + layout.projection
    projection = _agree("projection_dim", _size_from(shapes, projection_key, layout.projection_axis),
                        extra.get("projection_dim"), prefix) or width
    return {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": int(extra.get("heads") or standard_heads(width)),
        "max_position_embeddings": positions,
        "hidden_act": str(extra.get("act") or ("quick_gelu" if kind == "clip_l" else "gelu")),
        "projection_dim": projection,
        "pad_token_id": pad_token_id,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
    }


def _output_layer(target: str, params: Mapping[str, Any], layers: int) -> tuple[OutputLayer, bool]:
    """(output layer, final layer norm applied) of an encoder as the yaml configures it, following what
    each original embedder class computes."""
    layer = str(params.get("layer", "penultimate" if target == "FrozenOpenCLIPEmbedder2" else "last"))
    if target == "FrozenOpenCLIPEmbedder" and layer in ("last", "penultimate"):
        return layer, True  # ldm (SD2) applies ln_final to whichever layer it stops at
    if target == "FrozenOpenCLIPEmbedder2" and layer == "penultimate":
        return "penultimate", False  # sgm (SDXL) returns the raw penultimate layer
    if target == "FrozenCLIPEmbedder":
        if layer == "last":
            return "last", True
        # "hidden" returns hidden_states[layer_idx] unnormed; layers - 1 is the penultimate layer.
        if layer == "hidden" and int(params.get("layer_idx", -1)) in (layers - 1, -2):
            return "penultimate", False
    raise ValueError(f"unsupported text encoder output {layer!r} (layer_idx {params.get('layer_idx')}) "
                     f"for {target} in the yaml")


def _text_encoders(ldm_yaml: Mapping[str, Any], family: Family,
                   shapes: Mapping[str, tuple[int, ...]]) -> tuple[TextEncoderConfig, ...]:
    encoders = []
    for index, section in text_embedder_sections(ldm_yaml):
        target = target_name(section)
        params = section.get("params") or {}
        if target == "FrozenCLIPEmbedder":
            kind: TextEncoderKind = "clip_l"
            prefix = _clip_l_prefix(index, family, shapes)
            pad, tokenizer = EOS_TOKEN_ID, TOKENIZERS_DIR / "clip"
        elif target in ("FrozenOpenCLIPEmbedder", "FrozenOpenCLIPEmbedder2"):
            kind = "open_clip"
            prefix = _open_clip_prefix(index, family)
            pad, tokenizer = OPEN_CLIP_PAD_TOKEN_ID, TOKENIZERS_DIR / "open_clip"
        else:
            raise ValueError(f"unsupported text encoder {section.get('target')!r} in the yaml")
        config = _text_config(kind, prefix, shapes, params, pad)
        output_layer, final_layer_norm = _output_layer(target, params, config["num_hidden_layers"])
        # SDXL's OpenCLIP-G also gives the pooled, projected embedding the UNet is conditioned on.
        pooled = target == "FrozenOpenCLIPEmbedder2"
        encoders.append(TextEncoderConfig(
            kind=kind,
            model_class="CLIPTextModelWithProjection" if pooled else "CLIPTextModel",
            config=config,
            tokenizer_dir=tokenizer,
            key_prefix=prefix,
            output_layer=output_layer,
            final_layer_norm=final_layer_norm,
        ))
    if not encoders:
        raise ValueError("the yaml names no text encoder (cond_stage_config or conditioner emb_models with 'txt')")
    return tuple(encoders)


# --- everything -------------------------------------------------------------------------------------

def build_component_configs(ldm_yaml: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> ComponentConfigs:
    """Configs for every module of the checkpoint whose tensor shapes are `shapes`, as `ldm_yaml` describes it."""
    family, prediction_type = family_from_ldm_yaml(ldm_yaml)
    image_size = _image_size(ldm_yaml, family, prediction_type)
    scale_factor = _scale_factor(ldm_yaml, family)
    unet = _unet_config(ldm_yaml, family, image_size)
    _check_unet_against_weights(unet, shapes)
    return ComponentConfigs(
        family=family,
        prediction_type=prediction_type,
        unet=unet,
        vae=_vae_config(ldm_yaml, shapes, image_size, scale_factor),
        text_encoders=_text_encoders(ldm_yaml, family, shapes),
        scheduler=_scheduler_config(ldm_yaml, prediction_type),
        scale_factor=scale_factor,
        image_size=image_size,
    )
