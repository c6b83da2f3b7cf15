"""CUDA-graph replay of the UNet for static shapes (`--cuda-graphs`).

At batch 1 a Stable Diffusion step on a fast GPU is bound by the host launching about a thousand
kernels, not by the GPU running them. A captured graph launches them all at once. Each distinct set
of input shapes (batch, size, prompt length) is captured once, after a short warm-up on a side
stream, in about a second; later calls copy their inputs into the graph's static buffers and replay.
Weights are read by address, so LoRA patches (applied in place) are seen by the graph.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

WARMUP_CALLS = 2  # cuDNN/cuBLAS pick their algorithms in the first calls; capture after that
MAX_GRAPHS = 8  # each graph holds its own activation memory; the least recently used goes first

ShapeKey = tuple[tuple[str, tuple[int, ...] | None, torch.dtype | None], ...]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor | None]
    output: torch.Tensor


def shape_key(tensors: dict[str, torch.Tensor | None]) -> ShapeKey:
    return tuple((name, None if t is None else tuple(t.shape), None if t is None else t.dtype)
                 for name, t in sorted(tensors.items()))


class CudaGraphRunner:
    """Calls `fn(**tensors) -> tensor` through a captured graph per input shape."""

    def __init__(self, fn: Callable[..., torch.Tensor], max_graphs: int = MAX_GRAPHS):
        self.fn = fn
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[ShapeKey, _Captured] = OrderedDict()
        self._lock = threading.Lock()
        self.capture_seconds: list[float] = []  # one entry per capture, for the benchmark and logs

    def __call__(self, **tensors: torch.Tensor | None) -> torch.Tensor:
        key = shape_key(tensors)
        with self._lock:
            captured = self._graphs.get(key)
            if captured is None:
                captured = self._capture(tensors)
                self._graphs[key] = captured
                while len(self._graphs) > self.max_graphs:
                    self._graphs.popitem(last=False)
            self._graphs.move_to_end(key)
            for name, value in tensors.items():
                if value is not None:
                    captured.inputs[name].copy_(value, non_blocking=True)
            captured.graph.replay()
            # The output buffer is overwritten by the next replay: hand out a copy.
            return captured.output.clone()

    def _capture(self, tensors: dict[str, torch.Tensor | None]) -> _Captured:
        started = time.perf_counter()
        inputs = {name: None if t is None else t.detach().clone() for name, t in tensors.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self.fn(**inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self.fn(**inputs)
        torch.cuda.synchronize()
        self.capture_seconds.append(time.perf_counter() - started)
        return _Captured(graph, inputs, output)

    def clear(self) -> None:
        with self._lock:
            self._graphs.clear()
