"""A first compilation spread over helper processes, so the warm-up takes a fraction of its serial time.

Inductor spends most of a first compilation in single-threaded Python (tracing, lowering, scheduling,
code generation), one graph after another: about 35 of the 50 s that compiling SD1.5's UNet takes on
a 16-core host (bench/RESULTS.md). The graphs of different blocks do not depend on each other, and
Inductor caches each one on disk under what it computes (the traced program, its input shapes and
dtypes, its own settings), not under the weights' values. So helper processes, each holding the same
architecture with arbitrary weights, compile a share of the blocks into the shared on-disk cache at the
same time; the serving process then compiles everything itself and finds each graph already built.
A helper that fails only costs time: the serving process compiles whatever it does not find.

The helper side is `python -m modules.accel.compile_helpers`, reading one `Job` as JSON on stdin. A helper's
first 10-15 s go to importing diffusers and the compiler and starting CUDA, before its job is known:
`HelperPool` starts helpers while the model loads, so that time is spent before the warm-up begins.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modules.accel.compilation import CompileSettings, compiled_for_inference

ROOT = Path(__file__).resolve().parents[2]
HELPER_TIMEOUT_S = 900
# Per helper, beyond its copy of the weights: the CUDA context, one forward's activations and the
# workspaces of the kernels being tuned (SDXL's at 1024x1024 are the largest: bench/RESULTS.md).
HELPER_OVERHEAD_BYTES = 2 * 2**30
MAX_HELPERS = 4
# A pooled helper that no job reaches in this time (the model failed to load, or needs fewer helpers
# than were started) leaves, giving its CUDA context back.
POOL_IDLE_TIMEOUT_S = 180
PHASES_PREFIX = "compile helper phases: "
log = logging.getLogger(__name__)
_IMPORTED = time.time()  # torch is imported by now: most of a helper's start-up


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str  # e.g. "float16"

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "TensorSpec":
        return cls(tuple(tensor.shape), tuple(tensor.stride()), str(tensor.dtype).removeprefix("torch."))

    def example(self, device: torch.device) -> torch.Tensor:
        dtype = getattr(torch, self.dtype)
        tensor = torch.empty_strided(self.shape, self.stride, dtype=dtype, device=device)
        return tensor.normal_() if dtype.is_floating_point else tensor.zero_()


@dataclass(frozen=True)
class Job:
    """One helper's work: build `part` from its diffusers config and compile it (or its share of the
    UNet's blocks) for inputs of these shapes, exactly as the serving process will."""

    part: str  # "unet" | "vae"
    config: dict
    dtype: str
    channels_last: bool
    requires_grad: bool
    compile_settings: dict
    inputs: dict[str, TensorSpec | None]
    device: str
    share: tuple[int, int] | None = None  # (i, n): the i-th of n shares of the blocks (compilation._share_of)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Job":
        fields = json.loads(text)
        fields["inputs"] = {k: None if v is None else TensorSpec(tuple(v["shape"]), tuple(v["stride"]), v["dtype"])
                            for k, v in fields["inputs"].items()}
        fields["share"] = tuple(fields["share"]) if fields["share"] else None
        return cls(**fields)


def job_for(part: str, module: torch.nn.Module, settings: CompileSettings,
            tensors: dict[str, torch.Tensor | None], share: tuple[int, int] | None = None) -> Job:
    weight = next(module.parameters())
    return Job(part=part, config=json.loads(json.dumps(dict(module.config))), dtype=str(weight.dtype).removeprefix("torch."),
               channels_last=any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
                                 and not p.is_contiguous() for p in module.parameters()),
               requires_grad=weight.requires_grad, compile_settings=dataclasses.asdict(settings),
               inputs={k: None if t is None else TensorSpec.of(t) for k, t in tensors.items()},
               device=str(weight.device), share=share)


def default_helper_count(wanted: int | None = None) -> int:
    """`wanted` (--compile-helpers), else a quarter of the cores (each helper's own kernel builds use
    the rest) up to MAX_HELPERS."""
    return min(MAX_HELPERS, (os.cpu_count() or 1) // 4) if wanted is None else wanted


def _fitting(count: int, device: torch.device, weights_bytes: int, beside: int = 0) -> int:
    """`count`, but no more helpers, each holding `weights_bytes` of weights, than fit in the GPU
    memory that is free beyond `beside` bytes still to be allocated."""
    if device.type == "cuda" and count > 0:
        free, _ = torch.cuda.mem_get_info(device)
        count = min(count, int((free - beside) // (weights_bytes + HELPER_OVERHEAD_BYTES)))
    return max(0, count)


def helper_count(module: torch.nn.Module, wanted: int | None = None) -> int:
    """How many helpers to run for `module`: default_helper_count, but never more copies of the weights
    than fit in free GPU memory."""
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    return _fitting(default_helper_count(wanted), next(module.parameters()).device, size)


@dataclass
class _Helper:
    process: subprocess.Popen
    log: object  # a file, not a pipe: a full pipe would stall the helper
    spawned: float = field(default_factory=time.time)


def _helper_env(threads: int) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "TORCHINDUCTOR_COMPILE_THREADS": str(max(1, threads))}


def _spawn(env: dict[str, str], *args: str) -> _Helper:
    log_file = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen([sys.executable, "-m", "modules.accel.compile_helpers", *args], cwd=ROOT, env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log_file, text=True)
    return _Helper(process, log_file)


class HelperPool:
    """Helpers started before their jobs exist, each waiting for one with diffusers and the compiler
    imported and CUDA started on `device`. Started while a model loads (model_manager.py); the warm-up's
    `run_helpers` takes them instead of starting new ones. Each runs one job; one that gets none leaves
    after POOL_IDLE_TIMEOUT_S, or when the serving process does (its stdin closes)."""

    def __init__(self, count: int, device: torch.device | str):
        env = _helper_env((os.cpu_count() or 1) // max(1, count))
        self._waiting = [_spawn(env, "--wait", str(device)) for _ in range(count)]
        self._lock = threading.Lock()

    def take(self, count: int) -> list[_Helper]:
        """Up to `count` helpers still waiting, no longer the pool's."""
        with self._lock:
            alive = [h for h in self._waiting if h.process.poll() is None]
            for helper in self._waiting:
                if helper not in alive:
                    helper.log.close()
            taken, self._waiting = alive[:count], alive[count:]
        return taken

    def close(self) -> None:
        for helper in self.take(len(self._waiting)):
            helper.process.kill()
            helper.process.wait()
            helper.log.close()


def pool_for_load(device: torch.device, wanted: int | None, checkpoint_bytes: int) -> HelperPool | None:
    """Helpers for the warm-up after a load with --compile, started as the load starts: the UNet's
    (default_helper_count) and the VAE decoder's one, as many as fit in free GPU memory beside the model
    being loaded, the checkpoint's size standing in for the weights each holds (an overestimate: the file
    holds the text encoders and VAE too)."""
    count = _fitting(default_helper_count(wanted), device, checkpoint_bytes, beside=checkpoint_bytes)
    return HelperPool(count + 1, device) if count >= 1 else None


def run_helpers(jobs: list[Job], timeout: float = HELPER_TIMEOUT_S, at_once: int | None = None,
                pool: HelperPool | None = None) -> list[str]:
    """Runs each job in its own process, all at once (in helpers of `pool` while it has any), and waits
    for them; the errors of those that failed. `at_once`: how many helpers run on the machine meanwhile
    (these and others'), each of which gets an equal part of the cores for its kernel builds."""
    started = time.perf_counter()
    helpers = pool.take(len(jobs)) if pool is not None else []
    env = _helper_env((os.cpu_count() or 1) // max(len(jobs), at_once or 0))
    helpers += [_spawn(env) for _ in range(len(jobs) - len(helpers))]
    for job, helper in zip(jobs, helpers):
        try:
            helper.process.stdin.write(job.to_json())
            helper.process.stdin.close()
        except OSError:  # it died meanwhile: its exit status and stderr say why, below
            pass
    errors = []
    for job, helper in zip(jobs, helpers):
        process, stderr = helper.process, helper.log
        try:
            process.wait(timeout=max(1.0, timeout - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            errors.append(f"{job.part} {job.share}: timed out")
        else:
            if process.returncode:
                stderr.seek(0)
                errors.append(f"{job.part} {job.share}: exit {process.returncode}: {stderr.read().strip()[-400:]}")
            else:
                log.info("Compile helper %s %s finished after %.1f s (%s)", job.part, job.share,
                         time.perf_counter() - started, _phases(stderr, helper.spawned))
        stderr.close()
    return errors


def _phases(stderr, spawned: float) -> str:
    """A helper's own report of when it had imported torch, built the module and compiled it."""
    stderr.seek(0)
    reports = [line.removeprefix(PHASES_PREFIX) for line in stderr.read().splitlines() if line.startswith(PHASES_PREFIX)]
    if not reports:
        return "no report"
    return ", ".join(f"{name} after {stamp - spawned:.1f} s" for name, stamp in json.loads(reports[-1]).items())


def prebuild(part: str, module: torch.nn.Module, settings: CompileSettings,
             tensors: dict[str, torch.Tensor | None], helpers: int, pool: HelperPool | None = None) -> None:
    """Fill the compile cache for `part` (the UNet's blocks split over `helpers` processes, the VAE
    decoder in one; from `pool` while it has helpers) before the serving process compiles it; returns
    when the helpers are done."""
    count = helpers if part == "unet" else min(helpers, 1)
    done = _done_marker(job_for(part, module, settings, tensors))
    if count < 1 or done.exists():  # a warm cache: starting helpers would only add their start-up time
        return
    started = time.perf_counter()
    shares = [(i, count) for i in range(count)] if part == "unet" else [None]
    # The UNet's helpers and the VAE decoder's one run at the same time.
    errors = run_helpers([job_for(part, module, settings, tensors, share) for share in shares],
                         at_once=helpers + 1, pool=pool)
    for error in errors:
        log.warning("A compile helper failed (the serving process compiles its share): %s", error)
    log.info("%d compile helper(s) for the %s done in %.1f s", count, part, time.perf_counter() - started)
    if not errors:
        done.parent.mkdir(parents=True, exist_ok=True)
        done.touch()


def _done_marker(job: Job) -> Path:
    """A file in Inductor's cache folder saying helpers have compiled `job` into it (gone with the cache)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    digest = hashlib.sha256(f"{torch.__version__} {job.to_json()}".encode()).hexdigest()[:24]
    return Path(cache_dir()) / "compile-helpers" / f"{digest}.done"


# --------------------------------------------------------------------------------------------- helper side

def _build(job: Job) -> torch.nn.Module:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    model_class = UNet2DConditionModel if job.part == "unet" else AutoencoderKL
    # The compiled program does not depend on the weights' values: the module is made without any
    # (diffusers' random initialisation of SDXL's UNet is slow on a CPU) and filled with noise where it runs.
    with torch.device("meta"):
        module = model_class.from_config(job.config)
    module = module.to(getattr(torch, job.dtype)).to_empty(device=job.device)
    with torch.no_grad():
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            tensor.normal_(0.0, 0.02) if tensor.is_floating_point() else tensor.zero_()
    module = module.eval().requires_grad_(job.requires_grad)
    if job.channels_last:
        module.to(memory_format=torch.channels_last)
    return module


def run_job(job: Job) -> dict[str, float]:
    """Compile what `job` names, the same way the serving process does, and run it once; when (time.time())
    it had built the module and compiled it."""
    # Imported here, not at the top: a helper's phase report counts torch's import alone as "imported".
    from modules.accel.context_projections import ContextProjections
    from modules.models.sd_model import call_unet, call_vae_decoder

    module = _build(job)
    built = time.time()
    settings = CompileSettings(**job.compile_settings)
    device = torch.device(job.device)
    inputs = {k: None if spec is None else spec.example(device) for k, spec in job.inputs.items()}
    with torch.no_grad():
        if job.part == "unet":  # as ModelRunner's compiled UNet does (runner.py)
            projections = ContextProjections(module)
            compiled = projections.compiled(settings, job.share)
            projections.update(inputs["context"], inputs["context"], keep=True)
            call_unet(compiled, **inputs)
        else:  # as ModelRunner's compiled VAE decoder does
            compiled_for_inference(functools.partial(call_vae_decoder, module), settings)(**inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"built": built, "compiled": time.time()}


def _get_ready(device: str) -> None:
    """What every job needs before it is known: the model classes, the compiler with its pool of kernel
    build processes, and the device."""
    import importlib

    import diffusers
    from torch._inductor.async_compile import AsyncCompile

    for name in ("UNet2DConditionModel", "AutoencoderKL"):
        getattr(diffusers, name)  # diffusers imports a class's module when it is first asked for
    for name in ("modules.accel.context_projections", "modules.models.sd_model"):
        importlib.import_module(name)
    AsyncCompile.warm_pool()
    if torch.device(device).type == "cuda":
        torch.empty(1, device=device)  # starts CUDA


def main(argv: list[str]) -> int:
    times = {"imported": _IMPORTED}
    if argv[:1] == ["--wait"]:  # a HelperPool's helper
        _get_ready(argv[1])
        times["ready"] = time.time()
        if not select.select([sys.stdin], [], [], POOL_IDLE_TIMEOUT_S)[0]:
            return 0
    text = sys.stdin.read()
    if not text.strip():  # the serving process left, or closed the pool, without a job for this helper
        return 0
    times.update(run_job(Job.from_json(text)))
    print(PHASES_PREFIX + json.dumps(times), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # Everything is in the on-disk cache by now; an orderly exit (the compile workers, the CUDA context)
    # takes seconds more, which the serving process would wait for.
    os._exit(code)
