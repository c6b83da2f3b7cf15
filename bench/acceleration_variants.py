"""The benchmarks' variants of how the UNet and the VAE run: one optimisation at a time, undone afterwards.

A variant is '+'-joined parts: nchw, cl (channels_last), fused_qkv, sdpa=NAME (a
torch.nn.attention.SDPBackend name), compile=blocks|layers|full, autotune, tuned, quick, mm1x1. The compile
parts are the application's own compile settings (modules/accel/compilation.py), which `compile_settings`
hands to a ModelRunner (`--compile-settings` of gpu_speed.py); the rest, and compile=full, exist only here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from modules.accel.compilation import CompileSettings, compiled_blocks, compiled_for_inference
from modules.models.sd_model import call_unet

COMPILE_CHOICES = ("blocks", "layers", "full")


@dataclass(frozen=True)
class Variant:
    channels_last: bool = False
    fused_qkv: bool = False
    sdpa_backend: str | None = None  # e.g. "CUDNN_ATTENTION"
    compile: str | None = None  # None | "blocks" | "layers" | "full"
    autotune: bool = False
    tuned: bool = False
    quick: bool = False
    mm1x1: bool = False

    @classmethod
    def parse(cls, text: str) -> Variant:
        fields: dict[str, object] = {}
        for part in filter(None, text.split("+")):
            key, _, value = part.partition("=")
            if key == "nchw":
                continue
            if key == "cl":
                fields["channels_last"] = True
            elif key == "fused_qkv":
                fields["fused_qkv"] = True
            elif key == "sdpa" and value:
                fields["sdpa_backend"] = value
            elif key == "compile" and value in COMPILE_CHOICES:
                fields["compile"] = value
            elif key in ("autotune", "tuned", "quick", "mm1x1"):
                fields[key] = True
            else:
                raise ValueError(f"unknown acceleration part {part!r}")
        return cls(**fields)

    def compile_settings(self) -> CompileSettings:
        """The compile parts as the application's compile settings ("full" compiles the whole forward,
        which only `applied` does)."""
        regions = self.compile if self.compile in ("blocks", "layers") else "blocks"
        return CompileSettings(regions=regions, quick=self.quick, autotune=self.autotune, tuned=self.tuned,
                               mm1x1=self.mm1x1)


def runner_compile_settings(text: str) -> CompileSettings:
    """--compile-settings for the application's --compile path: compile=blocks|layers and its options."""
    variant = Variant.parse(text)
    outside = variant.channels_last or variant.fused_qkv or variant.sdpa_backend
    if variant.compile not in ("blocks", "layers") or outside:
        raise ValueError(f"{text!r}: --compile compiles regions (compile=blocks or compile=layers, with autotune, "
                         f"tuned, quick, mm1x1); other parts are gpu_variants.py's")
    return variant.compile_settings()


def _drop_fused_projections(module: torch.nn.Module) -> None:
    """diffusers' unfuse puts the separate projections back in use but keeps the fused copies (their
    memory, and extra keys in the state dict): remove them."""
    for block in module.modules():
        for name in ("to_qkv", "to_kv", "to_added_qkv"):
            if isinstance(getattr(block, name, None), torch.nn.Module):
                delattr(block, name)
        if getattr(block, "fused_projections", False):
            block.fused_projections = False


def _sdpa_context(backend: str | None):
    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, backend)])


def _forward(module: torch.nn.Module, decode: bool) -> Callable[..., torch.Tensor]:
    if decode:
        def call(z):
            return module.decode(z, return_dict=False)[0]
    else:
        def call(x, timestep, context, pooled=None, time_ids=None):
            return call_unet(module, x, timestep, context, pooled, time_ids)
    return call


@contextlib.contextmanager
def applied(module: torch.nn.Module, variant: Variant, decode: bool = False) -> Iterator[Callable[..., torch.Tensor]]:
    """Applies `variant` to `module` for the duration and yields its forward (UNet: x, timestep,
    context, pooled, time_ids; VAE with decode=True: z). The module is as it was afterwards."""
    if variant.channels_last:
        module.to(memory_format=torch.channels_last)
    if variant.fused_qkv:
        module.fuse_qkv_projections()
    forward = _forward(module, decode)
    if variant.compile == "full":
        forward = compiled_for_inference(forward, variant.compile_settings())
    elif variant.compile in ("blocks", "layers"):
        forward = _forward(compiled_blocks(module, variant.compile_settings()), decode)

    def call(**tensors):
        if variant.channels_last:
            tensors = {k: v.contiguous(memory_format=torch.channels_last) if v is not None and v.dim() == 4 else v
                       for k, v in tensors.items()}
        with _sdpa_context(variant.sdpa_backend):
            return forward(**tensors)

    try:
        yield call
    finally:
        if variant.fused_qkv:
            module.unfuse_qkv_projections()
            _drop_fused_projections(module)
        if variant.channels_last:
            module.to(memory_format=torch.contiguous_format)
