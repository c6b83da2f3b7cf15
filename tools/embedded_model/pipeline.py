"""The whole run, stage by stage: VAE -> latent pool + scale -> UNet/text encoder -> samples -> export -> logs."""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tools.embedded_model import export, run_log, sampling, train
from tools.embedded_model.config import TrainConfig, config_to_dict, config_to_json
from tools.embedded_model.models import build_networks, load_tokenizer, parameter_count


SAMPLE_SEEDS = 2


@dataclass(frozen=True)
class RunResult:
    checkpoint: Path
    yaml: Path
    log_json: Path
    log_markdown: Path
    samples: Path
    record: dict


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return device


def prepare_torch(device: torch.device, seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # Fixed shapes throughout, so cuDNN's one-time autotuning pays for itself within seconds.
        torch.backends.cudnn.benchmark = True


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(config: TrainConfig, out_dir: Path, echo: train.Echo = print) -> RunResult:
    started = time.perf_counter()
    device = resolve_device(config.device)
    export.check_channels(config)  # fail before training, not after
    prepare_torch(device, config.seed)
    echo(f"config:\n{config_to_json(config)}")
    environment = run_log.environment(device)
    echo(f"environment: {environment}")

    tokenizer = load_tokenizer(config.tokenizer_dir)
    networks = build_networks(config)
    parameters = {"vae": parameter_count(networks.vae), "text_encoder": parameter_count(networks.text_encoder),
                  "unet": parameter_count(networks.unet)}
    echo(f"parameters: {parameters} (fp16 file about {2 * sum(parameters.values()) / 1e6:.1f} MB)")
    if 2 * sum(parameters.values()) > config.max_file_bytes:
        raise ValueError(f"the networks have {sum(parameters.values()):,} parameters: over "
                         f"{config.max_file_bytes:,} bytes in fp16")

    vae_log = train.train_vae(networks.vae, config, device, echo)

    unet_budget = train.Budget(config.unet.seconds, config.unet.max_steps)
    pool, pool_info = train.build_latent_pool(networks.vae, tokenizer, config, device, echo)
    scale_factor = train.latent_scale_factor(pool, config.seed + 3)
    echo(f"[pool] scale_factor = {scale_factor:.6f}")
    empty_ids = train.tokenize(tokenizer, [""], config.text.max_length)[0]
    unet_log, ema = train.train_unet(networks, pool, scale_factor, empty_ids, config, device, unet_budget, echo)
    del pool

    # From here on the networks hold the EMA weights: they are what is sampled and exported.
    ema.copy_to(list(networks.unet.parameters()) + list(networks.text_encoder.parameters()))
    networks.unet.eval().requires_grad_(False)
    networks.text_encoder.eval().requires_grad_(False)
    train.assert_finite(networks.unet, "unet (EMA)")
    train.assert_finite(networks.text_encoder, "text encoder (EMA)")

    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = list(config.sample.prompts)
    rows = [sampling.sample_images(networks, tokenizer, prompts, scale_factor, config, device, config.sample.seed + r)
            for r in range(SAMPLE_SEEDS)]
    rows += sampling.reconstruction_rows(networks.vae, config, device, len(prompts), config.sample.seed)
    samples_path = sampling.save_grid(rows, out_dir / f"{config.name}.samples.png")
    echo(f"samples: {samples_path}")

    checkpoint, sidecar = export.export_checkpoint(networks, config, scale_factor, out_dir)
    verified = export.verify_checkpoint(checkpoint, networks, config)
    echo(f"exported {checkpoint} ({verified['bytes']:,} bytes, {verified['keys']} keys) and {sidecar}")

    record = {
        "name": config.name,
        "config": config_to_dict(config),
        "environment": environment,
        "parameters": parameters,
        "stages": {"vae": run_log.stage_dict(vae_log), "unet": run_log.stage_dict(unet_log)},
        "latent_pool": pool_info,
        "scale_factor": scale_factor,
        "samples": {"path": samples_path.name, "prompts": prompts, "seeds": [config.sample.seed + r for r in range(SAMPLE_SEEDS)]},
        "export": {"checkpoint": checkpoint.name, "yaml": sidecar.name, "sha256": sha256_of(checkpoint), **verified},
        "total_seconds": round(time.perf_counter() - started, 3),
    }
    log_json = run_log.write_json(out_dir / f"{config.name}.train-log.json", record)
    log_markdown = out_dir / f"{config.name}.train-log.md"
    log_markdown.write_text(run_log.summary_markdown(record, config), encoding="utf-8")
    echo(f"logs: {log_json}, {log_markdown}; total {record['total_seconds']:.1f}s")
    return RunResult(checkpoint, sidecar, log_json, log_markdown, samples_path, record)
