"""Writing the trained networks as one SD 1.x original single-file checkpoint plus its sidecar yaml.

The key layout comes from the project's own converter (modules.models.ldm_layout), so the file is read back by
exactly the code that reads any user's SD 1.x checkpoint. The yaml is an original LDM config with the
tiny sizes; the text encoder's sizes are extra keys under cond_stage_config.params, because the stock
FrozenCLIPEmbedder has none (it always means CLIP ViT-L).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from modules.models import ldm_layout
from tools.embedded_model.config import TrainConfig
from tools.embedded_model.models import Networks, latent_size

REQUIRED_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")


def original_state_dict(networks: Networks, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    unet = ldm_layout.unet_to_original(networks.unet.state_dict(), networks.unet.config)
    vae = ldm_layout.vae_to_original(networks.vae.state_dict(), networks.vae.config)
    clip_l = ldm_layout.clip_text_to_original(networks.text_encoder.state_dict())
    joined = ldm_layout.join_original(unet=unet, vae=vae, clip_l=clip_l, layout="sd1")
    # Integer buffers (CLIP's position_ids) keep their dtype.
    return {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in joined.items()}


def attention_resolutions(config: TrainConfig) -> list[int]:
    # Downsampling factors of the levels with cross-attention: all but the deepest.
    return [2 ** level for level in range(len(config.unet.block_out_channels) - 1)]


def ldm_yaml(config: TrainConfig, scale_factor: float) -> dict:
    unet, vae, text, schedule = config.unet, config.vae, config.text, config.schedule
    model_channels = unet.block_out_channels[0]
    vae_base = vae.block_out_channels[0]
    return {
        "model": {
            "base_learning_rate": unet.learning_rate,
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                "linear_start": schedule.beta_start,
                "linear_end": schedule.beta_end,
                "num_timesteps_cond": 1,
                "log_every_t": 200,
                "timesteps": schedule.num_train_timesteps,
                "first_stage_key": "jpg",
                "cond_stage_key": "txt",
                "image_size": latent_size(config),
                "channels": vae.latent_channels,
                "cond_stage_trainable": False,
                "conditioning_key": "crossattn",
                "monitor": "val/loss_simple_ema",
                "scale_factor": float(scale_factor),
                "use_ema": False,
                "unet_config": {
                    "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                    "params": {
                        "image_size": latent_size(config),
                        "in_channels": vae.latent_channels,
                        "out_channels": vae.latent_channels,
                        "model_channels": model_channels,
                        "attention_resolutions": attention_resolutions(config),
                        "num_res_blocks": unet.layers_per_block,
                        "channel_mult": [c // model_channels for c in unet.block_out_channels],
                        "num_heads": unet.attention_heads,
                        "use_spatial_transformer": True,
                        "transformer_depth": 1,
                        "context_dim": text.hidden_size,
                        "use_checkpoint": False,
                        "legacy": False,
                    },
                },
                "first_stage_config": {
                    "target": "ldm.models.autoencoder.AutoencoderKL",
                    "params": {
                        "embed_dim": vae.latent_channels,
                        "monitor": "val/rec_loss",
                        "ddconfig": {
                            "double_z": True,
                            "z_channels": vae.latent_channels,
                            "resolution": config.data.image_size,
                            "in_channels": 3,
                            "out_ch": 3,
                            "ch": vae_base,
                            "ch_mult": [c // vae_base for c in vae.block_out_channels],
                            "num_res_blocks": vae.layers_per_block,
                            "attn_resolutions": [],
                            "dropout": 0.0,
                        },
                        "lossconfig": {"target": "torch.nn.Identity"},
                    },
                },
                "cond_stage_config": {
                    "target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                    "params": {
                        "width": text.hidden_size,
                        "layers": text.layers,
                        "heads": text.heads,
                        "vocab_size": text.vocab_size,
                        "max_length": text.max_length,
                        "act": text.activation,
                    },
                },
            },
        }
    }


def check_channels(config: TrainConfig) -> None:
    """The yaml states channels as multiples of a base; refuse sizes it cannot express."""
    for name, channels in (("unet", config.unet.block_out_channels), ("vae", config.vae.block_out_channels)):
        if any(c % channels[0] for c in channels):
            raise ValueError(f"{name} channels {channels} are not multiples of the first level's")


def _atomic_write(path: Path, write) -> None:
    # A half-written checkpoint in models/ would be offered to users; write beside it, then rename.
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.chmod(partial, 0o644)
    os.replace(partial, path)


def export_checkpoint(networks: Networks, config: TrainConfig, scale_factor: float, out_dir: Path) -> tuple[Path, Path]:
    """Write `<name>.safetensors` (fp16, original keys) and `<name>.yaml`; returns both paths."""
    check_channels(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / f"{config.name}.safetensors"
    sidecar = out_dir / f"{config.name}.yaml"
    state = original_state_dict(networks)
    metadata = {"format": "pt", "name": config.name, "scale_factor": repr(float(scale_factor))}
    _atomic_write(checkpoint, lambda p: save_file(state, str(p), metadata=metadata))
    text = yaml.safe_dump(ldm_yaml(config, scale_factor), sort_keys=False)
    _atomic_write(sidecar, lambda p: p.write_text(text, encoding="utf-8"))
    return checkpoint, sidecar


def verify_checkpoint(path: Path, networks: Networks, config: TrainConfig) -> dict:
    """Read the file back through the project's converter into the live networks' key sets.

    Proves the file is complete and one-to-one with the architecture (every parameter present,
    nothing extra) and stays under the size limit; returns numbers for the run log.
    """
    state = load_file(str(path))
    missing_prefixes = [p for p in REQUIRED_PREFIXES if not any(k.startswith(p) for k in state)]
    if missing_prefixes:
        raise ValueError(f"{path}: no keys under {missing_prefixes}")
    parts = ldm_layout.split_original(state)
    if parts["open_clip"] or parts["other"]:
        raise ValueError(f"{path}: unexpected keys {list(parts['other'])[:3] + list(parts['open_clip'])[:3]}")
    converted = {
        "unet": (ldm_layout.unet_to_diffusers(parts["unet"], networks.unet.config), networks.unet),
        "vae": (ldm_layout.vae_to_diffusers(parts["vae"], networks.vae.config), networks.vae),
        "clip_l": (ldm_layout.clip_text_to_diffusers(parts["clip_l"]), networks.text_encoder),
    }
    for name, (weights, module) in converted.items():
        expected = module.state_dict()
        params = {n for n, _ in module.named_parameters()}
        missing = sorted(params - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{path}: {name} does not match its network: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        for key in params:
            if weights[key].shape != expected[key].shape:
                raise ValueError(f"{path}: {name}.{key} has shape {tuple(weights[key].shape)}, "
                                 f"expected {tuple(expected[key].shape)}")
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise ValueError(f"{path}: non-finite weights")
    size = path.stat().st_size
    if size > config.max_file_bytes:
        raise ValueError(f"{path}: {size} bytes, over the {config.max_file_bytes} byte limit")
    return {"keys": len(state), "bytes": size, "unet_keys": len(parts["unet"]), "vae_keys": len(parts["vae"]),
            "text_encoder_keys": len(parts["clip_l"])}
