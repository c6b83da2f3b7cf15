"""One loaded model, run fast: its CUDA graphs, compiled regions, compile helpers and context projections.

The model (modules/models/sd_model.py) is plain modules and knows how each part is called. A
`ModelRunner` sits beside it and owns everything that makes those calls fast on the device, for as long
as the model is loaded: the model manager makes one when it loads a model and closes it on unload, and
the pipeline calls the UNet, the VAE decoder and the text encoders through it. What it does is set by
`RunnerSettings` (the --cuda-graphs / --compile flags, or a benchmark's variant): with none, the parts
run as plain modules, the UNet through its context projections (the CPU path).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from modules.accel import compile_helpers
from modules.accel.compilation import COMPILE_SETTINGS, CompileSettings, compiled_for_inference
from modules.accel.context_projections import ContextProjections
from modules.accel.cuda_graphs import CudaGraphRunner, WarmingRunner, WarmUp
from modules.models.devices import DevicePolicy
from modules.models.sd_model import StableDiffusionModel, TextEncoder, call_unet, call_vae_decoder

UNET, VAE_DECODER = "UNet", "VAE decoder"


@dataclass(frozen=True)
class RunnerSettings:
    """How a runner runs its model."""

    cuda_graphs: bool = False  # replay the UNet, VAE decoder and text encoders from CUDA graphs
    compile: bool = False  # also compile the UNet and VAE decoder, in the background (compilation.py)
    compile_helpers: int | None = None  # processes that share a first compilation; None: from the cores
    compile_settings: CompileSettings = COMPILE_SETTINGS

    @classmethod
    def from_policy(cls, policy: DevicePolicy) -> RunnerSettings:
        """What the command line asked for (--cuda-graphs, --compile, --compile-helpers)."""
        return cls(cuda_graphs=policy.cuda_graphs, compile=policy.compile, compile_helpers=policy.compile_helpers)


class ModelRunner:
    """Calls one model's parts: through CUDA graphs (and compiled code) where the settings ask for them and
    the model's device and memory mode allow, else as plain modules."""

    def __init__(self, model: StableDiffusionModel, settings: RunnerSettings = RunnerSettings(),
                 helper_pool: compile_helpers.HelperPool | None = None):
        self.model = model
        self.settings = settings
        self.helper_pool = helper_pool  # helpers started with the load, for the first compilation
        asked = dataclasses.replace(model.policy, cuda_graphs=settings.cuda_graphs, compile=settings.compile)
        self.replays_graphs = asked.replays_graphs  # CUDA, and weights that stay where they are
        self.compiles = self.replays_graphs and settings.compile
        self._parts: dict[str, CudaGraphRunner | WarmingRunner] = {}
        self._text_graphs: dict[tuple[int, int], CudaGraphRunner] = {}  # by (id of the encoder, layer depth)
        self._projections: ContextProjections | None = None
        if self.compiles:
            # Compiled convolutions run fastest in cuDNN's NHWC layout (bench/RESULTS.md); eager ones do
            # not. Changing the layout replaces the weights, so it happens before any graph reads them.
            model.unet.to(memory_format=torch.channels_last)

    # ---- the parts, in the pipeline's calling conventions -------------------------------------------
    def unet_fn(self, x: torch.Tensor, timestep: torch.Tensor, *, context: torch.Tensor,
                pooled: torch.Tensor | None = None, time_ids: torch.Tensor | None = None,
                image_cond: torch.Tensor | None = None) -> torch.Tensor:
        """StableDiffusionModel.unet_fn (the denoiser's convention, float32 out) through the fast path."""
        tensors = self.model.unet_inputs(x, timestep, context, pooled, time_ids, image_cond)
        graphs = self.replays_graphs and x.is_cuda
        if self.sampling_unet is not self.model.unet:
            self._context_projections().update(context, tensors["context"], keep=graphs)
        if graphs:
            return self._part(UNET, self._unet_forward, self._compiled_unet)(**tensors)
        return self._unet_forward(**tensors)

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """StableDiffusionModel.vae_decode (scaled-back latents in the VAE's dtype -> pixels in [-1, 1])."""
        if self.replays_graphs and latents.is_cuda:
            return self._part(VAE_DECODER, self._vae_decode, self._compiled_vae_decode)(z=latents)
        return self._vae_decode(latents)

    def text_hidden_states(self, encoder: TextEncoder, input_ids: torch.Tensor, depth: int,
                           replay: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """TextEncoder.hidden_states, through a CUDA graph unless `replay` is false (a graph would bake in
        one prompt's embedding vectors)."""
        if not (replay and self.replays_graphs and input_ids.is_cuda):
            return encoder.hidden_states(input_ids, depth)
        key = (id(encoder), depth)  # the encoders live as long as the model, which this runner holds
        graphs = self._text_graphs.get(key)
        if graphs is None:
            graphs = self._text_graphs[key] = CudaGraphRunner(functools.partial(encoder.hidden_states, depth=depth))
        return graphs(input_ids=input_ids)

    @property
    def sampling_unet(self) -> torch.nn.Module:
        """The UNet that sampling runs: with the memory mode that keeps weights in place, a weight-sharing
        copy that reads cross-attention keys and values computed once per prompt (context_projections.py);
        the low-memory modes' hooks are on the UNet itself, which they run."""
        return self.model.unet if self.model.policy.memory_mode != "normal" else self._context_projections().unet

    # ---- state ----------------------------------------------------------------------------------------
    def warmups(self) -> list[WarmUp]:
        """Background compilations (cuda_graphs.WarmUp) of every part, oldest first."""
        return [w for part in self._parts.values() for w in getattr(part, "warmups", {}).values()]

    def forget(self, part: str | None = None) -> None:
        """Drop the graphs of one part (UNET, VAE_DECODER), or of all, after its weights were replaced,
        e.g. by a dtype change."""
        for name in [part] if part else list(self._parts):
            runner = self._parts.pop(name, None)
            if runner is not None:
                runner.clear()
        if part is None:
            for graphs in self._text_graphs.values():
                graphs.clear()
            self._text_graphs.clear()
        if self._projections is not None and part in (None, UNET):
            self._projections.clear()

    def release_helpers(self) -> None:
        """Close the load's compile helpers that no part has taken (each part takes its own at its first
        call): they would only wait for jobs that will not come."""
        if self.helper_pool is not None:
            self.helper_pool.close()

    def close(self) -> None:
        """Everything dropped and the model's UNet in its plain layout again: the model can go as soon as
        the last reference to it does."""
        self.forget()
        self.release_helpers()
        self._projections = None
        if self.compiles:
            self.model.unet.to(memory_format=torch.contiguous_format)

    # ---- how each part is built ---------------------------------------------------------------------
    def _part(self, name: str, fn: Callable, compiled: Callable[[], Callable]) -> CudaGraphRunner | WarmingRunner:
        """The graph runner of one part; when compiling, `compiled()` makes the compiled version that
        replaces fn once it is ready (built with the help of other processes, compile_helpers.py)."""
        runner = self._parts.get(name)
        if runner is None:
            if self.compiles:
                runner = WarmingRunner(fn, compiled, name, prebuild=self._prebuild_for(name))
            else:
                runner = CudaGraphRunner(fn)
            self._parts[name] = runner
        return runner

    def _prebuild_for(self, name: str) -> Callable[[dict], None] | None:
        part, module = ("unet", self.model.unet) if name == UNET else ("vae", self.model.vae)
        helpers = compile_helpers.helper_count(module, self.settings.compile_helpers)
        if helpers < 1:
            return None
        return functools.partial(compile_helpers.prebuild, part, module, self.settings.compile_settings,
                                 helpers=helpers, pool=self.helper_pool)

    def _compiled_vae_decode(self) -> Callable:
        return compiled_for_inference(functools.partial(call_vae_decoder, self.model.vae),
                                      self.settings.compile_settings)

    def _compiled_unet(self) -> Callable:
        # Block by block (deep transformers layer by layer) on a copy that shares the weights, so the
        # plain path stays plain; less compile time than the whole UNet (bench/RESULTS.md).
        return functools.partial(call_unet, self._context_projections().compiled(self.settings.compile_settings))

    def _context_projections(self) -> ContextProjections:
        if self._projections is None:
            self._projections = ContextProjections(self.model.unet)
        return self._projections

    def _vae_decode(self, z: torch.Tensor) -> torch.Tensor:
        return call_vae_decoder(self.model.vae, z)

    def _unet_forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                      pooled: torch.Tensor | None, time_ids: torch.Tensor | None) -> torch.Tensor:
        return call_unet(self.sampling_unet, x, timestep, context, pooled, time_ids)
