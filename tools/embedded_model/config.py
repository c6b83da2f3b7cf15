"""Every hyper-parameter of the embedded model's training run, in one typed, printable config.

The defaults are the real run: about 3 minutes of VAE and 5.5 minutes of UNet + text encoder on one
H200. `smoke_config()` shrinks everything so the whole pipeline runs on a CPU in seconds.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TOKENIZER_DIR = ROOT / "configs" / "tokenizers" / "clip"


@dataclass(frozen=True)
class DataConfig:
    image_size: int = 128
    two_shape_probability: float = 0.25
    size_word_probability: float = 0.6  # captions name "small"/"large" this often when it applies
    position_word_probability: float = 0.5
    colour_jitter: float = 0.03  # per-image uniform jitter of each colour channel, in [0, 1] units
    max_rotation_degrees: float = 12.0  # small tilt; larger would turn a square into a "diamond"
    # Each colour word of a caption names a random other colour this often: label noise like real captions,
    # which guidance then corrects (at CFG 1 colours go wrong about this often, at CFG 7 almost never).
    mislabelled_colour_probability: float = 0.2


@dataclass(frozen=True)
class VaeConfig:
    # 4 levels: 3 downsamplings, so the latent is 1/8 of the image, as in SD.
    block_out_channels: tuple[int, ...] = (32, 64, 96, 96)
    layers_per_block: int = 1
    latent_channels: int = 4
    batch_size: int = 128  # on an H200, images/s still rise up to 128 a step and flatten beyond
    learning_rate: float = 1.5e-3
    warmup_steps: int = 100
    # On the per-element mean KL. SD's 1e-6 is on sums (3x128x128 pixels vs 4x16x16 latents here), which is
    # about 5e-5 on means; much weaker lets single latent pixels grow into outliers that decode as specks.
    kl_weight: float = 5e-5
    edge_weight: float = 0.5  # L1 on image gradients: sharp shape edges for a tiny decoder
    seconds: float = 170.0
    max_steps: int | None = None


@dataclass(frozen=True)
class TextEncoderConfig:
    hidden_size: int = 64  # the 49408 x hidden token embedding dominates the file size
    layers: int = 4
    heads: int = 4
    vocab_size: int = 49408
    max_length: int = 77
    activation: str = "quick_gelu"

    @property
    def intermediate_size(self) -> int:
        return 4 * self.hidden_size  # CLIP's MLP ratio; the sidecar yaml does not carry it


@dataclass(frozen=True)
class UnetConfig:
    # Multiples of the first level (the yaml's channel_mult is integral), and small enough that the
    # whole file stays under 25 MB beside the 49408-row token embedding.
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    attention_heads: int = 8  # SD 1.x: `attention_head_dim` in diffusers, `num_heads` in the yaml
    # A step of this small UNet costs the same host time (kernel launches) from 128 to 1024 images,
    # so a large batch is nearly free on an H200.
    batch_size: int = 1024
    learning_rate: float = 8e-4
    warmup_steps: int = 200
    weight_decay: float = 0.01
    caption_dropout: float = 0.1  # empty caption, so classifier-free guidance works
    min_snr_gamma: float = 5.0
    noise_offset: float = 0.05  # lets the model reach flat, saturated backgrounds
    ema_decay: float = 0.999
    latent_pool_size: int = 131_072  # scenes encoded once; the UNet samples from them
    seconds: float = 325.0  # includes building the latent pool (about 16 s on an H200)
    max_steps: int | None = None


@dataclass(frozen=True)
class ScheduleConfig:
    # The standard SD 1.x discrete schedule.
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000


@dataclass(frozen=True)
class SampleConfig:
    steps: int = 30
    guidance_scale: float = 5.0
    seed: int = 1234
    prompts: tuple[str, ...] = (
        "a red circle on a blue background",
        "a yellow star on a black background",
        "a green triangle on a white background",
        "a large purple heart on a yellow background",
        "a small orange hexagon at the top left on a gray background",
        "a white square on a red background",
        "a blue circle to the left of a yellow star on a green background",
        "a pink heart above a cyan square on a brown background",
    )


@dataclass(frozen=True)
class TrainConfig:
    name: str = "embedded-shapes-v1"
    seed: int = 20251118
    device: str = "cuda"
    log_every: int = 25
    tokenizer_dir: str = str(DEFAULT_TOKENIZER_DIR)
    data: DataConfig = field(default_factory=DataConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    unet: UnetConfig = field(default_factory=UnetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    max_file_bytes: int = 25_000_000


def smoke_config(device: str = "cpu") -> TrainConfig:
    """The whole pipeline at toy sizes: a few steps of each stage, on a CPU, in seconds."""
    return TrainConfig(
        name="embedded-shapes-smoke",
        device=device,
        log_every=1,
        data=DataConfig(image_size=64),
        vae=VaeConfig(block_out_channels=(32, 32, 32, 32), batch_size=4, seconds=30.0, max_steps=3),
        text=TextEncoderConfig(hidden_size=32, layers=2, heads=2),
        unet=UnetConfig(block_out_channels=(32, 64, 64), batch_size=4, latent_pool_size=32, warmup_steps=2,
                        seconds=30.0, max_steps=3),
        sample=SampleConfig(steps=3, prompts=SampleConfig().prompts[:2]),
    )


def config_to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def config_to_json(config: TrainConfig) -> str:
    return json.dumps(config_to_dict(config), indent=2)
