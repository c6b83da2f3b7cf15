"""Stable Diffusion model families: what a checkpoint is, told from its keys or from its LDM yaml.

Detection reads key names and shapes only, so it works on a safetensors header before any tensor
is loaded. The rules follow AUTOMATIC1111's `guess_model_config_from_state_dict`: SDXL carries its
text encoders under `conditioner.embedders.*`, SD2 has an OpenCLIP encoder under
`cond_stage_model.model.*`, SD1 a CLIP ViT-L under `cond_stage_model.transformer.*`, and inpainting
UNets take 9 input channels (4 latent + 4 masked-image latent + 1 mask) instead of 4.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

PredictionType = Literal["epsilon", "v_prediction"]

UNET_PREFIX = "model.diffusion_model."
UNET_CONV_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
SDXL_BASE_MARKER_KEY = "conditioner.embedders.1.model.ln_final.weight"
SDXL_REFINER_MARKER_KEY = "conditioner.embedders.0.model.ln_final.weight"
OPEN_CLIP_PREFIX = "cond_stage_model.model."
CLIP_L_PREFIX = "cond_stage_model.transformer."

LATENT_CHANNELS = 4
INPAINT_CHANNELS = 9  # latent + masked-image latent + mask


class Family(str, enum.Enum):
    """A checkpoint architecture this application can build and run."""

    SD1 = "sd1"
    SD1_INPAINT = "sd1_inpaint"
    SD2 = "sd2"
    SD2_INPAINT = "sd2_inpaint"
    SDXL = "sdxl"
    SDXL_INPAINT = "sdxl_inpaint"
    SDXL_REFINER = "sdxl_refiner"

    # Print and format as the plain name ("sd1"), the same on every Python version.
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class UnknownArchitectureError(ValueError):
    """The file is not a Stable Diffusion 1.x/2.x/XL checkpoint this application can load."""


@dataclass(frozen=True)
class FamilySpec:
    family: Family
    config_file: str  # the standard LDM yaml, a file name in configs/
    image_size: int  # native resolution in pixels
    latent_scale_factor: float  # VAE latent scaling when the yaml gives none
    is_inpaint: bool = False
    # SD2 shipped an epsilon 512 model and a v-prediction 768 model with identical keys; without a
    # sidecar yaml the only way to tell them apart is to run one UNet step (A1111 does the same).
    needs_prediction_probe: bool = False
    v_prediction_yaml: str | None = None
    v_prediction_image_size: int | None = None

    def yaml_name(self, prediction_type: PredictionType) -> str:
        if prediction_type == "v_prediction" and self.v_prediction_yaml:
            return self.v_prediction_yaml
        return self.config_file

    def native_image_size(self, prediction_type: PredictionType) -> int:
        if prediction_type == "v_prediction" and self.v_prediction_image_size:
            return self.v_prediction_image_size
        return self.image_size


def build_registry(specs: Iterable[FamilySpec]) -> Mapping[Family, FamilySpec]:
    registry: dict[Family, FamilySpec] = {}
    for spec in specs:
        if spec.family in registry:
            raise ValueError(f"model family {spec.family.value!r} is registered twice")
        registry[spec.family] = spec
    return MappingProxyType(registry)


SD_SCALE_FACTOR = 0.18215
SDXL_SCALE_FACTOR = 0.13025

FAMILIES: Mapping[Family, FamilySpec] = build_registry([
    FamilySpec(Family.SD1, "v1-inference.yaml", 512, SD_SCALE_FACTOR),
    FamilySpec(Family.SD1_INPAINT, "v1-inpainting-inference.yaml", 512, SD_SCALE_FACTOR, is_inpaint=True),
    FamilySpec(Family.SD2, "v2-inference.yaml", 512, SD_SCALE_FACTOR, needs_prediction_probe=True,
               v_prediction_yaml="v2-inference-v.yaml", v_prediction_image_size=768),
    FamilySpec(Family.SD2_INPAINT, "v2-inpainting-inference.yaml", 512, SD_SCALE_FACTOR, is_inpaint=True),
    FamilySpec(Family.SDXL, "sd_xl_base.yaml", 1024, SDXL_SCALE_FACTOR),
    FamilySpec(Family.SDXL_INPAINT, "sd_xl_inpaint.yaml", 1024, SDXL_SCALE_FACTOR, is_inpaint=True),
    FamilySpec(Family.SDXL_REFINER, "sd_xl_refiner.yaml", 1024, SDXL_SCALE_FACTOR),
])


# --- detection from a state dict's keys and shapes -------------------------------------------------

# Layouts people drop into the checkpoint folder by mistake, recognised so the error can say what it is.
_NON_CHECKPOINT_LAYOUTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an SD3 model (MMDiT x_embedder)", re.compile(r"(^|\.)x_embedder\.")),
    ("a Flux model (double_blocks)", re.compile(r"(^|\.)double_blocks\.")),
    ("a LoRA/LyCORIS file", re.compile(r"(^lora_|\.lora_(up|down|A|B)\.|\.alpha$|^lycoris_|\.hada_w1_a$)")),
    ("a textual-inversion embedding", re.compile(r"^(emb_params|clip_[lg])$|^string_to_param\.")),
)
_VAE_ROOTS = frozenset({"encoder", "decoder", "quant_conv", "post_quant_conv", "first_stage_model", "vae"})


def _describe_keys(keys: Iterable[str]) -> str:
    keys = list(keys)
    if not keys:
        return "an empty state dict"
    for label, pattern in _NON_CHECKPOINT_LAYOUTS:
        if any(pattern.search(key) for key in keys):
            return f"{label} ({len(keys)} tensors)"
    roots = sorted({key.split(".", 1)[0] for key in keys})
    if set(roots) <= _VAE_ROOTS:
        return f"a standalone VAE ({len(keys)} tensors)"
    shown = ", ".join(roots[:6]) + (", ..." if len(roots) > 6 else "")
    return f"{len(keys)} tensors under {shown}"


def _unknown(shapes: Mapping[str, tuple[int, ...]], reason: str) -> UnknownArchitectureError:
    return UnknownArchitectureError(
        f"not a Stable Diffusion 1.x/2.x/XL checkpoint: {reason}; found {_describe_keys(shapes)}. "
        f"Expected '{UNET_CONV_IN_KEY}' and a text encoder under 'cond_stage_model.transformer.' (SD1), "
        f"'cond_stage_model.model.' (SD2) or 'conditioner.embedders.' (SDXL)."
    )


def _has_prefix(shapes: Mapping[str, Any], prefix: str) -> bool:
    return any(key.startswith(prefix) for key in shapes)


def unet_input_channels(shapes: Mapping[str, tuple[int, ...]]) -> int:
    shape = shapes.get(UNET_CONV_IN_KEY)
    if shape is None or len(shape) != 4:
        raise _unknown(shapes, f"no UNet input convolution '{UNET_CONV_IN_KEY}'")
    return int(shape[1])


def detect_family(shapes: Mapping[str, tuple[int, ...]]) -> Family:
    """The family of a checkpoint, from its key names and tensor shapes alone."""
    if _has_prefix(shapes, UNET_PREFIX + "x_embedder.") or _has_prefix(shapes, UNET_PREFIX + "double_blocks."):
        raise _unknown(shapes, "its diffusion model is a transformer, not a UNet")
    channels = unet_input_channels(shapes)
    if channels not in (LATENT_CHANNELS, INPAINT_CHANNELS):
        raise _unknown(shapes, f"its UNet takes {channels} input channels (only 4, or 9 for inpainting, are supported; "
                               "8 is instruct-pix2pix, 5 a depth model, 7 the x4 upscaler)")
    inpaint = channels == INPAINT_CHANNELS
    if SDXL_BASE_MARKER_KEY in shapes:
        return Family.SDXL_INPAINT if inpaint else Family.SDXL
    if SDXL_REFINER_MARKER_KEY in shapes:
        if inpaint:
            raise _unknown(shapes, "an SDXL refiner with 9 input channels does not exist")
        return Family.SDXL_REFINER
    if UNET_PREFIX + "label_emb.0.0.weight" in shapes:
        raise _unknown(shapes, "its UNet has a class embedding outside SDXL (an unCLIP model)")
    if _has_prefix(shapes, OPEN_CLIP_PREFIX):
        return Family.SD2_INPAINT if inpaint else Family.SD2
    if _has_prefix(shapes, CLIP_L_PREFIX):
        return Family.SD1_INPAINT if inpaint else Family.SD1
    raise _unknown(shapes, "it has UNet weights but no text encoder this application knows")


def sidecar_yaml_path(checkpoint_path: Path | str) -> Path | None:
    """The `<name>.yaml` next to a checkpoint, which (as in A1111) overrides detection when present."""
    candidate = Path(checkpoint_path).with_suffix(".yaml")
    return candidate if candidate.is_file() else None


# --- detection from an original LDM yaml -----------------------------------------------------------

def _model_params(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    model = cfg.get("model") if isinstance(cfg, Mapping) else None
    params = model.get("params") if isinstance(model, Mapping) else None
    if not isinstance(params, Mapping):
        raise UnknownArchitectureError("the yaml has no 'model.params' mapping, so it is not an LDM config")
    return params


def unet_params_of(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    """The UNet's params: `unet_config` in the ldm (SD1/SD2) layout, `network_config` in the sgm (SDXL) one."""
    params = _model_params(cfg)
    section = params.get("unet_config") or params.get("network_config")
    unet = section.get("params") if isinstance(section, Mapping) else None
    if not isinstance(unet, Mapping):
        raise UnknownArchitectureError("the yaml has neither 'unet_config' nor 'network_config' params")
    return unet


def target_name(section: Any) -> str:
    """The class name a yaml section instantiates ('ldm.modules...FrozenCLIPEmbedder' -> 'FrozenCLIPEmbedder')."""
    target = section.get("target", "") if isinstance(section, Mapping) else ""
    return str(target).rsplit(".", 1)[-1]


def text_embedder_sections(cfg: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    """(embedder index, section) for each text encoder: SDXL's conditioner entries fed with 'txt',
    or SD1/SD2's single cond_stage_config (index 0)."""
    params = _model_params(cfg)
    conditioner = params.get("conditioner_config")
    if isinstance(conditioner, Mapping):
        models = (conditioner.get("params") or {}).get("emb_models") or []
        return [(index, model) for index, model in enumerate(models)
                if isinstance(model, Mapping) and model.get("input_key") == "txt"]
    cond_stage = params.get("cond_stage_config")
    return [(0, cond_stage)] if isinstance(cond_stage, Mapping) else []


def _context_dim(unet: Mapping[str, Any]) -> int | None:
    context = unet.get("context_dim")
    if isinstance(context, (list, tuple)):
        return int(context[0]) if context else None
    return int(context) if context is not None else None


class LdmModelKind(NamedTuple):
    family: Family
    prediction_type: PredictionType


def family_from_ldm_yaml(cfg: Mapping[str, Any]) -> LdmModelKind:
    """The family and prediction type an LDM yaml describes (a `family, prediction = ...` pair)."""
    return LdmModelKind(_family_of_yaml(cfg), prediction_type_from_ldm_yaml(cfg))


def _family_of_yaml(cfg: Mapping[str, Any]) -> Family:
    params = _model_params(cfg)
    unet = unet_params_of(cfg)
    channels = int(unet.get("in_channels", LATENT_CHANNELS))
    if channels not in (LATENT_CHANNELS, INPAINT_CHANNELS):
        raise UnknownArchitectureError(f"the yaml's UNet takes {channels} input channels; only 4 or 9 are supported")
    inpaint = channels == INPAINT_CHANNELS
    encoders = [target_name(section) for _, section in text_embedder_sections(cfg)]

    is_sdxl_layout = "network_config" in params or "conditioner_config" in params or "adm_in_channels" in unet
    if is_sdxl_layout:
        has_clip_l = "FrozenCLIPEmbedder" in encoders
        is_refiner = not has_clip_l if encoders else _context_dim(unet) == 1280
        if is_refiner:
            if inpaint:
                raise UnknownArchitectureError("the yaml describes an SDXL refiner with 9 input channels")
            return Family.SDXL_REFINER
        return Family.SDXL_INPAINT if inpaint else Family.SDXL

    is_open_clip = any("OpenCLIP" in name for name in encoders)
    if is_open_clip or unet.get("use_linear_in_transformer") or _context_dim(unet) == 1024:
        return Family.SD2_INPAINT if inpaint else Family.SD2
    if encoders and encoders != ["FrozenCLIPEmbedder"]:
        raise UnknownArchitectureError(f"unsupported text encoder {encoders[0]!r} in the yaml")
    return Family.SD1_INPAINT if inpaint else Family.SD1


def prediction_type_from_ldm_yaml(cfg: Mapping[str, Any]) -> PredictionType:
    """'v_prediction' when the yaml says parameterization "v" (ldm) or uses VScaling (sgm), else 'epsilon'."""
    params = _model_params(cfg)
    parameterization = str(params.get("parameterization", "eps"))
    if parameterization == "v":
        return "v_prediction"
    if parameterization != "eps":
        raise UnknownArchitectureError(f"unsupported parameterization {parameterization!r} in the yaml")
    denoiser = (params.get("denoiser_config") or {}).get("params") or {}
    scaling = target_name(denoiser.get("scaling_config"))
    return "v_prediction" if scaling.startswith("VScaling") else "epsilon"
