"""GPU speed and memory: this project's txt2img beside stock diffusers, in one process, same weights.

Random weights of the real SD 1.5 and SDXL architectures (speed does not depend on weight values) are
written as single-file checkpoints in the original layout and loaded through the application's own
loader. Stock diffusers pipelines are built from the very same modules, so both sides run the same
weights on the same GPU in the same run.

    python bench/gpu_speed.py --out bench/results/gpu [--sections sd15,sdxl] [--runs 5]
    python bench/gpu_speed.py --tiny --out /tmp/gpu-smoke       # tiny models on the CPU: checks the script

Each section measures, in order: ours eager; ours with CUDA graphs (+ batch 8, + stage times with
`--paths breakdown`); stock eager; ours --lowvram; ours --compile (warm-up from an empty cache, again
from the disk cache with --cached-warmup, end to end, batch 16); stock compiled. A full SD1.5 + SDXL
run takes about 10 minutes on an H200, most of it compiling: `--sections sd15` alone about 5.

Each of our paths is the application's model with a ModelRunner of its settings (modules/accel/runner.py),
as the model manager makes one; `--compile-settings` is handed to that runner.

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
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from acceleration_variants import runner_compile_settings  # noqa: E402
from modules.accel.compilation import COMPILE_SETTINGS  # noqa: E402
from modules.accel.runner import ModelRunner, RunnerSettings  # noqa: E402
from modules.models import ldm_layout  # noqa: E402

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


def load_ours(path: Path, device: torch.device, policy=None):
    """The checkpoint loaded as the application loads it (a plain model; runners are made per path)."""
    from modules.models.checkpoints import list_checkpoints
    from modules.models.devices import DevicePolicy
    from modules.models.sd_loader import load_checkpoint

    half = torch.float16 if device.type == "cuda" else torch.float32
    policy = policy or DevicePolicy(device, half, half, half)
    [info] = [c for c in list_checkpoints([path.parent], None) if c.path == path]
    return load_checkpoint(info, policy)


def runner_settings(path: str, args) -> RunnerSettings:
    """The runner of one of our paths: "eager", "cuda-graphs" or "compiled" (with --helpers and
    --compile-settings, e.g. compile=layers+quick: acceleration_variants.py)."""
    compiled = path == "compiled"
    settings = runner_compile_settings(args.compile_settings) if args.compile_settings else COMPILE_SETTINGS
    return RunnerSettings(cuda_graphs=path != "eager", compile=compiled, compile_helpers=args.helpers,
                          compile_settings=settings)


def make_runner(model, path: str, args) -> ModelRunner:
    return ModelRunner(model, runner_settings(path, args))


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
def peak_memory(record: dict, key: str = "peak_vram_gib"):
    if torch.cuda.is_available():
        sync()
        torch.cuda.reset_peak_memory_stats()
    yield
    if torch.cuda.is_available():
        sync()
        record[key] = round(torch.cuda.max_memory_allocated() / 2**30, 3)


def ours_request(case: Case, seed: int, batch: int = 1):
    from modules.io.generation_request import Txt2ImgRequest

    fields = dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=case.steps, cfg_scale=7.5, width=case.size,
                  height=case.size, seed=seed, sampler_name="Euler", batch_size=batch)
    return Txt2ImgRequest(**fields)


def run_ours(runner, case: Case, outputs: Path, batch: int = 1, hooks=None):
    """One txt2img image (or batch) through `runner`, as a job of the application runs it."""
    from modules.pipeline.job import Resources
    from modules.pipeline.processing import txt2img

    def call(i: int):
        return txt2img(runner.model, ours_request(case, 1000 + i, batch), outputs, None, Resources(runner=runner),
                       hooks)
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


def unet_steps_per_second(runner, case: Case, runs: int = 20) -> float:
    """UNet calls per second at batch 2 (cond + uncond), through the runner, as sampling calls it."""
    model = runner.model
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
            runner.unet_fn(x, t, context=context, **extra)
        wait_for_warmups(runner)  # with --compile: time the compiled path, not the one serving meanwhile
        for _ in range(3):
            runner.unet_fn(x, t, context=context, **extra)
        sync()
        started = time.perf_counter()
        for _ in range(runs):
            runner.unet_fn(x, t, context=context, **extra)
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
    """Rows printed as they come and the whole JSON rewritten after each, so a cut-short run keeps them."""

    def __init__(self, out: Path, name: str = "gpu_speed.json"):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / name
        self.data = {"environment": environment(), "results": []}

    def add(self, **row) -> None:
        self.data["results"].append(row)
        print(json.dumps(row), flush=True)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")


def median(times: list[float]) -> float:
    return round(statistics.median(times), 4)


# --------------------------------------------------------------------------------------------- sections

def wait_for_warmups(runner, timeout: float = 300) -> dict:
    """Blocks until every background compilation has finished; their seconds (and errors) by part."""
    started = time.perf_counter()
    while any(w.finished is None for w in runner.warmups()) and time.perf_counter() - started < timeout:
        time.sleep(0.1)
    return {w.label: (round(w.seconds, 1) if w.error is None else f"failed: {w.error}") for w in runner.warmups()}


def warm_up(runner, report: Report, case: Case, label: str) -> None:
    """Time from asking for the fast path to having it: the 1-step warm-up image and the compilations."""
    from modules.service.generation_service import start_warm_up

    started = time.perf_counter()
    start_warm_up(runner)
    parts = wait_for_warmups(runner)
    report.add(case=case.name, what=f"ours compile warm-up ({label})", total_s=round(time.perf_counter() - started, 1),
               parts=parts)


def image_difference(a, b) -> dict:
    import numpy as np

    diff = np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32))
    return {"mean_abs_diff": round(float(diff.mean()), 3), "p99_abs_diff": round(float(np.percentile(diff, 99)), 1)}


def measure_ours(runner, case: Case, report: Report, outputs: Path, args, label: str, eager_image=None):
    """End to end; peak memory of the first call (which captures graphs) and of the calls after it."""
    row: dict = {}
    with peak_memory(row, "first_call_peak_vram_gib"):
        first, _ = timed(run_ours(runner, case, outputs), 0)
    with peak_memory(row):
        _, times = timed(run_ours(runner, case, outputs), args.runs)
    image = run_ours(runner, case, outputs)(7).images[0]
    if eager_image is not None:
        row.update(image_difference(eager_image, image))
    report.add(case=case.name, what=f"ours {label} e2e", first_s=round(first, 3), median_s=median(times), **row)
    report.add(case=case.name, what=f"ours {label} unet it/s", value=round(unet_steps_per_second(runner, case), 2))
    return image


def measure_batch(runner, case: Case, report: Report, outputs: Path, batch: int, label: str) -> None:
    row: dict = {}
    with peak_memory(row):
        first = timed(run_ours(runner, case, outputs, batch), 0)[0]
        wait_for_warmups(runner)
        _, times = timed(run_ours(runner, case, outputs, batch), 3)
    report.add(case=case.name, what=f"ours {label} batch {batch}", images_per_s=round(batch / median(times), 2),
               median_s=median(times), first_s=round(first, 2), **row)


def measure_stock(model, case: Case, report: Report, outputs: Path, args, compiled: bool) -> None:
    label = "stock compiled e2e" if compiled else "stock eager e2e"
    pipe = None
    try:
        pipe = stock_pipeline(model, case.family, compiled)
        row: dict = {}
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
        del pipe
        torch._dynamo.reset()


def bench_case(case: Case, report: Report, work: Path, args) -> None:
    device = torch.device("cpu" if args.tiny else "cuda")
    started = time.perf_counter()
    path = write_checkpoint(case.family, work, device.type, args.tiny)
    model = load_ours(path, device)
    report.add(case=case.name, what="load", seconds=round(time.perf_counter() - started, 2))
    outputs = work / "outputs"
    outputs.mkdir(exist_ok=True)
    runner = make_runner(model, "eager", args)
    eager_image = measure_ours(runner, case, report, outputs, args, "eager")
    runner.close()
    if device.type != "cuda":
        if "breakdown" in args.paths:  # the CPU check of the stage marks
            stage_breakdown(make_runner(model, "eager", args), case, report, outputs, "eager")
        return
    runner = make_runner(model, "cuda-graphs", args)
    try:
        measure_ours(runner, case, report, outputs, args, "cuda-graphs", eager_image)
        if "breakdown" in args.paths:
            stage_breakdown(runner, case, report, outputs, "cuda-graphs")
        if case.family == "sd1" and 8 in args.batches:
            measure_batch(runner, case, report, outputs, 8, "cuda-graphs")
    except Exception as e:  # noqa: BLE001
        report.add(case=case.name, what="ours cuda-graphs", error=f"{type(e).__name__}: {e}"[:500])
    measure_stock(model, case, report, outputs, args, compiled=False)
    runner.close()
    if "lowvram" in args.paths:
        bench_low_memory(case, path, report, outputs, args)

    runner = None
    if "compile" in args.paths:
        runner = make_runner(model, "compiled", args)
        try:
            warm_up(runner, report, case, "first, empty cache")
            if args.cached_warmup:
                torch._dynamo.reset()
                runner.close()
                runner = make_runner(model, "compiled", args)
                warm_up(runner, report, case, "again, from the on-disk cache")
            measure_ours(runner, case, report, outputs, args, "compiled", eager_image)
            if "breakdown" in args.paths:
                stage_breakdown(runner, case, report, outputs, "compiled")
            for batch in [b for b in args.batches if b > 8] if case.family == "sd1" else ():
                measure_batch(runner, case, report, outputs, batch, "compiled")
        except Exception as e:  # noqa: BLE001
            report.add(case=case.name, what="ours compiled", error=f"{type(e).__name__}: {e}"[:500])
    # Stock compiled runs with the UNet as the compiled runner left it (channels_last), as it always has.
    if "stock-compiled" in args.paths and (case.family == "sd1" or args.sdxl_compile):
        measure_stock(model, case, report, outputs, args, compiled=True)
    if runner is not None:
        runner.close()
    del model, runner
    torch.cuda.empty_cache()


def stage_breakdown(runner, case: Case, report: Report, outputs: Path, label: str, runs: int = 3) -> None:
    """Seconds per stage of one image (each stage synchronised, so they add up to a little more than
    the pipelined end-to-end time): where the time outside the UNet goes."""
    from stage_marks import STAGES, StageMarks

    spent: dict[str, list[float]] = {name: [] for name in STAGES}
    started: dict[str, float] = {}

    def begin(name: str) -> None:
        sync()
        started[name] = time.perf_counter()

    def end(name: str) -> None:
        sync()
        spent[name].append(time.perf_counter() - started[name])

    _, totals = timed(run_ours(runner, case, outputs, hooks=StageMarks(begin, end).hooks()), runs)
    report.add(case=case.name, what=f"ours {label} stages", total_s=median(totals),
               **{name: median(times[-runs:]) for name, times in spent.items()})


def bench_low_memory(case: Case, path: Path, report: Report, outputs: Path, args) -> None:
    """--lowvram: peak allocated memory and speed. Another model may be loaded in the same process, so
    memory is counted above what was allocated before this one was loaded."""
    from modules.models.devices import DevicePolicy

    sync()
    before = torch.cuda.memory_allocated()
    policy = DevicePolicy(torch.device("cuda"), torch.float16, torch.float16, torch.float16, memory_mode="lowvram")
    model = load_ours(path, policy.device, policy)
    row: dict = {"allocated_after_load_gib": round((torch.cuda.memory_allocated() - before) / 2**30, 3)}
    torch.cuda.reset_peak_memory_stats()
    first, times = timed(run_ours(ModelRunner(model, RunnerSettings.from_policy(policy)), case, outputs), 2)
    sync()
    row["peak_vram_gib"] = round((torch.cuda.max_memory_allocated() - before) / 2**30, 3)
    report.add(case=case.name, what="ours --lowvram e2e", first_s=round(first, 2), median_s=median(times), **row)
    del model
    torch.cuda.empty_cache()


def bench_model_switches(report: Report, work: Path, args) -> None:
    """Memory after each of 10 switches between two SD1.5 checkpoints (GPU: allocated; CPU with --tiny:
    the process's resident memory), to show that a switch frees the model it replaces."""
    import shutil

    import psutil

    from modules.app.cmd_args import parse_args
    from modules.models.devices import DevicePolicy
    from modules.service.model_manager import ModelManager
    from modules.io.paths import Paths

    cuda = not args.tiny
    folder = work / "switch" / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    source = write_checkpoint("sd1", folder, "cuda" if cuda else "cpu", args.tiny)
    shutil.copy(source, folder / "second.safetensors")
    if args.tiny:
        shutil.copy(source.with_suffix(".yaml"), folder / "second.yaml")
    policy = DevicePolicy(torch.device("cuda"), torch.float16, torch.float16, torch.float16, cuda_graphs=True) \
        if cuda else DevicePolicy.cpu()
    manager = ModelManager(Paths.from_args(parse_args(["--data-dir", str(work / "switch")], environ={})), policy,
                           hash_files=False)
    names = [c.title for c in manager.checkpoints]
    memory = []
    for i in range(10):
        model = manager.get(names[i % 2])
        run_ours(manager.runner_for(model), Case("switch", "sd1", 512 if cuda else 64, 2), work)(i)
        del model
        used = torch.cuda.memory_allocated() if cuda else psutil.Process().memory_info().rss
        memory.append(round(used / 2**30, 3))
    report.add(case="SD1.5 model switches", what=f"{'allocated' if cuda else 'resident'} GiB after each of 10 switches",
               values=memory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu")
    parser.add_argument("--sections", default="sd15,sdxl")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", default="8,16")
    parser.add_argument("--paths", default="compile,lowvram,stock-compiled,switches",
                        help="optional parts: compile, lowvram, stock-compiled, switches, breakdown")
    parser.add_argument("--cached-warmup", action="store_true", help="warm up twice: empty cache, then from the cache")
    parser.add_argument("--sdxl-compile", action="store_true", help="also stock compiled SDXL (minutes of compile)")
    parser.add_argument("--stock-batch16", action="store_true", help="also stock compiled at batch 16 (recompiles)")
    parser.add_argument("--helpers", type=int, default=None, help="compile helper processes (--compile-helpers)")
    parser.add_argument("--compile-settings", default=None,
                        help="compile settings for --compile, e.g. compile=layers+quick (acceleration_variants.py)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its convolution algorithms")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU, to check the script")
    args = parser.parse_args(argv)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    args.batches = [int(b) for b in args.batches.split(",") if b]
    report = Report(args.out)
    report.data["settings"] = {"compile_helpers": args.helpers, "compile_settings": args.compile_settings,
                              "cudnn_benchmark": args.cudnn_benchmark}
    cases = {"sd15": Case("SD1.5 512x512 20 steps", "sd1", 512, 20),
             "sdxl": Case("SDXL 1024x1024 30 steps", "sdxl", 1024, 30)}
    if args.tiny:
        cases = {"sd15": Case("tiny 64x64 4 steps", "sd1", 64, 4)}
    with tempfile.TemporaryDirectory() as work:
        for name in args.sections.split(","):
            if name in cases:
                bench_case(cases[name], report, Path(work), args)
        if "switches" in args.paths:
            bench_model_switches(report, Path(work), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
