"""The training stages: the autoencoder, the latent pool, then the UNet with its text encoder.

Each stage runs until its time budget (or optional step limit) is spent; the learning rate follows a
warmup then a cosine decay over the fraction of that budget used, so a stage ends annealed however
fast the machine is. A GradScaler at scale 1 guards every step: bf16 needs no loss scaling, but the
scaler skips any step whose gradients are not finite without a host sync (the fused optimizer reads its
found-inf flag on the device), so one bad batch cannot poison the weights.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from torch import Tensor

from tools.embedded_model import dataset
from tools.embedded_model.config import TrainConfig
from tools.embedded_model.models import Networks, training_alphas_cumprod

Echo = Callable[[str], None]
MAX_GRAD_NORM = 1.0
FINAL_LR_FRACTION = 0.1
POOL_CHUNK = 1024
SCALE_SAMPLE = 8192
VALIDATION_IMAGES = 256


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class CurvePoint:
    step: int
    seconds: float
    loss: float | None  # None where the interval's mean was not finite
    learning_rate: float
    images_per_second: float


@dataclass
class StageLog:
    name: str
    steps: int = 0
    seconds: float = 0.0
    images: int = 0
    skipped_steps: int = 0
    curve: list[CurvePoint] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Budget:
    """A stage's allowance: wall seconds, and optionally a step count; whichever ends first."""

    seconds: float
    max_steps: int | None = None
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def progress(self, step: int) -> float:
        fraction = self.elapsed() / self.seconds if self.seconds > 0 else 1.0
        if self.max_steps is not None:
            fraction = max(fraction, step / max(self.max_steps, 1))
        return min(fraction, 1.0)

    def done(self, step: int) -> bool:
        return self.progress(step) >= 1.0


@dataclass
class LatentPool:
    """Encoded training scenes: the VAE posterior of each image and its caption's token ids."""

    mean: Tensor  # [N, C, h, w] fp16
    std: Tensor  # [N, C, h, w] fp16
    token_ids: Tensor  # [N, max_length] long

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def sample_latents(self, index: Tensor) -> Tensor:
        mean, std = self.mean[index].float(), self.std[index].float()
        return mean + std * torch.randn_like(mean)


def learning_rate_factor(step: int, warmup_steps: int, progress: float) -> float:
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    cosine = FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))
    return warmup * cosine


def autocast(device: torch.device):
    # bf16 on the GPU; CPU runs (the smoke test) stay in fp32, where bf16 is slow and buys nothing.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def step_guard(device: torch.device) -> torch.amp.GradScaler:
    # Never grows, so a skipped step halves the scale once: skips = -log2(scale).
    return torch.amp.GradScaler(device.type, init_scale=1.0, growth_interval=2**30,
                                enabled=device.type == "cuda")


def skipped_steps(guard: torch.amp.GradScaler) -> int:
    return round(-math.log2(guard.get_scale())) if guard.is_enabled() else 0


def optimizer_for(params: list[torch.nn.Parameter], lr: float, weight_decay: float,
                  device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay,
                             fused=device.type == "cuda")


def guarded_step(loss: Tensor, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                 guard: torch.amp.GradScaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    guard.scale(loss).backward()
    guard.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    guard.step(optimizer)
    guard.update()


class IntervalMeter:
    """Accumulates losses on the device; reads them back (one sync) only when a curve point is due."""

    def __init__(self, log: StageLog, budget: Budget, batch_size: int, device: torch.device):
        self.log, self.budget, self.batch_size = log, budget, batch_size
        self.total = torch.zeros((), device=device)
        self.count = 0
        self.last_seconds, self.last_skipped = budget.elapsed(), 0

    def add(self, loss: Tensor) -> None:
        self.total += loss.detach().float()
        self.count += 1

    def flush(self, step: int, learning_rate: float, guard: torch.amp.GradScaler, echo: Echo) -> None:
        if self.count == 0:
            return
        mean = (self.total / self.count).item()
        now = self.budget.elapsed()
        rate = self.count * self.batch_size / max(now - self.last_seconds, 1e-9)
        skipped = skipped_steps(guard)
        point = CurvePoint(step, round(now, 3), mean if math.isfinite(mean) else None, learning_rate, round(rate, 1))
        self.log.curve.append(point)
        echo(f"[{self.log.name}] step {step:6d}  {now:7.1f}s  loss {mean:.5f}  lr {learning_rate:.2e}  "
             f"{rate:8.0f} img/s  skipped {skipped}")
        if skipped - self.last_skipped > self.count // 2:
            raise TrainingDiverged(f"{self.log.name}: {skipped - self.last_skipped} of the last {self.count} "
                                   "steps had non-finite gradients")
        self.total.zero_()
        self.count, self.last_seconds, self.last_skipped = 0, now, skipped


def _set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _finish(log: StageLog, step: int, budget: Budget, batch_size: int, guard: torch.amp.GradScaler,
            device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    log.steps, log.seconds, log.images = step, round(budget.elapsed(), 3), step * batch_size
    log.skipped_steps = skipped_steps(guard)


def assert_finite(module: torch.nn.Module, what: str) -> None:
    bad = [name for name, p in module.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise TrainingDiverged(f"{what}: non-finite parameters {bad[:3]}")


# ---------------------------------------------------------------------------------------------- VAE


def _image_gradients(images: Tensor) -> tuple[Tensor, Tensor]:
    return images[..., :, 1:] - images[..., :, :-1], images[..., 1:, :] - images[..., :-1, :]


def vae_loss(vae: torch.nn.Module, images: Tensor, kl_weight: float, edge_weight: float) -> Tensor:
    """L1 + L1 on image gradients (crisp edges) + a small KL to a unit Gaussian, all per-element means."""
    posterior = vae.encode(images).latent_dist
    reconstruction = vae.decode(posterior.sample()).sample.float()
    target = images.float()
    l1 = (reconstruction - target).abs().mean()
    edges = sum((r - t).abs().mean() for r, t in zip(_image_gradients(reconstruction), _image_gradients(target)))
    mean, logvar = posterior.mean.float(), posterior.logvar.float()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    return l1 + edge_weight * edges + kl_weight * kl


def _to_device_images(images: Tensor, device: torch.device) -> Tensor:
    # channels_last lets cuDNN's fastest bf16 convolutions run without layout transposes.
    return images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else images


def train_vae(vae: torch.nn.Module, config: TrainConfig, device: torch.device, echo: Echo) -> StageLog:
    settings = config.vae
    budget = Budget(settings.seconds, settings.max_steps)
    vae.to(device).train()
    if device.type == "cuda":
        vae.to(memory_format=torch.channels_last)
    params = list(vae.parameters())
    optimizer = optimizer_for(params, settings.learning_rate, 0.0, device)
    guard = step_guard(device)
    generator = torch.Generator().manual_seed(config.seed + 1)
    log = StageLog("vae")
    meter = IntervalMeter(log, budget, settings.batch_size, device)
    step, lr = 0, 0.0
    while not budget.done(step):
        lr = settings.learning_rate * learning_rate_factor(step, settings.warmup_steps, budget.progress(step))
        _set_learning_rate(optimizer, lr)
        scenes = dataset.sample_scenes(settings.batch_size, config.data, generator)
        images = _to_device_images(dataset.render(scenes, config.data.image_size, device), device)
        with autocast(device):
            loss = vae_loss(vae, images, settings.kl_weight, settings.edge_weight)
        guarded_step(loss, params, optimizer, guard)
        meter.add(loss)
        step += 1
        if step % config.log_every == 0:
            meter.flush(step, lr, guard, echo)
    meter.flush(step, lr, guard, echo)
    _finish(log, step, budget, settings.batch_size, guard, device)
    vae.eval().requires_grad_(False)
    assert_finite(vae, "vae")
    log.extra.update(validate_vae(vae, config, device))
    echo(f"[vae] done: {step} steps in {log.seconds:.1f}s ({log.images_per_second:.0f} img/s), "
         f"validation L1 {log.extra['validation_l1']:.4f}, PSNR {log.extra['validation_psnr_db']:.2f} dB")
    return log


@torch.no_grad()
def validate_vae(vae: torch.nn.Module, config: TrainConfig, device: torch.device) -> dict:
    """Reconstruction of held-out scenes through the posterior mean, as sampling uses the decoder."""
    generator = torch.Generator().manual_seed(config.seed + 1_000_003)
    count = min(VALIDATION_IMAGES, max(config.vae.batch_size, 8))
    scenes = dataset.sample_scenes(count, config.data, generator)
    images = _to_device_images(dataset.render(scenes, config.data.image_size, device), device)
    with autocast(device):
        reconstruction = vae.decode(vae.encode(images).latent_dist.mode()).sample.float()
    error = (reconstruction.clamp(-1, 1) - images.float())
    mse = (error / 2).pow(2).mean().item()  # in [0, 1] units for PSNR
    return {"validation_l1": error.abs().mean().item(), "validation_psnr_db": -10 * math.log10(max(mse, 1e-12))}


# ---------------------------------------------------------------------------------------------- latent pool


def tokenize(tokenizer, texts: list[str], max_length: int) -> Tensor:
    return tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt").input_ids


def tokenize_many(tokenizer, texts: list[str], max_length: int) -> Tensor:
    """Token ids for many captions, tokenizing each distinct caption once (the grammar repeats a lot)."""
    distinct = sorted(set(texts))
    ids = tokenize(tokenizer, distinct, max_length)
    row = {text: i for i, text in enumerate(distinct)}
    return ids[torch.tensor([row[t] for t in texts])]


@torch.no_grad()
def build_latent_pool(vae: torch.nn.Module, tokenizer, config: TrainConfig, device: torch.device,
                      echo: Echo) -> tuple[LatentPool, dict]:
    started = time.perf_counter()
    size = config.unet.latent_pool_size
    generator = torch.Generator().manual_seed(config.seed + 2)
    rng = random.Random(config.seed + 2)
    means, stds, texts = [], [], []
    for start in range(0, size, POOL_CHUNK):
        scenes = dataset.sample_scenes(min(POOL_CHUNK, size - start), config.data, generator)
        texts += dataset.captions(scenes, config.data, rng)
        images = _to_device_images(dataset.render(scenes, config.data.image_size, device), device)
        with autocast(device):
            posterior = vae.encode(images).latent_dist
        means.append(posterior.mean.to(torch.float16).contiguous())
        stds.append(posterior.std.to(torch.float16).contiguous())
    token_ids = tokenize_many(tokenizer, texts, config.text.max_length).to(device)
    pool = LatentPool(torch.cat(means), torch.cat(stds), token_ids)
    if not (torch.isfinite(pool.mean).all() and torch.isfinite(pool.std).all()):
        raise TrainingDiverged("latent pool: the encoder gave non-finite latents")
    seconds = time.perf_counter() - started
    info = {"scenes": len(pool), "distinct_captions": len(set(texts)), "seconds": round(seconds, 3),
            "example_captions": texts[:8]}
    echo(f"[pool] {len(pool)} scenes encoded, {info['distinct_captions']} distinct captions, {seconds:.1f}s")
    return pool, info


def latent_scale_factor(pool: LatentPool, seed: int) -> float:
    """1 / std of sampled latents, as LDM's scale_by_std computes it."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(pool), generator=generator)[:SCALE_SAMPLE].to(pool.mean.device)
    std = pool.sample_latents(index).float().std().item()
    if not math.isfinite(std) or std <= 0:
        raise TrainingDiverged(f"latent std is {std}")
    return 1.0 / std


# ---------------------------------------------------------------------------------------------- UNet


def min_snr_weights(alphas_cumprod: Tensor, gamma: float) -> Tensor:
    """Per-timestep loss weights min(SNR, γ)/SNR for epsilon prediction (Hang et al. 2023)."""
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return snr.clamp(max=gamma) / snr


def unet_loss(networks: Networks, latents: Tensor, token_ids: Tensor, alphas_cumprod: Tensor,
              loss_weights: Tensor, noise_offset: float) -> Tensor:
    batch = latents.shape[0]
    timesteps = torch.randint(0, alphas_cumprod.shape[0], (batch,), device=latents.device)
    noise = torch.randn_like(latents)
    if noise_offset > 0:
        noise = noise + noise_offset * torch.randn(batch, latents.shape[1], 1, 1, device=latents.device)
    alpha = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
    context = networks.text_encoder(input_ids=token_ids).last_hidden_state
    prediction = networks.unet(noisy, timesteps, encoder_hidden_states=context).sample
    per_sample = F.mse_loss(prediction.float(), noise, reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * loss_weights[timesteps]).mean()


def train_unet(networks: Networks, pool: LatentPool, scale_factor: float, empty_ids: Tensor, config: TrainConfig,
               device: torch.device, budget: Budget, echo: Echo) -> tuple[StageLog, EMAModel]:
    """Trains the UNet and the text encoder together; returns the log and the EMA of both."""
    settings = config.unet
    networks.unet.to(device).train()
    networks.text_encoder.to(device).train()
    params = list(networks.unet.parameters()) + list(networks.text_encoder.parameters())
    optimizer = optimizer_for(params, settings.learning_rate, settings.weight_decay, device)
    ema = EMAModel(params, decay=settings.ema_decay, foreach=True)
    guard = step_guard(device)
    alphas_cumprod = training_alphas_cumprod(config.schedule).to(device)
    loss_weights = min_snr_weights(alphas_cumprod, settings.min_snr_gamma)
    empty_ids = empty_ids.to(device)
    log = StageLog("unet")
    meter = IntervalMeter(log, budget, settings.batch_size, device)
    step, lr, start_step_time = 0, 0.0, budget.elapsed()
    while not budget.done(step):
        lr = settings.learning_rate * learning_rate_factor(step, settings.warmup_steps, budget.progress(step))
        _set_learning_rate(optimizer, lr)
        index = torch.randint(0, len(pool), (settings.batch_size,), device=device)
        latents = pool.sample_latents(index) * scale_factor
        dropped = torch.rand(settings.batch_size, device=device) < settings.caption_dropout
        token_ids = torch.where(dropped[:, None], empty_ids[None], pool.token_ids[index])
        with autocast(device):
            loss = unet_loss(networks, latents, token_ids, alphas_cumprod, loss_weights, settings.noise_offset)
        guarded_step(loss, params, optimizer, guard)
        ema.step(params)
        meter.add(loss)
        step += 1
        if step % config.log_every == 0:
            meter.flush(step, lr, guard, echo)
    meter.flush(step, lr, guard, echo)
    _finish(log, step, budget, settings.batch_size, guard, device)
    log.extra["training_seconds"] = round(log.seconds - start_step_time, 3)
    log.extra["training_images_per_second"] = round(log.images / max(log.seconds - start_step_time, 1e-9), 1)
    log.extra["ema_decay_reached"] = float(ema.cur_decay_value or 0.0)
    echo(f"[unet] done: {step} steps in {log.seconds:.1f}s "
         f"({log.extra['training_images_per_second']:.0f} img/s while training)")
    return log, ema
