"""CUDA-graph replay of the UNet, VAE decoder and text encoders for static shapes (`--cuda-graphs`).

At batch 1 a Stable Diffusion step on a fast GPU is bound by the host launching about a thousand
kernels, not by the GPU running them. A captured graph launches them all at once. Each distinct set
of input shapes (batch, size, prompt length) is captured once, after a short warm-up on a side
stream, in about a second; later calls copy their inputs into the graph's static buffers and replay.
Weights are read by address, so LoRA patches (applied in place) are seen by the graph; anything
that replaces a module's tensors (a dtype change) must `clear()` the runner.

With `--compile`, `WarmingRunner` serves each new shape from the plain graph while Inductor compiles
that shape on a background thread, then switches to a graph of the compiled code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

WARMUP_CALLS = 2  # cuDNN/cuBLAS pick their algorithms in the first calls; capture after that
MAX_GRAPHS = 8  # each graph holds its own activation memory; the least recently used goes first

ShapeKey = tuple[tuple[str, tuple[int, ...] | None, torch.dtype | None], ...]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor | None]
    output: torch.Tensor | tuple[torch.Tensor | None, ...]


def shape_key(tensors: dict[str, torch.Tensor | None]) -> ShapeKey:
    return tuple((name, None if t is None else tuple(t.shape), None if t is None else t.dtype)
                 for name, t in sorted(tensors.items()))


_side_streams: dict[int, torch.cuda.Stream] = {}


def _side_stream() -> torch.cuda.Stream:
    """One warm-up stream per device, reused: cuBLAS allocates a workspace (32 MiB on Hopper) for every
    stream it runs on and keeps it, so a new stream per capture leaked that much per graph."""
    device = torch.cuda.current_device()
    stream = _side_streams.get(device)
    if stream is None:
        stream = _side_streams[device] = torch.cuda.Stream()
    return stream


def _clone(output):
    if isinstance(output, tuple):
        return tuple(None if t is None else t.clone() for t in output)
    return output.clone()


class _CaptureGate:
    """Keeps graph captures and background compilations apart.

    A compiler working on another thread synchronises the device and benchmarks kernels, which a
    capture in progress does not permit (CUDA fails the capture and the compilation). So no capture
    starts while a compilation runs: calls with new shapes run without a graph until it ends, and a
    compilation waits for a capture (a fraction of a second) to finish before it starts.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._compiling = 0

    def try_capture(self) -> bool:
        """True (holding the gate: call `end_capture`) when nothing is compiling."""
        self._lock.acquire()
        if self._compiling:
            self._lock.release()
            return False
        return True

    def end_capture(self) -> None:
        self._lock.release()

    def begin_compile(self) -> None:
        with self._lock:
            self._compiling += 1

    def end_compile(self) -> None:
        with self._lock:
            self._compiling -= 1


_gate = _CaptureGate()


class CudaGraphRunner:
    """Calls `fn(**tensors) -> tensor or tuple of tensors` through a captured graph per input shape."""

    def __init__(self, fn: Callable[..., torch.Tensor], max_graphs: int = MAX_GRAPHS):
        self.fn = fn
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[ShapeKey, _Captured] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, **tensors: torch.Tensor | None):
        key = shape_key(tensors)
        with self._lock:
            captured = self._graphs.get(key)
            if captured is None:
                if not _gate.try_capture():
                    return self.fn(**tensors)  # a compilation is running: no graph until it ends
                try:
                    captured = self._capture(tensors)
                finally:
                    _gate.end_capture()
                self._graphs[key] = captured
                while len(self._graphs) > self.max_graphs:
                    self._graphs.popitem(last=False)
            self._graphs.move_to_end(key)
            for name, value in tensors.items():
                if value is not None:
                    captured.inputs[name].copy_(value, non_blocking=True)
            captured.graph.replay()
            # The output buffer is overwritten by the next replay: hand out a copy.
            return _clone(captured.output)

    def _capture(self, tensors: dict[str, torch.Tensor | None]) -> _Captured:
        inputs = {name: None if t is None else t.detach().clone() for name, t in tensors.items()}
        side = _side_stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self.fn(**inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (a live-preview decode for the page) may use the GPU meanwhile.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            output = self.fn(**inputs)
        torch.cuda.synchronize()
        return _Captured(graph, inputs, output)

    def forget(self, key: ShapeKey) -> None:
        with self._lock:
            self._graphs.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._graphs.clear()


@dataclass
class WarmUp:
    """What a background compilation is doing, for logs, the UI and the API."""

    label: str
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None
    error: str | None = None

    @property
    def seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started


def warmup_note(warmups: list[WarmUp]) -> str | None:
    """One line on the compilations still running, e.g. for a progress bar; None when there are none."""
    running = [w for w in warmups if w.finished is None]
    if not running:
        return None
    return "compiling " + ", ".join(f"{w.label} ({w.seconds:.0f} s)" for w in running) + \
        "; the plain path serves until then"


class WarmingRunner:
    """Runs `plain` through graphs until `compiled` has been compiled for the input shapes, then
    `compiled` through graphs. Compilation of a new shape starts on a background thread the first
    time the shape is seen, so no call ever waits for the compiler."""

    # One compilation at a time: two at once contend for the GIL and both finish later than in turn
    # (the first shape asked for, the UNet's, is then ready first).
    _compiling = threading.Lock()

    def __init__(self, plain: Callable[..., torch.Tensor], make_compiled: Callable[[], Callable[..., torch.Tensor]],
                 label: str, on_change: Callable[[], None] = lambda: None,
                 prebuild: Callable[[dict[str, torch.Tensor | None]], None] | None = None):
        self.plain = CudaGraphRunner(plain)
        # Built on the compile thread when first needed: making it imports the compiler and copies the
        # module, seconds that would otherwise delay the first call and the helpers' start.
        self.make_compiled = make_compiled
        self.compiled: Callable[..., torch.Tensor] | None = None
        self.fast: CudaGraphRunner | None = None
        self.prebuild = prebuild  # fills the compile cache from other processes first (compile_helpers.py)
        self.label = label
        self.on_change = on_change
        self.warmups: dict[ShapeKey, WarmUp] = {}
        self._lock = threading.Lock()
        self._building = threading.Lock()

    def __call__(self, **tensors: torch.Tensor | None):
        key = shape_key(tensors)
        with self._lock:
            warmup = self.warmups.get(key)
            if warmup is None:
                self.warmups[key] = warmup = WarmUp(self._describe(tensors))
                examples = {name: None if t is None else t.detach().clone() for name, t in tensors.items()}
                threading.Thread(target=self._compile, args=(key, warmup, examples), daemon=True,
                                 name=f"compile-{self.label}").start()
        if warmup.finished is not None and warmup.error is None:
            return self.fast(**tensors)
        return self.plain(**tensors)

    def _describe(self, tensors: dict[str, torch.Tensor | None]) -> str:
        first = next(t for t in tensors.values() if t is not None)
        return f"{self.label} {'x'.join(str(d) for d in first.shape)}"

    def _compile(self, key: ShapeKey, warmup: WarmUp, examples: dict[str, torch.Tensor | None]) -> None:
        warmup.started = time.perf_counter()
        log.info("Compiling %s in the background", warmup.label)
        self.on_change()
        helpers = None
        if self.prebuild is not None:  # outside the one-at-a-time lock: the helpers of several parts run at once
            helpers = threading.Thread(target=self._prebuild, args=(warmup, examples), daemon=True,
                                       name=f"compile-helpers-{self.label}")
            helpers.start()
        try:
            with self._building:
                if self.compiled is None:  # while the helpers work
                    self.compiled = self.make_compiled()
                    self.fast = CudaGraphRunner(self.compiled)
        except Exception as e:  # noqa: BLE001 - the part stays on the plain path
            warmup.error = f"{type(e).__name__}: {e}"[:300]
        if helpers is not None:
            helpers.join()
        with self._compiling:
            if warmup.error is None:
                self._run_compiled(warmup, examples)
            if warmup.error is None:
                self.plain.forget(key)  # the compiled graph replaces it: its memory is not needed any more
            warmup.finished = time.perf_counter()
        if warmup.error:
            log.warning("Compiling %s failed after %.1f s; it stays on the plain path: %s", warmup.label,
                        warmup.seconds, warmup.error)
        else:
            log.info("Compiled %s in %.1f s", warmup.label, warmup.seconds)
        self.on_change()

    def _run_compiled(self, warmup: WarmUp, examples: dict[str, torch.Tensor | None]) -> None:
        """The compiler's work happens on these first calls (on a side stream, no capture meanwhile)."""
        _gate.begin_compile()
        try:
            side = _side_stream()
            with torch.no_grad(), torch.cuda.stream(side):
                for _ in range(WARMUP_CALLS):
                    self.compiled(**examples)
            side.synchronize()
        except Exception as e:  # noqa: BLE001 - a shape the compiler cannot handle stays on the plain path
            warmup.error = f"{type(e).__name__}: {e}"[:300]
        finally:
            _gate.end_compile()

    def _prebuild(self, warmup: WarmUp, examples: dict[str, torch.Tensor | None]) -> None:
        try:
            self.prebuild(examples)
        except Exception as e:  # noqa: BLE001 - without helpers this process compiles everything itself
            log.warning("Compile helpers for %s failed: %s", warmup.label, e)

    def clear(self) -> None:
        self.plain.clear()
        if self.fast is not None:
            self.fast.clear()
