"""The three networks of the embedded model, built from explicit configs in the SD 1.x layout.

Channel counts stay multiples of 32 because the original LDM code (and so every loader that reads
its yaml) hard-codes GroupNorm with 32 groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from tools.embedded_model.config import ScheduleConfig, TextEncoderConfig, TrainConfig, UnetConfig, VaeConfig

NORM_GROUPS = 32
BOS_TOKEN_ID, EOS_TOKEN_ID = 49406, 49407


@dataclass
class Networks:
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel


def vae_config(config: VaeConfig, image_size: int) -> dict:
    levels = len(config.block_out_channels)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": list(config.block_out_channels),
        "layers_per_block": config.layers_per_block,
        "latent_channels": config.latent_channels,
        "norm_num_groups": NORM_GROUPS,
        "sample_size": image_size,
    }


def unet_config(config: UnetConfig, latent_channels: int, latent_size: int, context_dim: int) -> dict:
    # SD 1.x: cross-attention on every level but the deepest.
    levels = len(config.block_out_channels)
    return {
        "sample_size": latent_size,
        "in_channels": latent_channels,
        "out_channels": latent_channels,
        "block_out_channels": list(config.block_out_channels),
        "layers_per_block": config.layers_per_block,
        "down_block_types": ["CrossAttnDownBlock2D"] * (levels - 1) + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (levels - 1),
        "cross_attention_dim": context_dim,
        "attention_head_dim": config.attention_heads,
        "norm_num_groups": NORM_GROUPS,
    }


def text_encoder_config(config: TextEncoderConfig) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        max_position_embeddings=config.max_length,
        hidden_act=config.activation,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=EOS_TOKEN_ID,
    )


def latent_size(config: TrainConfig) -> int:
    return config.data.image_size // 2 ** (len(config.vae.block_out_channels) - 1)


def build_networks(config: TrainConfig) -> Networks:
    """Freshly initialised networks; seed torch first for reproducible weights."""
    vae = AutoencoderKL.from_config(vae_config(config.vae, config.data.image_size))
    text_encoder = CLIPTextModel(text_encoder_config(config.text))
    unet = UNet2DConditionModel.from_config(
        unet_config(config.unet, config.vae.latent_channels, latent_size(config), config.text.hidden_size))
    return Networks(vae=vae, text_encoder=text_encoder, unet=unet)


def load_tokenizer(directory: str) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(directory, local_files_only=True)


def _scheduler_kwargs(config: ScheduleConfig) -> dict:
    return {"num_train_timesteps": config.num_train_timesteps, "beta_start": config.beta_start,
            "beta_end": config.beta_end, "beta_schedule": "scaled_linear"}


def training_alphas_cumprod(config: ScheduleConfig) -> torch.Tensor:
    """ᾱ_t of the SD discrete schedule, from the same scheduler family the samplers use."""
    return DDPMScheduler(**_scheduler_kwargs(config)).alphas_cumprod.clone()


def sampling_scheduler(config: ScheduleConfig) -> DDIMScheduler:
    # SD 1.x's own DDIM settings.
    return DDIMScheduler(**_scheduler_kwargs(config), clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
