"""--medvram and --lowvram: weights live in CPU memory and visit the GPU when they run.

medvram keeps one model part at a time on the GPU (a text encoder, the UNet or the VAE), as
AUTOMATIC1111's flag of that name does: the part about to run goes up, the one before goes down.
lowvram does the same for the text encoders and the VAE and streams the UNet layer by layer with
diffusers' group offloading, which copies the next layer on a second CUDA stream while the current
one computes; an SDXL UNet then needs well under 4 GiB of GPU memory.
"""

from __future__ import annotations

import threading

import torch

MODES = ("normal", "medvram", "lowvram")


class ComponentSwapper:
    """Moves whole modules to the GPU when they are called, sending the previous one back."""

    def __init__(self, device: torch.device):
        self.device = device
        self.resident: torch.nn.Module | None = None
        self._lock = threading.Lock()

    def attach(self, module: torch.nn.Module, triggers: list[torch.nn.Module] | None = None) -> None:
        """`module` goes to the GPU whenever one of `triggers` (default: `module` itself) is called."""
        torch.nn.Module.to(module, "cpu")
        for trigger in triggers or [module]:
            trigger.register_forward_pre_hook(lambda _m, _args, target=module: self.use(target))

    def use(self, module: torch.nn.Module) -> None:
        with self._lock:
            if self.resident is module:
                return
            self._send_back()
            torch.nn.Module.to(module, self.device)
            self.resident = module

    def make_room(self) -> None:
        """Send the resident part back to the CPU (for parts that move by themselves, like a streamed UNet)."""
        with self._lock:
            self._send_back()

    def _send_back(self) -> None:
        if self.resident is not None:
            torch.nn.Module.to(self.resident, "cpu")
            self.resident = None


def apply(model, mode: str) -> None:
    """Installs `mode` on a model whose modules were built on the CPU."""
    if mode == "normal":
        return
    if mode not in MODES:
        raise ValueError(f"unknown memory mode {mode!r}")
    device = model.policy.device
    swapper = model.offload = ComponentSwapper(device)
    for encoder in model.text_encoders:
        swapper.attach(encoder.model)
    vae = model.vae
    swapper.attach(vae, [m for m in (vae.encoder, getattr(vae, "post_quant_conv", None), vae.decoder) if m is not None])
    if mode == "medvram":
        swapper.attach(model.unet)
        return
    from diffusers.hooks import apply_group_offloading

    use_stream = device.type == "cuda"
    apply_group_offloading(model.unet, onload_device=device, offload_type="leaf_level", use_stream=use_stream)

    # The UNet's layers come and go by themselves; the other parts must leave room for them.
    model.unet.register_forward_pre_hook(lambda _module, _args: swapper.make_room())
