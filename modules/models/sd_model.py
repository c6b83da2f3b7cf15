"""A loaded Stable Diffusion checkpoint: its modules and how each of them is called.

Plain modules only: what runs them fast on a GPU (CUDA graphs, compiled code, context projections) is
a runner beside the model (modules/accel/runner.py), which calls the parts the way this module says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from modules.models.checkpoints import CheckpointInfo
from modules.models.devices import DevicePolicy
from modules.sampling.denoisers import DiscreteSchedule, Prediction


@dataclass
class TextEncoder:
    kind: str  # "clip_l" | "open_clip"
    model: torch.nn.Module
    tokenizer: object
    output_layer: str = "last"  # "last" | "penultimate": the layer the UNet was trained on
    final_layer_norm: bool = True  # whether that layer's output goes through the final norm
    device: torch.device | None = None  # where it runs (its weights may be elsewhere in the low-memory modes)

    def hidden_states(self, input_ids: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden states `depth` layers from the end, projected pooled output or None)."""
        out = self.model(input_ids=input_ids, output_hidden_states=True)
        return out.hidden_states[-min(depth, len(out.hidden_states) - 1)], getattr(out, "text_embeds", None)


@dataclass
class StableDiffusionModel:
    checkpoint: CheckpointInfo
    family: str
    prediction: Prediction
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list[TextEncoder]
    schedule: DiscreteSchedule
    scale_factor: float
    native_size: int
    policy: DevicePolicy
    vae_name: str | None = None  # file name of an external VAE, None for the checkpoint's own
    notes: list[str] = field(default_factory=list)
    offload: object | None = field(default=None, repr=False)  # memory_modes.ComponentSwapper in --medvram/--lowvram

    def __post_init__(self) -> None:
        for encoder in self.text_encoders:
            encoder.device = encoder.device or self.policy.device
        # The VAE decoder's full-resolution convolutions in NCHW need cuDNN workspace for layout
        # transposes, the largest transient of a job; NHWC costs a little time per decode instead
        # (bench/RESULTS.md, figures behind choices). Memory is what a smaller card runs out of.
        on_gpu = self.policy.device.type == "cuda"
        self.vae.to(memory_format=torch.channels_last if on_gpu else torch.contiguous_format)

    @property
    def is_sdxl(self) -> bool:
        return self.family.startswith("sdxl")

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.out_channels)

    @property
    def unet_in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def unet_inputs(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                    pooled: torch.Tensor | None = None, time_ids: torch.Tensor | None = None,
                    image_cond: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        """call_unet's tensors for the denoiser's arguments, in the UNet's dtype.

        `image_cond` (inpainting models: mask + masked-image latents) is appended to the input
        channels after the denoiser has scaled x, as the original LDM "hybrid" conditioning does.
        """
        dtype = self.policy.unet_dtype
        if image_cond is not None:
            x = torch.cat([x, image_cond.to(x.dtype)], dim=1)
        return {"x": x.to(dtype), "timestep": timestep.to(x.device), "context": context.to(dtype),
                "pooled": None if pooled is None else pooled.to(dtype),
                "time_ids": None if time_ids is None else time_ids.to(dtype)}

    def unet_fn(self, x: torch.Tensor, timestep: torch.Tensor, *, context: torch.Tensor,
                pooled: torch.Tensor | None = None, time_ids: torch.Tensor | None = None,
                image_cond: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet in the denoiser's calling convention, in the model's dtype, returning float32."""
        return call_unet(self.unet, **self.unet_inputs(x, timestep, context, pooled, time_ids, image_cond))

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled-back latents (in the VAE's dtype, on its device) -> pixels in [-1, 1], float32."""
        return call_vae_decoder(self.vae, latents)


def call_unet(unet: torch.nn.Module, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
              pooled: torch.Tensor | None, time_ids: torch.Tensor | None) -> torch.Tensor:
    """A diffusers UNet called with SD's conditioning (SDXL: pooled text + size ids), output float32."""
    added = None if pooled is None else {"text_embeds": pooled, "time_ids": time_ids}
    return unet(x, timestep, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False)[0].float()


def call_vae_decoder(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Latents (scaled back, in the VAE's dtype) -> pixels in [-1, 1], float32; what --compile compiles,
    one function so that compile helpers trace the very same program."""
    return vae.decode(z, return_dict=False)[0].float()
