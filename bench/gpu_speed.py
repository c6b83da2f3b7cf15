"""GPU speed and memory: this project's txt2img beside stock diffusers, in one process, same weights.

Random weights of the real SD 1.5 and SDXL architectures (speed does not depend on weight values) are
written as single-file checkpoints in the original layout and loaded through the application's own
loader. Stock diffusers pipelines are built from the very same modules, so both sides run the same
weights on the same GPU in the same run.

    python bench/gpu_speed.py --out bench/results/gpu [--sections sd15,sdxl] [--runs 5]
    python bench/gpu_speed.py --tiny --out /tmp/gpu-smoke       # tiny models on the CPU: checks the script

Prints a table and writes <out>/gpu_speed.json after every measurement (a run cut short keeps what
it measured). End to end means: prompt encoding, sampling, VAE decode and writing the PNG.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from modules import ldm_layout  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse, detailed, 8k"
NEGATIVE = "blurry, low quality"

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
           block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu")
OPEN_CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                      hidden_act="gelu", projection_dim=1280)

@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    family: str  # "sd1" or "sdxl"
    size: int
    steps: int


# --------------------------------------------------------------------------------------------- models

def _text_encoder(spec: dict, device: str):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **spec)
    model_class = CLIPTextModelWithProjection if "projection_dim" in spec else CLIPTextModel
    with torch.device(device):
        return model_class(config)


def write_tiny_checkpoint(family: str, folder: Path) -> Path:
    """The test suite's tiny model of the family, with its sidecar yaml (for --tiny)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import save_checkpoint, tiny_ldm_yaml, tiny_original_state_dict

    path = save_checkpoint(tiny_original_state_dict(family), folder / f"tiny-{family}.safetensors")
    path.with_suffix(".yaml").write_text(tiny_ldm_yaml(family))
    return path


def write_checkpoint(family: str, folder: Path, device: str, tiny: bool) -> Path:
    """Random weights of the family's real architecture as one fp16 original-layout safetensors file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file

    if tiny:
        return write_tiny_checkpoint(family, folder)
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**(SDXL_UNET if family == "sdxl" else SD15_UNET))
        vae = AutoencoderKL(**VAE)
    texts = {"clip_l": ldm_layout.clip_text_to_original(_text_encoder(CLIP_L, device).state_dict())}
    if family == "sdxl":
        texts["open_clip"] = ldm_layout.open_clip_text_to_original(
            _text_encoder(OPEN_CLIP_BIGG, device).state_dict())
    state = ldm_layout.join_original(unet=ldm_layout.unet_to_original(unet.state_dict(), unet.config),
                                     vae=ldm_layout.vae_to_original(vae.state_dict(), vae.config),
                                     layout="sdxl" if family == "sdxl" else "sd1", **texts)
    path = folder / f"random-{family}.safetensors"
    save_file({k: v.detach().to("cpu", torch.float16).contiguous() for k, v in state.items()}, str(path))
    return path


def load_ours(path: Path, device: torch.device):
    from modules.checkpoints import list_checkpoints
    from modules.devices import DevicePolicy
    from modules.sd_loader import load_checkpoint

    half = torch.float16 if device.type == "cuda" else torch.float32
    policy = DevicePolicy(device, half, half, half)
    [info] = [c for c in list_checkpoints([path.parent], None) if c.path == path]
    return load_checkpoint(info, policy)


# --------------------------------------------------------------------------------------------- timing

def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, runs: int) -> tuple[float, list[float]]:
    """(first call seconds, later calls' seconds)."""
    sync()
    started = time.perf_counter()
    fn(0)
    sync()
    first = time.perf_counter() - started
    times = []
    for i in range(1, runs + 1):
        sync()
        started = time.perf_counter()
        fn(i)
        sync()
        times.append(time.perf_counter() - started)
    return first, times


@contextlib.contextmanager
def peak_memory(record: dict):
    if torch.cuda.is_available():
        sync()
        torch.cuda.reset_peak_memory_stats()
    yield
    if torch.cuda.is_available():
        sync()
        record["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)


def ours_request(case: Case, seed: int, batch: int = 1):
    from modules.generation_request import Txt2ImgRequest

    fields = dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=case.steps, cfg_scale=7.5, width=case.size,
                  height=case.size, seed=seed, sampler_name="Euler", batch_size=min(batch, 8))
    request = Txt2ImgRequest(**fields)
    if batch > 8:  # the API caps batch_size at 8; the benchmark goes past that cap on purpose
        request = request.model_copy(update={"batch_size": batch})
    return request


def run_ours(model, case: Case, outputs: Path, batch: int = 1):
    from modules.processing import Resources, txt2img

    def call(i: int):
        return txt2img(model, ours_request(case, 1000 + i, batch), outputs, None, Resources())
    return call


def stock_pipeline(model, family: str, compiled: bool):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    tokenizer = CLIPTokenizer.from_pretrained(str(ROOT / "configs" / "tokenizers" / "clip"))
    # Its own VAE object: compiling `decode` below must not touch the project's model.
    vae = copy.deepcopy(model.vae) if compiled else model.vae
    unet = torch.compile(model.unet, mode="reduce-overhead", fullgraph=True) if compiled else model.unet
    if compiled:
        vae.decode = torch.compile(vae.decode, mode="reduce-overhead", fullgraph=True)
    if family == "sdxl":
        tokenizer_2 = CLIPTokenizer.from_pretrained(str(ROOT / "configs" / "tokenizers" / "open_clip"))
        return StableDiffusionXLPipeline(vae=vae, text_encoder=model.text_encoders[0].model,
                                         text_encoder_2=model.text_encoders[1].model, tokenizer=tokenizer,
                                         tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
    return StableDiffusionPipeline(vae=vae, text_encoder=model.text_encoders[0].model, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def run_stock(pipe, case: Case, outputs: Path, batch: int = 1):
    device = pipe.unet.device if hasattr(pipe.unet, "device") else torch.device("cuda")

    def call(i: int):
        generator = torch.Generator(device).manual_seed(1000 + i)
        images = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=case.steps, guidance_scale=7.5,
                      height=case.size, width=case.size, num_images_per_prompt=batch, generator=generator).images
        for n, image in enumerate(images):
            image.save(outputs / f"stock-{i}-{n}.png")
        return images
    return call


def unet_steps_per_second(model, case: Case, runs: int = 20) -> float:
    """UNet calls per second at batch 2 (cond + uncond), through the model's own calling convention."""
    latent = case.size // 8
    device = model.policy.device
    x = torch.randn(2, 4, latent, latent, device=device)
    t = torch.full((2,), 500.0, device=device)
    context = torch.randn(2, 77, model.unet.config.cross_attention_dim, device=device)
    extra = {}
    if case.family == "sdxl":
        extra = {"pooled": torch.randn(2, 1280, device=device),
                 "time_ids": torch.tensor([[case.size, case.size, 0, 0, case.size, case.size]] * 2, device=device)}
    with torch.no_grad():
        for _ in range(3):
            model.unet_fn(x, t, context=context, **extra)
        sync()
        started = time.perf_counter()
        for _ in range(runs):
            model.unet_fn(x, t, context=context, **extra)
        sync()
    return runs / (time.perf_counter() - started)


# --------------------------------------------------------------------------------------------- report

def environment() -> dict:
    env = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
           "torch": torch.__version__}
    with contextlib.suppress(Exception):
        import diffusers
        env["diffusers"] = diffusers.__version__
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        with contextlib.suppress(Exception):
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, check=True).stdout.strip()
    return env


class Report:
    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.data = {"environment": environment(), "results": []}

    def add(self, **row) -> None:
        self.data["results"].append(row)
        print(json.dumps(row), flush=True)
        (self.out / "gpu_speed.json").write_text(json.dumps(self.data, indent=2) + "\n")


def median(times: list[float]) -> float:
    return round(statistics.median(times), 4)


def compare_images(a, b) -> float:
    import numpy as np

    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


# --------------------------------------------------------------------------------------------- sections

def bench_case(case: Case, report: Report, work: Path, args) -> None:
    device = torch.device("cpu" if args.tiny else "cuda")
    started = time.perf_counter()
    path = write_checkpoint(case.family, work, device.type, args.tiny)
    model = load_ours(path, device)
    report.add(case=case.name, what="load", seconds=round(time.perf_counter() - started, 2))
    outputs = work / "outputs"
    outputs.mkdir(exist_ok=True)

    row: dict = {}
    with peak_memory(row):
        first, times = timed(run_ours(model, case, outputs), args.runs)
    eager_image = run_ours(model, case, outputs)(7).images[0]
    report.add(case=case.name, what="ours eager e2e", first_s=round(first, 3), median_s=median(times), **row)
    report.add(case=case.name, what="ours eager unet it/s", value=round(unet_steps_per_second(model, case), 2))

    if device.type == "cuda":
        model.set_policy(dataclasses.replace(model.policy, cuda_graphs=True))
        row = {}
        with peak_memory(row):
            first, times = timed(run_ours(model, case, outputs), args.runs)
        graphed_image = run_ours(model, case, outputs)(7).images[0]
        report.add(case=case.name, what="ours cuda-graphs e2e", first_s=round(first, 3), median_s=median(times),
                   capture_s=[round(s, 2) for s in model._runners["UNet"].capture_seconds],
                   mean_abs_diff_vs_eager=round(compare_images(eager_image, graphed_image), 4), **row)
        report.add(case=case.name, what="ours cuda-graphs unet it/s", value=round(unet_steps_per_second(model, case), 2))
        for batch in args.batches if case.family == "sd1" else ():
            row = {}
            with peak_memory(row):
                first, times = timed(run_ours(model, case, outputs, batch), max(2, args.runs // 2))
            report.add(case=case.name, what=f"ours cuda-graphs batch {batch}", images_per_s=round(batch / median(times), 2),
                       first_s=round(first, 2), **row)

    for compiled in (False, True) if device.type == "cuda" and (case.family != "sdxl" or args.sdxl_compile) \
            else (False,):
        label = "stock compiled e2e" if compiled else "stock eager e2e"
        try:
            pipe = stock_pipeline(model, case.family, compiled)
            row = {}
            with peak_memory(row):
                first, times = timed(run_stock(pipe, case, outputs), args.runs)
            report.add(case=case.name, what=label, first_s=round(first, 3), median_s=median(times), **row)
            if compiled and case.family == "sd1" and args.stock_batch16:
                first, times = timed(run_stock(pipe, case, outputs, 16), 2)
                report.add(case=case.name, what="stock compiled batch 16", images_per_s=round(16 / median(times), 2),
                           first_s=round(first, 2))
        except Exception as e:  # noqa: BLE001 - one failing side must not lose the rest of the run
            report.add(case=case.name, what=label, error=f"{type(e).__name__}: {e}"[:500])
        finally:
            pipe = None
            torch._dynamo.reset()
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu")
    parser.add_argument("--sections", default="sd15,sdxl")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", default="8,16")
    parser.add_argument("--sdxl-compile", action="store_true", help="also stock compiled SDXL (minutes of compile)")
    parser.add_argument("--stock-batch16", action="store_true", help="also stock compiled at batch 16 (recompiles)")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU, to check the script")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b]
    report = Report(args.out)
    cases = {"sd15": Case("SD1.5 512x512 20 steps", "sd1", 512, 20),
             "sdxl": Case("SDXL 1024x1024 30 steps", "sdxl", 1024, 30)}
    if args.tiny:
        cases = {"sd15": Case("tiny 64x64 4 steps", "sd1", 64, 4)}
    with tempfile.TemporaryDirectory() as work:
        for name in args.sections.split(","):
            if name in cases:
                bench_case(cases[name], report, Path(work), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
