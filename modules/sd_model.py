"""A loaded Stable Diffusion checkpoint: its modules and what is needed to run them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from modules.checkpoints import CheckpointInfo
from modules.devices import DevicePolicy
from modules.sampling.denoisers import DiscreteSchedule, Prediction


@dataclass
class TextEncoder:
    kind: str  # "clip_l" | "open_clip"
    model: torch.nn.Module
    tokenizer: object
    output_layer: str = "last"  # "last" | "penultimate": the layer the UNet was trained on
    final_layer_norm: bool = True  # whether that layer's output goes through the final norm


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
    _graphs: object | None = field(default=None, repr=False)  # CudaGraphRunner, made on first CUDA call

    @property
    def is_sdxl(self) -> bool:
        return self.family.startswith("sdxl")

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.out_channels)

    @property
    def unet_in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def unet_fn(self, x: torch.Tensor, timestep: torch.Tensor, *, context: torch.Tensor,
                pooled: torch.Tensor | None = None, time_ids: torch.Tensor | None = None,
                image_cond: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet in the denoiser's calling convention, in the model's dtype, returning float32.

        `image_cond` (inpainting models: mask + masked-image latents) is appended to the input
        channels after the denoiser has scaled x, as the original LDM "hybrid" conditioning does.
        """
        dtype = self.policy.unet_dtype
        if image_cond is not None:
            x = torch.cat([x, image_cond.to(x.dtype)], dim=1)
        tensors = {"x": x.to(dtype), "timestep": timestep.to(x.device), "context": context.to(dtype),
                   "pooled": None if pooled is None else pooled.to(dtype),
                   "time_ids": None if time_ids is None else time_ids.to(dtype)}
        if self.policy.cuda_graphs and x.is_cuda:
            if self._graphs is None:
                from modules.cuda_graphs import CudaGraphRunner

                self._graphs = CudaGraphRunner(self._unet_forward)
            return self._graphs(**tensors)
        return self._unet_forward(**tensors)

    def _unet_forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                      pooled: torch.Tensor | None, time_ids: torch.Tensor | None) -> torch.Tensor:
        added = None if pooled is None else {"text_embeds": pooled, "time_ids": time_ids}
        return self.unet(x, timestep, encoder_hidden_states=context, added_cond_kwargs=added,
                         return_dict=False)[0].float()
