"""A quick look at the trained model: DDIM with classifier-free guidance, and a PNG grid."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from tools.embedded_model import dataset
from tools.embedded_model.config import TrainConfig
from tools.embedded_model.models import Networks, latent_size, sampling_scheduler
from tools.embedded_model.train import tokenize


@torch.no_grad()
def encode_prompts(networks: Networks, tokenizer, prompts: list[str], max_length: int, device: torch.device) -> Tensor:
    ids = tokenize(tokenizer, prompts, max_length).to(device)
    return networks.text_encoder(input_ids=ids).last_hidden_state


@torch.no_grad()
def sample_images(networks: Networks, tokenizer, prompts: list[str], scale_factor: float, config: TrainConfig,
                  device: torch.device, seed: int) -> Tensor:
    """[N, 3, S, S] images in [-1, 1], one per prompt, in fp32 (the cost is negligible at this size)."""
    settings = config.sample
    scheduler = sampling_scheduler(config.schedule)
    scheduler.set_timesteps(settings.steps)
    context = encode_prompts(networks, tokenizer, prompts, config.text.max_length, device)
    unconditional = encode_prompts(networks, tokenizer, [""] * len(prompts), config.text.max_length, device)
    both = torch.cat([unconditional, context])
    side = latent_size(config)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((len(prompts), config.vae.latent_channels, side, side), generator=generator).to(device)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        noise = networks.unet(model_input, t.to(device), encoder_hidden_states=both).sample.float()
        uncond_noise, cond_noise = noise.chunk(2)
        guided = uncond_noise + settings.guidance_scale * (cond_noise - uncond_noise)
        latents = scheduler.step(guided, t, latents).prev_sample
    images = networks.vae.decode(latents / scale_factor).sample.float().clamp(-1, 1)
    if not torch.isfinite(images).all():
        raise ValueError("sampling produced non-finite images")
    return images


@torch.no_grad()
def reconstruction_rows(vae: torch.nn.Module, config: TrainConfig, device: torch.device, count: int,
                        seed: int) -> tuple[Tensor, Tensor]:
    """Dataset images and their VAE round trips, to tell autoencoder flaws from diffusion flaws."""
    scenes = dataset.sample_scenes(count, config.data, torch.Generator().manual_seed(seed))
    images = dataset.render(scenes, config.data.image_size, device)
    reconstructed = vae.decode(vae.encode(images).latent_dist.mode()).sample.float().clamp(-1, 1)
    return images, reconstructed


def to_pil(image: Tensor) -> Image.Image:
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy())


def save_grid(rows: list[Tensor], path: Path) -> Path:
    """Rows of images (each [N, 3, S, S]) pasted into one PNG, 2 px apart."""
    gap = 2
    size = rows[0].shape[-1]
    columns = rows[0].shape[0]
    grid = Image.new("RGB", (columns * (size + gap) - gap, len(rows) * (size + gap) - gap), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(to_pil(image), (c * (size + gap), r * (size + gap)))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
