"""Which device and dtypes the models run in, decided once from the flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DevicePolicy:
    device: torch.device
    unet_dtype: torch.dtype
    vae_dtype: torch.dtype
    text_encoder_dtype: torch.dtype
    cuda_graphs: bool = False  # replay the UNet, VAE decoder and text encoders from CUDA graphs
    compile: bool = False  # also compile them with Inductor, in the background (modules/accel/compilation.py)
    memory_mode: str = "normal"  # "normal" | "medvram" | "lowvram" (modules/models/memory_modes.py)
    compile_helpers: int | None = None  # processes that share a first compilation; None: from the cores

    @property
    def replays_graphs(self) -> bool:
        """Graphs hold fixed weight addresses, so they cannot be used while weights move between devices."""
        return self.device.type == "cuda" and (self.cuda_graphs or self.compile) and self.memory_mode == "normal"

    @classmethod
    def cpu(cls) -> "DevicePolicy":
        return cls(torch.device("cpu"), torch.float32, torch.float32, torch.float32)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DevicePolicy":
        if getattr(args, "use_cpu", False) or not torch.cuda.is_available():
            # Half precision on a CPU is slower and less accurate than float32.
            return cls.cpu()
        index = args.device_id if args.device_id is not None else torch.cuda.current_device()
        full = args.no_half or args.precision == "full"
        half = torch.float32 if full else torch.float16
        vae = torch.float32 if full or args.no_half_vae else torch.float16
        memory_mode = "lowvram" if getattr(args, "lowvram", False) else \
            "medvram" if getattr(args, "medvram", False) else "normal"
        return cls(torch.device("cuda", index), half, vae, half, cuda_graphs=getattr(args, "cuda_graphs", False),
                   compile=getattr(args, "compile", False), memory_mode=memory_mode,
                   compile_helpers=getattr(args, "compile_helpers", None))

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        extras = [flag for flag, on in (("CUDA graphs", self.cuda_graphs), ("compiled", self.compile),
                                        (self.memory_mode, self.memory_mode != "normal")) if on]
        return f"{name} ({self.device}), UNet {str(self.unet_dtype).removeprefix('torch.')}, " \
               f"VAE {str(self.vae_dtype).removeprefix('torch.')}" + "".join(f", {e}" for e in extras)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()[:200])


def free_device_memory() -> None:
    """Give cached device memory back after an out-of-memory failure, so the next job starts clean."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
