"""Fine-tunes the embedded model's VAE decoder on the CPU, and writes it back into the checkpoint.

The encoder, the latent space (so the yaml's scale_factor) and the UNet stay exactly as they are: the
UNet learned this encoder's latents, so only what turns latents into pixels may change. The decoder
(with post_quant_conv) trains on freshly drawn dataset scenes, encoded by the frozen encoder, with the
loss the autoencoder trained on minus its KL term (which concerns the encoder alone): L1 + L1 of image
gradients. The checkpoint is rewritten only if validation PSNR improves, and then only the
`first_stage_model.decoder.*` and `first_stage_model.post_quant_conv.*` tensors change.

    python -m tools.embedded_model.finetune_decoder \
        --checkpoint models/Stable-diffusion/embedded-shapes-v1.safetensors --seconds 1500
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from modules.models import ldm_layout
from modules.models import sd_loader
from modules.models.checkpoints import CheckpointInfo
from modules.models.devices import DevicePolicy
from tools.embedded_model import dataset
from tools.embedded_model.config import DataConfig
from tools.embedded_model.train import (
    MAX_GRAD_NORM,
    VALIDATION_IMAGES,
    Budget,
    _image_gradients,
    learning_rate_factor,
)

VAE_PREFIX = "first_stage_model."
DECODER_PREFIXES = ("decoder.", "post_quant_conv.")
# train.py's validation seed offset, so "before" here is measured the way the run measured itself.
VALIDATION_SEED_OFFSET = 1_000_003
VALIDATION_CHUNK = 32  # bounds memory: a 256-image fp32 decode at once would take several GB
COMPARISON_SCENES = 8


@dataclass(frozen=True)
class FinetuneSettings:
    seconds: float = 1500.0
    max_steps: int | None = None
    batch_size: int = 16  # about 2 images/s on 2 cores: larger batches would leave too few steps
    # The GPU run ended at 1.5e-4 (batch 128) with its loss still falling; 3e-4 at batch 16 made the
    # training loss rise, so this stays at the run's final rate.
    learning_rate: float = 1.5e-4
    warmup_steps: int = 10
    edge_weight: float = 0.5  # the run's VaeConfig.edge_weight
    seed: int = 20251201
    log_every: int = 20
    threads: int = 2
    validation_scenes: int = VALIDATION_IMAGES


@dataclass(frozen=True)
class Metrics:
    l1: float
    psnr_db: float


@dataclass(frozen=True)
class RunFiles:
    checkpoint: Path
    train_log_json: Path
    train_log_md: Path
    comparison_png: Path

    @classmethod
    def beside(cls, checkpoint: Path) -> "RunFiles":
        stem = checkpoint.with_suffix("")
        return cls(checkpoint, Path(f"{stem}.train-log.json"), Path(f"{stem}.train-log.md"),
                   Path(f"{stem}.decoder-finetune.png"))


def echo(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------------------------- loading


def run_record(files: RunFiles) -> dict:
    return json.loads(files.train_log_json.read_text(encoding="utf-8"))


def data_config(record: dict) -> DataConfig:
    return DataConfig(**record["config"]["data"])


def load_vae(checkpoint: Path) -> torch.nn.Module:
    """The diffusers AutoencoderKL in float32, built by the application's own loader."""
    info = CheckpointInfo(path=checkpoint, name=checkpoint.name, sha256=None)
    return sd_loader.load_checkpoint(info, DevicePolicy.cpu()).vae


def decoder_parameters(vae: torch.nn.Module) -> list[torch.nn.Parameter]:
    return list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())


def freeze_all_but_decoder(vae: torch.nn.Module) -> list[torch.nn.Parameter]:
    vae.requires_grad_(False).eval()
    params = decoder_parameters(vae)
    for p in params:
        p.requires_grad_(True)
    vae.decoder.train()
    return params


# ---------------------------------------------------------------------------------------------- data and loss


def validation_images(data: DataConfig, run_seed: int, count: int) -> Tensor:
    generator = torch.Generator().manual_seed(run_seed + VALIDATION_SEED_OFFSET)
    return dataset.render(dataset.sample_scenes(count, data, generator), data.image_size)


def training_latents(vae: torch.nn.Module, images: Tensor) -> Tensor:
    # A posterior sample, as the autoencoder trained and as the UNet's latent pool drew its latents
    # (LatentPool.sample_latents): the decoder should see what the UNet learned to produce.
    with torch.no_grad():
        return vae.encode(images).latent_dist.sample()


def decoder_loss(reconstruction: Tensor, target: Tensor, edge_weight: float) -> Tensor:
    """The autoencoder's reconstruction loss (train.vae_loss without its encoder-only KL term)."""
    l1 = (reconstruction - target).abs().mean()
    edges = sum((r - t).abs().mean() for r, t in zip(_image_gradients(reconstruction), _image_gradients(target)))
    return l1 + edge_weight * edges


@torch.no_grad()
def reconstruct(vae: torch.nn.Module, images: Tensor) -> Tensor:
    """Round trip through the posterior mode, as sampling uses the decoder, in memory-bounded chunks."""
    was_training = vae.decoder.training
    vae.decoder.eval()
    chunks = [vae.decode(vae.encode(chunk).latent_dist.mode()).sample.float().clamp(-1, 1)
              for chunk in images.split(VALIDATION_CHUNK)]
    vae.decoder.train(was_training)
    return torch.cat(chunks)


def reconstruction_metrics(reconstruction: Tensor, images: Tensor) -> Metrics:
    """train.validate_vae's numbers: mean L1 in [-1, 1] units and PSNR over [0, 1] pixels."""
    error = reconstruction - images
    mse = (error / 2).pow(2).mean().item()
    return Metrics(error.abs().mean().item(), -10 * math.log10(max(mse, 1e-12)))


# ---------------------------------------------------------------------------------------------- training


def finetune(vae: torch.nn.Module, data: DataConfig, settings: FinetuneSettings) -> dict:
    params = freeze_all_but_decoder(vae)
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, betas=(0.9, 0.99), weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)  # the posterior samples
    budget = Budget(settings.seconds, settings.max_steps)
    step, interval_loss, interval_steps, interval_start = 0, 0.0, 0, budget.elapsed()
    curve = []
    while not budget.done(step):
        lr = settings.learning_rate * learning_rate_factor(step, settings.warmup_steps, budget.progress(step))
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = dataset.render(dataset.sample_scenes(settings.batch_size, data, generator), data.image_size)
        latents = training_latents(vae, images)
        loss = decoder_loss(vae.decode(latents).sample.float(), images, settings.edge_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        step += 1
        interval_loss += loss.item()
        interval_steps += 1
        if step % settings.log_every == 0 or budget.done(step):
            now = budget.elapsed()
            rate = interval_steps * settings.batch_size / max(now - interval_start, 1e-9)
            mean = interval_loss / interval_steps
            curve.append({"step": step, "seconds": round(now, 1), "loss": round(mean, 5),
                          "learning_rate": lr, "images_per_second": round(rate, 2)})
            echo(f"[decoder] step {step:5d}  {now:7.1f}s  loss {mean:.5f}  lr {lr:.2e}  {rate:5.2f} img/s")
            interval_loss, interval_steps, interval_start = 0.0, 0, now
    seconds = budget.elapsed()
    vae.eval().requires_grad_(False)
    bad = [p for p in params if not torch.isfinite(p).all()]
    if bad:
        raise RuntimeError("decoder fine-tuning produced non-finite weights")
    return {"steps": step, "seconds": round(seconds, 1), "images": step * settings.batch_size,
            "images_per_second": round(step * settings.batch_size / max(seconds, 1e-9), 2), "curve": curve}


# ---------------------------------------------------------------------------------------------- writing


def decoder_tensors(vae: torch.nn.Module) -> dict[str, Tensor]:
    """The decoder's weights under their original checkpoint keys, fp16 as the file stores them."""
    original = ldm_layout.vae_to_original(vae.state_dict(), vae.config)
    return {VAE_PREFIX + k: v.detach().to(torch.float16).contiguous()
            for k, v in original.items() if k.startswith(DECODER_PREFIXES)}


def read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, str] | None]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def replace_decoder(path: Path, new_tensors: dict[str, Tensor]) -> None:
    """Rewrites `path` with `new_tensors` swapped in, atomically; every other tensor and the metadata stay."""
    tensors, metadata = read_checkpoint(path)
    unknown = sorted(set(new_tensors) - set(tensors))
    if unknown:
        raise KeyError(f"{path} has no tensors {unknown[:3]}")
    expected = {k for k in tensors if k.startswith(tuple(VAE_PREFIX + p for p in DECODER_PREFIXES))}
    if expected != set(new_tensors):
        raise KeyError(f"decoder keys differ: {sorted(expected ^ set(new_tensors))[:3]}")
    for key, value in new_tensors.items():
        if value.shape != tensors[key].shape or value.dtype != tensors[key].dtype:
            raise ValueError(f"{key}: {tuple(value.shape)} {value.dtype} does not replace "
                             f"{tuple(tensors[key].shape)} {tensors[key].dtype}")
    tensors.update(new_tensors)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(temporary), metadata=metadata)
        os.chmod(temporary, path.stat().st_mode & 0o777)  # save_file creates the file private (0600)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def to_uint8(images: Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> [B, H, W, 3] uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def comparison_grid(columns: list[Tensor], gap: int = 4) -> Image.Image:
    """One row per scene, one column per tensor (original | old reconstruction | new reconstruction)."""
    arrays = [to_uint8(c) for c in columns]
    rows, size = arrays[0].shape[0], arrays[0].shape[1]
    canvas = np.full((rows * size + (rows - 1) * gap, len(arrays) * size + (len(arrays) - 1) * gap, 3), 255,
                     dtype=np.uint8)
    for column, array in enumerate(arrays):
        for row in range(rows):
            y, x = row * (size + gap), column * (size + gap)
            canvas[y:y + size, x:x + size] = array[row]
    return Image.fromarray(canvas)


def append_markdown(path: Path, section: dict) -> None:
    before, after = section["before"], section["after"]
    lines = [
        "",
        "## Decoder fine-tuning",
        "",
        f"- Decoder and post_quant_conv only (encoder, latent space, scale_factor and UNet unchanged), on the "
        f"CPU ({section['threads']} threads), {section['started_utc']}.",
        f"- {section['steps']} steps of {section['batch_size']} fresh scenes in {section['seconds']:.0f} s "
        f"({section['images_per_second']:.2f} img/s), AdamW lr {section['learning_rate']:.1e} "
        f"(warmup {section['warmup_steps']} steps, cosine), L1 + {section['edge_weight']} x edge L1, seed "
        f"{section['seed']}.",
        f"- Validation on {section['validation_scenes']} held-out scenes: L1 {before['l1']:.4f} -> "
        f"{after['l1']:.4f}, PSNR {before['psnr_db']:.2f} -> {after['psnr_db']:.2f} dB.",
        f"- Checkpoint {'rewritten' if section['written'] else 'left unchanged (no improvement)'}"
        + (f", sha256 {section['checkpoint_sha256'][:10]}" if section["written"] else "") + ".",
        f"- Comparison: `{section['comparison']}` (rows are scenes; columns: original, old decoder, new decoder).",
        "",
    ]
    with path.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines))


def write_json_atomically(path: Path, record: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------- the run


def run(files: RunFiles, settings: FinetuneSettings) -> dict:
    torch.set_num_threads(settings.threads)
    started_utc = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = run_record(files)
    data = data_config(record)
    vae = load_vae(files.checkpoint)
    encoder_before = copy.deepcopy(vae.encoder.state_dict())

    images = validation_images(data, int(record["config"]["seed"]), settings.validation_scenes)
    echo(f"[decoder] validating on {len(images)} held-out scenes")
    old = reconstruct(vae, images)
    before = reconstruction_metrics(old, images)
    echo(f"[decoder] before: L1 {before.l1:.4f}, PSNR {before.psnr_db:.2f} dB")

    log = finetune(vae, data, settings)

    new = reconstruct(vae, images)
    after = reconstruction_metrics(new, images)
    echo(f"[decoder] after:  L1 {after.l1:.4f}, PSNR {after.psnr_db:.2f} dB "
         f"({log['steps']} steps, {log['images_per_second']:.2f} img/s)")
    if any(not torch.equal(v, vae.encoder.state_dict()[k]) for k, v in encoder_before.items()):
        raise RuntimeError("the encoder changed; it must stay frozen")

    shown = slice(0, COMPARISON_SCENES)
    comparison_grid([images[shown], old[shown], new[shown]]).save(files.comparison_png)
    echo(f"[decoder] comparison: {files.comparison_png}")

    written = after.psnr_db > before.psnr_db
    if written:
        replace_decoder(files.checkpoint, decoder_tensors(vae))
        echo(f"[decoder] checkpoint rewritten: {files.checkpoint}")
    else:
        echo("[decoder] no improvement: checkpoint left unchanged")

    section = {
        "started_utc": started_utc, "device": "cpu", "threads": settings.threads,
        "seconds": log["seconds"], "steps": log["steps"], "images": log["images"],
        "images_per_second": log["images_per_second"], "learning_rate": settings.learning_rate,
        "warmup_steps": settings.warmup_steps, "batch_size": settings.batch_size, "seed": settings.seed,
        "edge_weight": settings.edge_weight, "validation_scenes": len(images),
        "before": asdict(before), "after": asdict(after), "written": written,
        "checkpoint_bytes": files.checkpoint.stat().st_size, "checkpoint_sha256": sha256_of(files.checkpoint),
        "comparison": files.comparison_png.name, "torch": torch.__version__, "curve": log["curve"],
    }
    record["decoder_finetune"] = section
    write_json_atomically(files.train_log_json, record)
    append_markdown(files.train_log_md, section)
    return section


def parse_args(argv: list[str]) -> tuple[Path, FinetuneSettings]:
    defaults = FinetuneSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="training time budget")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--validation-scenes", type=int, default=defaults.validation_scenes)
    args = parser.parse_args(argv)
    settings = FinetuneSettings(seconds=args.seconds, max_steps=args.max_steps, batch_size=args.batch_size,
                                learning_rate=args.lr, warmup_steps=args.warmup_steps, seed=args.seed,
                                threads=args.threads, validation_scenes=args.validation_scenes)
    return args.checkpoint, settings


def main(argv: list[str] | None = None) -> int:
    checkpoint, settings = parse_args(sys.argv[1:] if argv is None else argv)
    section = run(RunFiles.beside(checkpoint), settings)
    return 0 if section["written"] else 1


if __name__ == "__main__":
    sys.exit(main())
