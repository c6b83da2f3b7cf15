"""Tiny Stable Diffusion models of every family, with random weights, for fast offline tests.

Families: "sd1", "sd1_inpaint" (9-channel UNet input), "sd2_v" (v-prediction, OpenCLIP text encoder, linear
transformer projections), "sdxl" (two text encoders, size/crop conditioning, transformer depth 2),
"sdxl_refiner" (OpenCLIP bigG only, aesthetic-score conditioning). Each keeps its family's real structure at a
few channels wide, so the original key layout is the real one; only the block counts are smaller.

`tiny_ldm_yaml` writes the sidecar config in the original LDM/SGM yaml format. Real yaml files carry no text
encoder sizes (the class implies them); these files add them, so a loader can build every module from the yaml.
The extra keys sit under `model.params.cond_stage_config.params` (SD 1.x/2.x) or under each
`model.params.conditioner_config.params.emb_models[i].params` (SDXL):

- width: hidden size of the text transformer
- layers: number of transformer layers (residual blocks)
- heads: attention heads
- vocab_size: token embedding rows (49408, the CLIP BPE vocabulary)
- max_length: positions (77)
- act: "quick_gelu" (OpenAI CLIP ViT-L) or "gelu" (OpenCLIP ViT-H / ViT-bigG)
- projection_dim: output size of the pooled-text projection (SDXL's OpenCLIP bigG only)

The MLP inside each layer is 4 x width, as in every CLIP text tower, so it has no key of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from modules.models import ldm_layout

FAMILIES = ("sd1", "sd1_inpaint", "sd2_v", "sdxl", "sdxl_refiner")
FAMILY_LAYOUT = {"sd1": "sd1", "sd1_inpaint": "sd1", "sd2_v": "sd2", "sdxl": "sdxl", "sdxl_refiner": "sdxl_refiner"}
VOCAB_SIZE = 49408
MAX_LENGTH = 77
SD_SCALE_FACTOR = 0.18215
SDXL_SCALE_FACTOR = 0.13025
ADDITION_TIME_EMBED_DIM = 8
HEAD_CHANNELS = 8  # SD2/SDXL fix the channels per head (64 in the real models), not the head count


@dataclass(frozen=True)
class TextSpec:
    """One text encoder. kind "clip" is the OpenAI CLIP layout, "open_clip" the OpenCLIP one."""

    kind: str
    width: int
    layers: int
    heads: int
    act: str
    projection_dim: int | None = None

    def transformers_config(self) -> Any:
        from transformers import CLIPTextConfig

        return CLIPTextConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=self.width,
            intermediate_size=4 * self.width,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            max_position_embeddings=MAX_LENGTH,
            hidden_act=self.act,
            projection_dim=self.projection_dim or self.width,
        )

    def yaml_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "width": self.width, "layers": self.layers, "heads": self.heads,
            "vocab_size": VOCAB_SIZE, "max_length": MAX_LENGTH, "act": self.act,
        }
        if self.projection_dim is not None:
            params["projection_dim"] = self.projection_dim
        return params


CLIP_L = TextSpec(kind="clip", width=32, layers=2, heads=4, act="quick_gelu")
OPEN_CLIP_H = TextSpec(kind="open_clip", width=64, layers=3, heads=4, act="gelu")
OPEN_CLIP_BIGG = TextSpec(kind="open_clip", width=64, layers=3, heads=4, act="gelu", projection_dim=40)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def tiny_text_specs(family: str) -> tuple[TextSpec, ...]:
    _check_family(family)
    return {
        "sd1": (CLIP_L,), "sd1_inpaint": (CLIP_L,), "sd2_v": (OPEN_CLIP_H,),
        "sdxl": (CLIP_L, OPEN_CLIP_BIGG), "sdxl_refiner": (OPEN_CLIP_BIGG,),
    }[family]


def _heads_for(channels: tuple[int, ...]) -> tuple[int, ...]:
    # diffusers calls this "attention_head_dim" but reads it as the head count per level.
    return tuple(c // HEAD_CHANNELS for c in channels)


def tiny_unet_config(family: str) -> dict[str, Any]:
    """UNet2DConditionModel config of the family's tiny model."""
    _check_family(family)
    common: dict[str, Any] = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 2}
    sd_shape = {
        "block_out_channels": (32, 64),
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    }
    if family in ("sd1", "sd1_inpaint"):
        return {**common, **sd_shape, "in_channels": 9 if family == "sd1_inpaint" else 4,
                "cross_attention_dim": CLIP_L.width, "attention_head_dim": 8}
    if family == "sd2_v":
        return {**common, **sd_shape, "cross_attention_dim": OPEN_CLIP_H.width,
                "attention_head_dim": _heads_for(sd_shape["block_out_channels"]), "use_linear_projection": True}
    text_time = {"addition_embed_type": "text_time", "addition_time_embed_dim": ADDITION_TIME_EMBED_DIM,
                 "use_linear_projection": True}
    if family == "sdxl":
        # Like SDXL: no attention at the top level, deeper transformers below it.
        # Size conditioning embeds 6 numbers: original size, crop top-left, target size.
        return {**common, **text_time, "block_out_channels": (32, 64),
                "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
                "transformer_layers_per_block": (1, 2), "attention_head_dim": _heads_for((32, 64)),
                "cross_attention_dim": CLIP_L.width + OPEN_CLIP_BIGG.width,
                "projection_class_embeddings_input_dim": 6 * ADDITION_TIME_EMBED_DIM + OPEN_CLIP_BIGG.projection_dim}
    # Like the refiner: attention only in the middle levels; conditioning on original size, crop, aesthetic score.
    return {**common, **text_time, "block_out_channels": (32, 64, 64),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "transformer_layers_per_block": 2, "attention_head_dim": _heads_for((32, 64, 64)),
            "cross_attention_dim": OPEN_CLIP_BIGG.width,
            "projection_class_embeddings_input_dim": 5 * ADDITION_TIME_EMBED_DIM + OPEN_CLIP_BIGG.projection_dim}


def tiny_vae_config(family: str) -> dict[str, Any]:
    """AutoencoderKL config: 4 levels, so the latent is 1/8 of the image as in SD."""
    _check_family(family)
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 64, "layers_per_block": 2,
        "block_out_channels": (32, 32, 64, 64),
        "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
        "scaling_factor": SDXL_SCALE_FACTOR if family.startswith("sdxl") else SD_SCALE_FACTOR,
    }


def _perturb(module: torch.nn.Module, generator: torch.Generator) -> None:
    # Fresh norms are all ones and zeros; a little noise makes every tensor distinct, so a test can tell two
    # swapped keys apart, while staying close to the default init so the models still run sanely.
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 0.02)


def _text_encoder(spec: TextSpec) -> torch.nn.Module:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    model_class = CLIPTextModelWithProjection if spec.projection_dim is not None else CLIPTextModel
    return model_class(spec.transformers_config())


def tiny_diffusers_components(family: str, seed: int = 0) -> dict[str, Any]:
    """{"unet", "vae", "text_encoders": [...]} with random weights, in eval mode, in the diffusers layout.

    SDXL's list is [CLIPTextModel (ViT-L), CLIPTextModelWithProjection (bigG)]; the refiner's is [bigG].
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    _check_family(family)
    with torch.random.fork_rng(devices=[]):  # keep the caller's global RNG untouched
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(tiny_unet_config(family))
        vae = AutoencoderKL.from_config(tiny_vae_config(family))
        text_encoders = [_text_encoder(spec) for spec in tiny_text_specs(family)]
    generator = torch.Generator().manual_seed(seed + 1)
    for module in (unet, vae, *text_encoders):
        _perturb(module, generator)
        module.eval()
    return {"unet": unet, "vae": vae, "text_encoders": text_encoders}


def _sd_schedule() -> dict[str, Tensor]:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return {"betas": betas.float(), "alphas_cumprod": torch.cumprod(1.0 - betas, dim=0).float()}


def _realistic_extras(family: str, seed: int) -> dict[str, Tensor]:
    """Keys that real single files carry beside the weights and that loaders must skip."""
    layout = FAMILY_LAYOUT[family]
    prefixes = ldm_layout.TEXT_PREFIXES[layout]
    extras: dict[str, Tensor] = {}
    if "clip_l" in prefixes:
        extras[prefixes["clip_l"] + "text_model.embeddings.position_ids"] = torch.arange(MAX_LENGTH).unsqueeze(0)
    if "open_clip" in prefixes:
        extras[prefixes["open_clip"] + "logit_scale"] = torch.tensor(4.6052)
    if layout == "sd2":
        # SD2 files keep the ViT-H text projection, which SD never uses.
        width = OPEN_CLIP_H.width
        generator = torch.Generator().manual_seed(seed + 2)
        extras[prefixes["open_clip"] + "text_projection"] = torch.randn(width, width, generator=generator)
    if layout in ("sd1", "sd2"):
        extras.update(_sd_schedule())
        extras["model_ema.decay"] = torch.tensor(0.9999)
        extras["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)
    return extras


def original_text_parts(family: str, text_encoders: list[torch.nn.Module]) -> dict[str, dict[str, Tensor]]:
    """The family's text encoders as original component dicts ({"clip_l": ..., "open_clip": ...})."""
    parts: dict[str, dict[str, Tensor]] = {}
    for spec, encoder in zip(tiny_text_specs(family), text_encoders, strict=True):
        if spec.kind == "clip":
            parts["clip_l"] = ldm_layout.clip_text_to_original(encoder.state_dict())
        else:
            parts["open_clip"] = ldm_layout.open_clip_text_to_original(encoder.state_dict())
    return parts


def tiny_original_state_dict(family: str, seed: int = 0, realistic_extras: bool = True) -> dict[str, Tensor]:
    """The tiny family as one original single-file state dict (what an A1111 user's file holds).

    With realistic_extras, it also holds what real files carry beside the weights: CLIP `position_ids`,
    OpenCLIP `logit_scale`, SD2's unused `text_projection`, and for SD 1.x/2.x the noise schedule and EMA
    bookkeeping.
    """
    components = tiny_diffusers_components(family, seed)
    unet, vae = components["unet"], components["vae"]
    state_dict = ldm_layout.join_original(
        unet=ldm_layout.unet_to_original(unet.state_dict(), unet.config),
        vae=ldm_layout.vae_to_original(vae.state_dict(), vae.config),
        layout=FAMILY_LAYOUT[family],
        **original_text_parts(family, components["text_encoders"]),
    )
    if realistic_extras:
        state_dict.update(_realistic_extras(family, seed))
    return state_dict


def save_checkpoint(state_dict: dict[str, Tensor], path: str | Path, fmt: str = "safetensors") -> Path:
    """Write a single-file checkpoint: safetensors, or a pickled {"state_dict": ...} as real .ckpt files are."""
    path = Path(path)
    # Copies so no two tensors share storage (safetensors refuses that) and views save as themselves.
    tensors = {k: v.detach().clone().contiguous() for k, v in state_dict.items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path))
    elif fmt == "ckpt":
        torch.save({"state_dict": tensors}, path)
    else:
        raise ValueError(f"unknown checkpoint format {fmt!r}; expected 'safetensors' or 'ckpt'")
    return path


# ------------------------------------------------------------------------------------------------------- yaml


def _unet_yaml_params(family: str) -> dict[str, Any]:
    config = tiny_unet_config(family)
    channels = config["block_out_channels"]
    base = channels[0]
    params: dict[str, Any] = {
        "use_checkpoint": False,
        "image_size": config["sample_size"],
        "in_channels": config["in_channels"],
        "out_channels": config["out_channels"],
        "model_channels": base,
        "attention_resolutions": [2**i for i, t in enumerate(config["down_block_types"]) if "CrossAttn" in t],
        "num_res_blocks": config["layers_per_block"],
        "channel_mult": [c // base for c in channels],
    }
    if config.get("use_linear_projection"):
        params.update(num_head_channels=HEAD_CHANNELS, use_linear_in_transformer=True)
    else:
        params["num_heads"] = config["attention_head_dim"]
    depth = config.get("transformer_layers_per_block", 1)
    params["transformer_depth"] = list(depth) if isinstance(depth, tuple) else depth
    params["context_dim"] = config["cross_attention_dim"]
    if config.get("addition_embed_type") == "text_time":
        params.update(adm_in_channels=config["projection_class_embeddings_input_dim"], num_classes="sequential",
                      spatial_transformer_attn_type="softmax-xformers")
    else:
        params["use_spatial_transformer"] = True
    params["legacy"] = False
    return params


def _first_stage_params(family: str) -> dict[str, Any]:
    config = tiny_vae_config(family)
    channels = config["block_out_channels"]
    ddconfig: dict[str, Any] = {
        "double_z": True,
        "z_channels": config["latent_channels"],
        "resolution": config["sample_size"],
        "in_channels": config["in_channels"],
        "out_ch": config["out_channels"],
        "ch": channels[0],
        "ch_mult": [c // channels[0] for c in channels],
        "num_res_blocks": config["layers_per_block"],
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    if family.startswith("sdxl"):
        ddconfig = {"attn_type": "vanilla-xformers", **ddconfig}
    return {"embed_dim": config["latent_channels"], "monitor": "val/rec_loss", "ddconfig": ddconfig,
            "lossconfig": {"target": "torch.nn.Identity"}}


def _ldm_model(family: str) -> dict[str, Any]:
    inpaint = family == "sd1_inpaint"
    params: dict[str, Any] = {
        "linear_start": 0.00085, "linear_end": 0.0120, "num_timesteps_cond": 1, "log_every_t": 200,
        "timesteps": 1000, "first_stage_key": "jpg", "cond_stage_key": "txt",
        "image_size": tiny_unet_config(family)["sample_size"], "channels": 4, "cond_stage_trainable": False,
        "conditioning_key": "hybrid" if inpaint else "crossattn", "monitor": "val/loss_simple_ema",
        "scale_factor": SD_SCALE_FACTOR, "use_ema": False,
    }
    if family == "sd2_v":
        params = {"parameterization": "v", **params}
    if inpaint:
        params["finetune_keys"] = None
    params["unet_config"] = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                             "params": _unet_yaml_params(family)}
    params["first_stage_config"] = {"target": "ldm.models.autoencoder.AutoencoderKL",
                                    "params": _first_stage_params(family)}
    if family == "sd2_v":
        cond = {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                "params": {"freeze": True, "layer": "penultimate", **OPEN_CLIP_H.yaml_params()}}
    else:
        cond = {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder", "params": CLIP_L.yaml_params()}
    params["cond_stage_config"] = cond
    target = "LatentInpaintDiffusion" if inpaint else "LatentDiffusion"
    return {"base_learning_rate": 1.0e-04, "target": f"ldm.models.diffusion.ddpm.{target}", "params": params}


def _timestep_embedder(input_key: str) -> dict[str, Any]:
    return {"is_trainable": False, "input_key": input_key,
            "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
            "params": {"outdim": ADDITION_TIME_EMBED_DIM}}


def _sgm_model(family: str) -> dict[str, Any]:
    bigg = {"is_trainable": False, "input_key": "txt",
            "target": "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2",
            "params": {"arch": "ViT-bigG-14", "version": "laion2b_s39b_b160k", "freeze": True,
                       "layer": "penultimate", "always_return_pooled": True, "legacy": False,
                       **OPEN_CLIP_BIGG.yaml_params()}}
    if family == "sdxl":
        # layer_idx indexes hidden_states (0 = embeddings), so layers - 1 is the penultimate layer's output.
        clip_l = {"is_trainable": False, "input_key": "txt",
                  "target": "sgm.modules.encoders.modules.FrozenCLIPEmbedder",
                  "params": {"layer": "hidden", "layer_idx": CLIP_L.layers - 1, **CLIP_L.yaml_params()}}
        emb_models = [clip_l, bigg, _timestep_embedder("original_size_as_tuple"),
                      _timestep_embedder("crop_coords_top_left"), _timestep_embedder("target_size_as_tuple")]
    else:
        emb_models = [bigg, _timestep_embedder("original_size_as_tuple"),
                      _timestep_embedder("crop_coords_top_left"), _timestep_embedder("aesthetic_score")]
    denoiser = {
        "target": "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser",
        "params": {
            "num_idx": 1000,
            "weighting_config": {"target": "sgm.modules.diffusionmodules.denoiser_weighting.EpsWeighting"},
            "scaling_config": {"target": "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling"},
            "discretization_config": {"target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"},
        },
    }
    return {
        "target": "sgm.models.diffusion.DiffusionEngine",
        "params": {
            "scale_factor": SDXL_SCALE_FACTOR,
            "disable_first_stage_autocast": True,
            "denoiser_config": denoiser,
            "network_config": {"target": "sgm.modules.diffusionmodules.openaimodel.UNetModel",
                               "params": _unet_yaml_params(family)},
            "conditioner_config": {"target": "sgm.modules.GeneralConditioner", "params": {"emb_models": emb_models}},
            "first_stage_config": {"target": "sgm.models.autoencoder.AutoencoderKLInferenceWrapper",
                                   "params": _first_stage_params(family)},
        },
    }


def tiny_ldm_yaml(family: str) -> str:
    """The original-format sidecar yaml (`<checkpoint>.yaml`) that describes the tiny family exactly.

    SD 1.x/2.x use the LDM names (unet_config, cond_stage_config); SDXL uses the SGM ones (network_config,
    conditioner_config), as the real files do.
    """
    _check_family(family)
    model = _sgm_model(family) if family.startswith("sdxl") else _ldm_model(family)
    return yaml.safe_dump({"model": model}, sort_keys=False)


def unet_inputs(unet: torch.nn.Module, seed: int = 0, batch: int = 2) -> dict[str, Tensor | None]:
    """call_unet's keyword arguments for a tiny SD1 or SDXL-base UNet at 8x8 latents (SDXL: with pooled text and
    its six size ids)."""
    g = torch.Generator().manual_seed(seed)
    config = unet.config
    tensors: dict[str, Tensor | None] = {
        "x": torch.randn(batch, config.in_channels, 8, 8, generator=g), "timestep": torch.full((batch,), 500.0),
        "context": torch.randn(batch, 77, config.cross_attention_dim, generator=g), "pooled": None, "time_ids": None}
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        tensors["pooled"] = torch.randn(batch, pooled, generator=g)
        tensors["time_ids"] = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * batch)
    return tensors


def load_tiny_model(folder: str | Path, family: str = "sd1", fmt: str = "safetensors", policy=None):
    """Write a tiny checkpoint of `family` with its sidecar yaml into `folder` and load it as the app does."""
    from modules.models.checkpoints import CheckpointInfo
    from modules.models.devices import DevicePolicy
    from modules.models.sd_loader import load_checkpoint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(tiny_original_state_dict(family), folder / f"tiny-{family}.{fmt}", fmt=fmt)
    (folder / f"tiny-{family}.yaml").write_text(tiny_ldm_yaml(family))
    return load_checkpoint(CheckpointInfo(path, path.name, None), policy or DevicePolicy.cpu())
