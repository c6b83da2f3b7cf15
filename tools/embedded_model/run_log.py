"""The record of a training run: `<name>.train-log.json` and a short `<name>.train-log.md` beside the checkpoint."""

from __future__ import annotations

import dataclasses
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from tools.embedded_model.config import TrainConfig, config_to_dict
from tools.embedded_model.train import StageLog


def environment(device: torch.device) -> dict:
    import diffusers
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def stage_dict(log: StageLog) -> dict:
    data = dataclasses.asdict(log)
    data["images_per_second"] = round(log.images_per_second, 1)
    return data


def write_json(path: Path, record: dict) -> Path:
    # allow_nan=False: a NaN that slipped through fails loudly here instead of writing invalid JSON.
    path.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def _last_loss(stage: dict) -> str:
    losses = [p["loss"] for p in stage["curve"] if p["loss"] is not None]
    return f"{losses[-1]:.5f}" if losses else "n/a"


def summary_markdown(record: dict, config: TrainConfig) -> str:
    env, stages, export = record["environment"], record["stages"], record["export"]
    vae, unet = stages["vae"], stages["unet"]
    lines = [
        f"# {config.name}: training summary",
        "",
        f"- Device: {env['device_name']} ({env['device']}), torch {env['torch']}, diffusers {env['diffusers']}, "
        f"transformers {env['transformers']}; started {env['started_utc']}.",
        f"- Total wall time: {record['total_seconds']:.1f} s.",
        f"- VAE: {vae['steps']} steps, {vae['seconds']:.1f} s, {vae['images_per_second']:.0f} img/s, "
        f"last loss {_last_loss(vae)}, validation L1 {vae['extra']['validation_l1']:.4f}, "
        f"PSNR {vae['extra']['validation_psnr_db']:.2f} dB.",
        f"- Latent pool: {record['latent_pool']['scenes']} scenes, {record['latent_pool']['seconds']:.1f} s; "
        f"scale_factor {record['scale_factor']:.5f}.",
        f"- UNet + text encoder: {unet['steps']} steps, {unet['seconds']:.1f} s (stage, pool included), "
        f"{unet['extra']['training_images_per_second']:.0f} img/s while training, last loss {_last_loss(unet)}, "
        f"skipped steps {unet['skipped_steps']}.",
        "- Parameters: " + ", ".join(f"{k} {v:,}" for k, v in record["parameters"].items()) + ".",
        f"- Checkpoint: `{export['checkpoint']}` ({export['bytes']:,} bytes, {export['keys']} keys, fp16), "
        f"sidecar `{export['yaml']}`, sha256 {export['sha256'][:10]}.",
        f"- Samples: `{record['samples']['path']}` (DDIM {config.sample.steps} steps, CFG "
        f"{config.sample.guidance_scale}; columns are prompts, the first rows are seeds; the last two rows are "
        f"dataset images and their VAE reconstructions):",
    ]
    lines += [f"  {i + 1}. {prompt}" for i, prompt in enumerate(record["samples"]["prompts"])]
    lines += ["", "Config:", "", "```json", json.dumps(config_to_dict(config), indent=2), "```", ""]
    return "\n".join(lines)
