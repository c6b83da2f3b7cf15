"""Each GPU optimisation on its own: UNet step, VAE decode, text encoder and PNG, before and after.

Random weights of the real SD 1.5 / SDXL architectures (speed does not depend on weight values). Every
GPU timing is the median of CUDA-event timings of graph replays (modules/accel/cuda_graphs.py), so host
overhead is out of the picture and what remains is the kernels' own time. Compiled variants record
their compile time the first time and again from the on-disk cache after `torch._dynamo.reset()`.

    python bench/gpu_variants.py --out bench/results/gpu [--sections unet15,vae,unetxl,text,png,kv]
    python bench/gpu_variants.py --tiny --out /tmp/variants     # tiny shapes on the CPU: checks the script

A variant is '+'-joined parts (acceleration_variants.py): nchw, cl, fused_qkv, sdpa=NAME, compile=blocks|layers|full,
autotune (Inductor's max-autotune: minutes of compiling, so not in the default list), tuned, quick, e.g.
`--unet-variants nchw,cl+compile=full+autotune`. Two more parts measure what the application does
without choosing it, as "before" rows: fp32 (weights and inputs in float32 instead of fp16) and split
(cond and uncond as two calls of half the batch instead of one batched call); sdpa=MATH is attention
without a fused kernel. E.g. `--unet-variants nchw,fp32,split,sdpa=MATH --vae-variants nchw,fp32`.

Writes <out>/gpu_variants.json after every measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from gpu_speed import CLIP_L, SD15_UNET, SDXL_UNET, VAE, Report  # noqa: E402
from acceleration_variants import Variant, applied  # noqa: E402
from modules.accel.cuda_graphs import CudaGraphRunner  # noqa: E402

CUDA = torch.cuda.is_available()


def kernel_ms(fn: Callable[[], torch.Tensor], runs: int = 20) -> tuple[float, torch.Tensor]:
    """Median milliseconds of one call of `fn` (already graph-wrapped on CUDA) and its last output."""
    out = fn()
    out = fn()
    times = []
    for _ in range(runs):
        if CUDA:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            started = time.perf_counter()
            out = fn()
            times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3), out


def graphed(fn: Callable[..., torch.Tensor], tensors: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
    if not CUDA:
        return lambda: fn(**tensors)
    runner = CudaGraphRunner(fn)
    return lambda: runner(**tensors)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float((a.float() - b.float()).abs().max()), 5)


def timed_first_call(fn: Callable[[], torch.Tensor]) -> float:
    started = time.perf_counter()
    fn()
    if CUDA:
        torch.cuda.synchronize()
    return round(time.perf_counter() - started, 2)


@contextlib.contextmanager
def own_compile_cache(variant: str):
    """Inductor's on-disk caches key a graph by the traced program and Inductor's own settings, not by
    switches set around the call (a pinned attention kernel): without a cache per variant, a variant
    can be served the graphs another one compiled (an attention-kernel comparison in bench/RESULTS.md
    gave identical outputs and could not tell the two apart)."""
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    root = Path(previous or tempfile.gettempdir()) / "variants"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / re.sub(r"[^\w.=+-]", "_", variant))
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


BEFORE_PARTS = ("fp32", "split")
# Phases of a compilation worth reporting (torch._dynamo.utils.compile_times; nested, so they overlap).
COMPILE_PHASES = ("bytecode_tracing", "create_aot_dispatcher_function", "GraphLowering.run", "Scheduler.__init__",
                  "Scheduler.codegen", "async_compile.wait", "PyCodeCache.load_by_key_path", "compile_fx_inner")


def compile_phases() -> dict[str, float]:
    """Seconds spent in each of COMPILE_PHASES since the last torch._dynamo.reset()."""
    names, values = torch._dynamo.utils.compile_times(repr="csv", aggregate=True)
    spent = dict(zip(names, values))
    return {name: round(float(spent[name]), 2) for name in COMPILE_PHASES if name in spent}


@contextlib.contextmanager
def in_float32(module: torch.nn.Module, tensors: dict[str, torch.Tensor]):
    """The module and its floating-point inputs in float32 for the duration."""
    dtype = next(module.parameters()).dtype
    module.float()
    try:
        yield {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    finally:
        module.to(dtype)


def split_batch(call: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Cond and uncond as two calls of half the batch each."""
    def halves(**tensors):
        first = {k: v.chunk(2)[0] for k, v in tensors.items()}
        second = {k: v.chunk(2)[1] for k, v in tensors.items()}
        return torch.cat([call(**first), call(**second)])
    return halves


def measure_variants(report: Report, module, case: str, tensors: dict[str, torch.Tensor], variants: list[str],
                     decode: bool = False, runs: int = 20, cached_compile: bool = False) -> None:
    """One row per variant: kernel time, first-call time, and the largest difference from the first
    variant's output (the fp16 tolerance check); a failing variant is recorded and the rest still run."""
    reference = None
    for variant in variants:
        try:
            parts = variant.split("+")
            acceleration = Variant.parse("+".join(p for p in parts if p not in BEFORE_PARTS))
            precision = in_float32(module, tensors) if "fp32" in parts else contextlib.nullcontext(tensors)
            with own_compile_cache(variant), precision as inputs, applied(module, acceleration, decode=decode) as call:
                if "split" in parts:
                    call = split_batch(call)
                first = timed_first_call(lambda: call(**inputs))
                ms, out = kernel_ms(graphed(call, inputs), runs=runs)
                row = dict(case=case, variant=variant, ms=ms, first_call_s=first)
                if reference is None:
                    reference = out.detach().clone()
                else:
                    row["max_abs_diff_vs_first"] = max_diff(out, reference)
                if "compile" in variant:
                    row["compile_phases_s"] = compile_phases()
                if "compile" in variant and cached_compile:
                    torch._dynamo.reset()
                    row["first_call_cached_s"] = timed_first_call(lambda: call(**inputs))
            report.add(**row)
        except Exception as e:  # noqa: BLE001 - one variant failing must not lose the others
            report.add(case=case, variant=variant, error=f"{type(e).__name__}: {e}"[:400])
        finally:
            torch._dynamo.reset()


# --------------------------------------------------------------------------------------------- UNet

def unet_inputs(family: str, batch: int, latent: int, device, dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    context_dim = (SDXL_UNET if family == "sdxl" else SD15_UNET)["cross_attention_dim"]
    tensors = {"x": torch.randn(batch, 4, latent, latent, generator=g),
               "timestep": torch.full((batch,), 500.0),
               "context": torch.randn(batch, 77, context_dim, generator=g)}
    if family == "sdxl":
        tensors["pooled"] = torch.randn(batch, 1280, generator=g)
        tensors["time_ids"] = torch.tensor([[latent * 8, latent * 8, 0, 0, latent * 8, latent * 8]] * batch)
    return {k: v.to(device, dtype if v.is_floating_point() and k != "timestep" else v.dtype)
            for k, v in tensors.items()}


def bench_unet(report: Report, family: str, batches: list[int], args) -> None:
    from diffusers import UNet2DConditionModel

    device, dtype = ("cuda", torch.float16) if CUDA else ("cpu", torch.float32)
    config = dict(SDXL_UNET if family == "sdxl" else SD15_UNET)
    latent = config["sample_size"]
    if args.tiny:
        config.update(block_out_channels=(32, 64, 64, 64)[:len(config["block_out_channels"])],
                      cross_attention_dim=32, attention_head_dim=2 if family != "sdxl" else (1, 2, 2),
                      **({"transformer_layers_per_block": (1, 1, 1), "projection_class_embeddings_input_dim": 2816}
                         if family == "sdxl" else {}))
        latent = 16
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).to(device, dtype).eval()
    name = "SDXL UNet" if family == "sdxl" else "SD1.5 UNet"
    for batch in batches:
        tensors = unet_inputs(family, batch, latent, device, dtype)
        if args.tiny:
            tensors["context"] = tensors["context"][..., :32]
        measure_variants(report, unet, f"{name} batch {batch}", tensors, args.unet_variants,
                         cached_compile=args.cached_compile)
    del unet
    if CUDA:
        torch.cuda.empty_cache()


def bench_context_projections(report: Report, family: str, args) -> None:
    """GPU time of the cross-attention key and value projections of one UNet step (batch 2): what
    computing them once per prompt instead of at every step would save."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

    device, dtype = ("cuda", torch.float16) if CUDA else ("cpu", torch.float32)
    config = dict(SDXL_UNET if family == "sdxl" else SD15_UNET)
    if args.tiny:
        config.update(block_out_channels=(32, 64, 64, 64)[:len(config["block_out_channels"])],
                      attention_head_dim=2 if family != "sdxl" else (1, 2, 2),
                      **({"transformer_layers_per_block": (1, 1, 1)} if family == "sdxl" else {}))
    with torch.device(device):  # built on the GPU: initialising SDXL's 2.6 B weights on the CPU takes minutes
        unet = UNet2DConditionModel(**config).to(dtype).eval()
    layers = [m for m in unet.modules() if isinstance(m, Attention) and m.is_cross_attention]
    context = torch.randn(2, 77, config["cross_attention_dim"], device=device, dtype=dtype)

    def project(context):  # a graph replays every kernel it recorded: returning the last output is enough
        return [p(context) for layer in layers for p in (layer.to_k, layer.to_v)][-1]

    ms, _ = kernel_ms(graphed(project, {"context": context}))
    report.add(case=f"{'SDXL' if family == 'sdxl' else 'SD1.5'} cross-attention K/V projections, batch 2",
               variant="cuda graph", ms=ms, projections=2 * len(layers))
    del unet


# --------------------------------------------------------------------------------------------- VAE

def bench_vae(report: Report, cases: list[tuple[int, int]], args) -> None:
    from diffusers import AutoencoderKL

    device, dtype = ("cuda", torch.float16) if CUDA else ("cpu", torch.float32)
    config = dict(VAE)
    if args.tiny:
        config.update(block_out_channels=(16, 32, 32, 32), norm_num_groups=8)
    torch.manual_seed(0)
    vae = AutoencoderKL(**config).to(device, dtype).eval()
    for size, batch in cases:
        latent = (16 if args.tiny else size) // 8
        tensors = {"z": torch.randn(batch, 4, latent, latent, device=device, dtype=dtype)}
        measure_variants(report, vae, f"VAE decode {size}x{size} batch {batch}", tensors, args.vae_variants,
                         decode=True, runs=10)
    del vae
    if CUDA:
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------- text, PNG

def bench_text(report: Report, args) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    device, dtype = ("cuda", torch.float16) if CUDA else ("cpu", torch.float32)
    spec = dict(CLIP_L)
    if args.tiny:
        spec.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    model = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **spec)).to(device, dtype)
    tokens = {"input_ids": torch.randint(0, 49407, (2, 77), device=device)}

    def encode(input_ids):
        return model(input_ids=input_ids, output_hidden_states=True).hidden_states[-1]

    with torch.no_grad():
        ms, _ = kernel_ms(lambda: encode(**tokens))
        report.add(case="CLIP-L text encoder, 2 prompts", variant="eager", ms=ms)
        ms, _ = kernel_ms(graphed(encode, tokens))
        report.add(case="CLIP-L text encoder, 2 prompts", variant="cuda graph", ms=ms)


def bench_png(report: Report) -> None:
    import numpy as np
    from PIL import Image

    from modules.io import png_encoding

    rng = np.random.default_rng(0)
    for size in (512, 1024):
        # A smooth picture with fine noise compresses like a generated image, unlike pure noise.
        ramp = np.linspace(0, 255, size, dtype=np.float32)
        base = (ramp[None, :, None] * 0.6 + ramp[:, None, None] * 0.4 + rng.normal(0, 6, (size, size, 3)))
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        for label, encode in (("Pillow level 6", lambda im: _pillow_png(im, 6)),
                              ("Pillow level 1", lambda im: _pillow_png(im, 1)),
                              ("parallel level 1", lambda im: png_encoding.encode_png(im, None))):
            times = []
            for _ in range(5):
                started = time.perf_counter()
                data = encode(image)
                times.append((time.perf_counter() - started) * 1000)
            report.add(case=f"PNG {size}x{size}", variant=label, ms=round(statistics.median(times), 2),
                       bytes=len(data), cpu_count=os.cpu_count())
        report.add(case=f"PNG {size}x{size}", variant="atomic write + fsync (modules/io/image_saving.py)",
                   ms=_atomic_write_ms(image, data))


def _atomic_write_ms(image, data: bytes) -> float:
    """Median milliseconds of writing already-encoded bytes the way saved images are written."""
    from modules.io.image_saving import write_image_atomic

    times = []
    with tempfile.TemporaryDirectory(dir=ROOT) as folder:
        for i in range(5):
            started = time.perf_counter()
            write_image_atomic(image, Path(folder) / f"{i}.png", encoded=data)
            times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def _pillow_png(image, level: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu")
    parser.add_argument("--sections", default="png,text,unet15,vae,unetxl")
    parser.add_argument("--unet-variants", default="nchw,cl,cl+fused_qkv,cl+sdpa=CUDNN_ATTENTION,"
                                                   "cl+sdpa=FLASH_ATTENTION,cl+compile=blocks,cl+compile=full")
    parser.add_argument("--vae-variants", default="nchw,cl,cl+compile=blocks,cl+compile=full")
    parser.add_argument("--sd15-batches", default="2,32")
    parser.add_argument("--sdxl-batches", default="2")
    parser.add_argument("--cached-compile", action="store_true", help="time a second compile from the disk cache")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    args.unet_variants = args.unet_variants.split(",")
    args.vae_variants = args.vae_variants.split(",")
    report = Report(args.out, "gpu_variants.json")
    torch.backends.cudnn.benchmark = True
    with torch.no_grad():
        for section in args.sections.split(","):
            if section == "png":
                bench_png(report)
            elif section == "text":
                bench_text(report, args)
            elif section == "unet15":
                bench_unet(report, "sd1", [int(b) for b in args.sd15_batches.split(",")], args)
            elif section == "vae":
                bench_vae(report, [(512, 1), (512, 16), (1024, 1)], args)
            elif section == "kv":
                bench_context_projections(report, "sd1", args)
                bench_context_projections(report, "sdxl", args)
            elif section == "unetxl":
                bench_unet(report, "sdxl", [int(b) for b in args.sdxl_batches.split(",")], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
