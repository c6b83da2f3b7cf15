"""A loaded Stable Diffusion checkpoint: its modules and what is needed to run them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from modules.accel.acceleration import Acceleration
from modules.models.checkpoints import CheckpointInfo
from modules.models.devices import DevicePolicy
from modules.sampling.denoisers import DiscreteSchedule, Prediction

# What --compile uses for the UNet and the VAE decoder. One launch configuration per pointwise kernel
# ("quick"): the compile helpers (compile_helpers.py) share one GPU, and timing several configurations
# of every kernel there is what made them slow (bench/RESULTS.md). Deep transformers (SDXL's ten-layer
# ones) compiled layer by layer: the SDXL warm-up took 55 s instead of over 80 s.
COMPILE_SETTINGS = Acceleration(compile="layers", quick=True)


@dataclass
class TextEncoder:
    kind: str  # "clip_l" | "open_clip"
    model: torch.nn.Module
    tokenizer: object
    output_layer: str = "last"  # "last" | "penultimate": the layer the UNet was trained on
    final_layer_norm: bool = True  # whether that layer's output goes through the final norm
    device: torch.device | None = None  # where it runs (its weights may be elsewhere in the low-memory modes)
    replays_graphs: bool = False  # run through CUDA graphs (set from the device policy)
    _runners: dict = field(default_factory=dict, repr=False)

    def hidden_states(self, input_ids: torch.Tensor, depth: int,
                      replay: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden states `depth` layers from the end, projected pooled output or None); through a CUDA
        graph when the policy allows and `replay` is true."""
        def run(input_ids: torch.Tensor):
            out = self.model(input_ids=input_ids, output_hidden_states=True)
            return out.hidden_states[-min(depth, len(out.hidden_states) - 1)], getattr(out, "text_embeds", None)

        if not (replay and self.replays_graphs and input_ids.is_cuda):
            return run(input_ids)
        runner = self._runners.get(depth)
        if runner is None:
            from modules.accel.cuda_graphs import CudaGraphRunner

            runner = self._runners[depth] = CudaGraphRunner(run)
        return runner(input_ids=input_ids)


@dataclass
class StableDiffusionModel:
    checkpoint: CheckpointInfo
    family: str
    prediction: Prediction
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list[TextEncoder]
    schedule: DiscreteSchedule
    scale_factor: float
    native_size: int
    policy: DevicePolicy
    vae_name: str | None = None  # file name of an external VAE, None for the checkpoint's own
    notes: list[str] = field(default_factory=list)
    offload: object | None = field(default=None, repr=False)  # memory_modes.ComponentSwapper in --medvram/--lowvram
    _runners: dict = field(default_factory=dict, repr=False)  # CudaGraphRunner / WarmingRunner per part
    _projections: object | None = field(default=None, repr=False)  # context_projections.ContextProjections
    helper_pool: object | None = field(default=None, repr=False)  # compile_helpers.HelperPool started at load

    def __post_init__(self) -> None:
        self.set_policy(self.policy)

    def set_policy(self, policy: DevicePolicy) -> None:
        """Switch graphs / compilation on or off (device, dtypes and memory mode are fixed at load)."""
        self.forget_compiled_state()
        self.policy = policy
        for encoder in self.text_encoders:
            encoder.replays_graphs = policy.replays_graphs
            encoder.device = encoder.device or policy.device
            encoder._runners.clear()
        # Compiled convolutions run fastest in cuDNN's NHWC layout (bench/RESULTS.md); eager ones do not.
        compiled = policy.replays_graphs and policy.compile
        self.unet.to(memory_format=torch.channels_last if compiled else torch.contiguous_format)
        # The VAE decoder's full-resolution convolutions in NCHW need cuDNN workspace for layout
        # transposes: the largest transient of a 512x512 job, 610 MiB against 448 MiB in NHWC for
        # 4.7 ms more per decode (bench/RESULTS.md). Memory is what a smaller card runs out of.
        on_gpu = policy.device.type == "cuda"
        self.vae.to(memory_format=torch.channels_last if on_gpu else torch.contiguous_format)

    @property
    def is_sdxl(self) -> bool:
        return self.family.startswith("sdxl")

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.out_channels)

    @property
    def unet_in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def unet_fn(self, x: torch.Tensor, timestep: torch.Tensor, *, context: torch.Tensor,
                pooled: torch.Tensor | None = None, time_ids: torch.Tensor | None = None,
                image_cond: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet in the denoiser's calling convention, in the model's dtype, returning float32.

        `image_cond` (inpainting models: mask + masked-image latents) is appended to the input
        channels after the denoiser has scaled x, as the original LDM "hybrid" conditioning does.
        """
        dtype = self.policy.unet_dtype
        if image_cond is not None:
            x = torch.cat([x, image_cond.to(x.dtype)], dim=1)
        tensors = {"x": x.to(dtype), "timestep": timestep.to(x.device), "context": context.to(dtype),
                   "pooled": None if pooled is None else pooled.to(dtype),
                   "time_ids": None if time_ids is None else time_ids.to(dtype)}
        if self._sampling_unet() is not self.unet:
            self._projections.update(context, tensors["context"], keep=self.policy.replays_graphs and x.is_cuda)
        if self.policy.replays_graphs and x.is_cuda:
            return self._runner("UNet", self._unet_forward, self._compiled_unet)(**tensors)
        return self._unet_forward(**tensors)

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled-back latents (in the VAE's dtype, on its device) -> pixels in [-1, 1], float32."""
        if self.policy.replays_graphs and latents.is_cuda:
            return self._runner("VAE decoder", self._vae_decode, self._compiled_vae_decode)(z=latents)
        return self._vae_decode(latents)

    def forget_compiled_state(self, part: str | None = None) -> None:
        """Drop graphs (of one part, or all) after their weights were replaced, e.g. by a dtype change."""
        for name in [part] if part else list(self._runners):
            runner = self._runners.pop(name, None)
            if runner is not None:
                runner.clear()
        if self._projections is not None and part in (None, "UNet"):
            self._projections.clear()

    def warmups(self) -> list:
        """Background compilations (cuda_graphs.WarmUp) of every part, oldest first."""
        return [w for runner in self._runners.values() for w in getattr(runner, "warmups", {}).values()]

    def _runner(self, name: str, fn, compiled: Callable[[], Callable] | None = None):
        """The graph runner of one part; with --compile, `compiled()` makes the compiled version that
        replaces fn once it is ready (built with the help of other processes, compile_helpers.py)."""
        runner = self._runners.get(name)
        if runner is None:
            from modules.accel import cuda_graphs

            if self.policy.compile and compiled is not None:
                runner = cuda_graphs.WarmingRunner(fn, compiled, name, prebuild=self._prebuild_for(name))
            else:
                runner = cuda_graphs.CudaGraphRunner(fn)
            self._runners[name] = runner
        return runner

    def _prebuild_for(self, name: str) -> Callable[[dict], None] | None:
        from modules.accel import compile_helpers

        part, module = ("unet", self.unet) if name == "UNet" else ("vae", self.vae)
        helpers = compile_helpers.helper_count(module, self.policy.compile_helpers)
        if helpers < 1:
            return None
        return functools.partial(compile_helpers.prebuild, part, module, COMPILE_SETTINGS, helpers=helpers,
                                 pool=self.helper_pool)

    def _compiled_vae_decode(self) -> Callable:
        from modules.accel.acceleration import compiled_for_inference

        return compiled_for_inference(functools.partial(call_vae_decoder, self.vae), COMPILE_SETTINGS)

    def _compiled_unet(self) -> Callable:
        # Block by block (COMPILE_SETTINGS: deep transformers layer by layer) on a copy that shares the
        # weights, so the plain path stays plain; less compile time than the whole UNet (bench/RESULTS.md).
        return functools.partial(call_unet, self._context_projections().compiled(COMPILE_SETTINGS))

    def _sampling_unet(self) -> torch.nn.Module:
        """The UNet that sampling runs: with the memory mode that keeps weights in place, a weight-sharing
        copy that reads cross-attention keys and values computed once per prompt (context_projections.py);
        the low-memory modes' hooks are on the UNet itself, which they run."""
        return self.unet if self.policy.memory_mode != "normal" else self._context_projections().unet

    def _context_projections(self):
        if self._projections is None:
            from modules.accel.context_projections import ContextProjections

            self._projections = ContextProjections(self.unet)
        return self._projections

    def _vae_decode(self, z: torch.Tensor) -> torch.Tensor:
        return call_vae_decoder(self.vae, z)

    def _unet_forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                      pooled: torch.Tensor | None, time_ids: torch.Tensor | None) -> torch.Tensor:
        return call_unet(self._sampling_unet(), x, timestep, context, pooled, time_ids)


def call_unet(unet: torch.nn.Module, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
              pooled: torch.Tensor | None, time_ids: torch.Tensor | None) -> torch.Tensor:
    """A diffusers UNet called with SD's conditioning (SDXL: pooled text + size ids), output float32."""
    added = None if pooled is None else {"text_embeds": pooled, "time_ids": time_ids}
    return unet(x, timestep, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False)[0].float()


def call_vae_decoder(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Latents (scaled back, in the VAE's dtype) -> pixels in [-1, 1], float32; what --compile compiles,
    one function so that compile helpers trace the very same program."""
    return vae.decode(z, return_dict=False)[0].float()
