"""How --compile compiles the UNet and the VAE decoder: Inductor, for fixed shapes, region by region.

`compiled_blocks` compiles each ResNet / transformer / resampling block of a copy of the module that
shares its weights (the blocks repeat: fewer and smaller graphs than compiling the whole forward at
once); with regions="layers", a deep transformer (more than WHOLE_TRANSFORMER_LAYERS layers) compiles
each layer on its own, plus its input and output projections (SDXL's ten-layer transformers are then
one small graph reused ten times, not one graph ten layers long). `compiled_for_inference` compiles a
whole function (the VAE decoder's). Graphs are cached on disk by Inductor, so a restart compiles from
the cache. Nothing here changes what the weights compute beyond fp16 rounding.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

# A block class's forward is one code object; each distinct input shape (SD1.5's UNet has about 20 for
# ResnetBlock2D) is one more entry under it, and past Dynamo's default limit of 8 it would run eagerly.
RECOMPILE_LIMIT = 64
# 1x1 convolutions as matrix multiplies (fusable with their neighbours), per-kernel launch parameters
# refined by timing, and no epilogue fusion into GEMM templates: the settings of diffusers' guide to
# compiling its UNets. Not what --compile uses: compiling the SD1.5 UNet with them took well beyond the
# warm-up budget (bench/RESULTS.md); the benchmarks measure them.
TUNED_INDUCTOR = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True,
                  "coordinate_descent_check_all_directions": True, "epilogue_fusion": False}
COMPILED_BLOCKS = frozenset({"ResnetBlock2D", "Transformer2DModel", "Downsample2D", "Upsample2D", "Attention"})
# Deeper transformers are compiled layer by layer with regions="layers" (diffusers' own list of the UNet's
# repeated blocks, `_repeated_blocks`, is the transformer layer). Each layer boundary costs a pass over
# the activations that a whole-transformer graph fuses away, so shallow ones stay whole.
WHOLE_TRANSFORMER_LAYERS = 2


@dataclass(frozen=True)
class CompileSettings:
    """What Inductor is asked for; the application's choice is COMPILE_SETTINGS, the benchmarks try others."""

    regions: str = "blocks"  # "blocks" | "layers" (compiled_blocks)
    quick: bool = False  # one launch configuration per pointwise kernel, not several compiled and timed
    autotune: bool = False  # Inductor's max-autotune (Triton GEMM/conv templates timed per shape; slow to compile)
    tuned: bool = False  # Inductor settings diffusers recommends for its UNets (TUNED_INDUCTOR)
    mm1x1: bool = False  # 1x1 convolutions as matrix multiplies (Inductor's conv_1x1_as_mm)

    def __post_init__(self):
        if self.regions not in ("blocks", "layers"):
            raise ValueError(f"unknown compile regions {self.regions!r}: 'blocks' or 'layers'")


# What --compile uses for the UNet and the VAE decoder. One launch configuration per pointwise kernel
# ("quick"): the compile helpers (compile_helpers.py) share one GPU, and timing several configurations
# of every kernel there is what made them slow (bench/RESULTS.md). Deep transformers (SDXL's ten-layer
# ones) compiled layer by layer, which shortens SDXL's warm-up (bench/RESULTS.md, figures behind choices).
COMPILE_SETTINGS = CompileSettings(regions="layers", quick=True)


def _outermost_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of the COMPILED_BLOCKS classes that no other such module contains (nested compiled
    regions would break each other's graphs)."""
    found: list[tuple[str, torch.nn.Module]] = []
    for name, block in module.named_modules():
        if type(block).__name__ in COMPILED_BLOCKS and not any(name.startswith(outer + ".") for outer, _ in found):
            found.append((name, block))
    return [block for _, block in found]


class _TransformerEnds:
    """The parts of a transformer around its layers (input norm and projection, output projection and
    residual), compiled as two regions of their own when its layers are compiled one by one. They are
    diffusers methods, replaced on this copy's instance only."""

    METHODS = ("_operate_on_continuous_inputs", "_get_output_for_continuous_inputs")

    def __init__(self, transformer: torch.nn.Module):
        self.transformer = transformer
        self.parts = torch.nn.ModuleList([transformer.norm, transformer.proj_in, transformer.proj_out])

    @classmethod
    def applies_to(cls, transformer: torch.nn.Module) -> bool:
        return getattr(transformer, "is_input_continuous", False) and all(hasattr(transformer, m) for m in cls.METHODS)

    def named_parameters(self):
        return self.parts.named_parameters()

    def modules(self):
        return self.parts.modules()

    def compile(self, **options) -> None:
        for method in self.METHODS:
            setattr(self.transformer, method, torch.compile(getattr(self.transformer, method), **options))


def _regions(module: torch.nn.Module, granularity: str) -> list:
    """What `compiled_blocks` compiles: the outermost COMPILED_BLOCKS; with "layers", a deep transformer's
    layers and ends instead of the transformer."""
    regions: list = []
    for block in _outermost_blocks(module):
        layers = getattr(block, "transformer_blocks", ())
        if granularity == "layers" and len(layers) > WHOLE_TRANSFORMER_LAYERS and _TransformerEnds.applies_to(block):
            regions.append(_TransformerEnds(block))
            regions.extend(layers)
        else:
            regions.append(block)
    return regions


def _signature(block: torch.nn.Module) -> tuple:
    """Blocks with equal signatures almost always trace to the same graph (same class, same weight
    shapes); only their input size can still differ."""
    return type(block).__name__, tuple((name, tuple(p.shape)) for name, p in block.named_parameters())


def _share_of(blocks: list[torch.nn.Module], index: int, count: int) -> list[torch.nn.Module]:
    """The `index`-th of `count` shares of `blocks` with about equal compile work. Blocks with one
    signature stay together (the second compiles from the first's graph, so splitting them would compile
    it twice), and the groups are dealt largest first to the least loaded share. A graph's compile time
    grows with its size, so a group weighs the number of modules in one of its blocks; the order is
    fixed by the architecture, so every process computes the same shares."""
    groups: dict[tuple, list[torch.nn.Module]] = {}
    for block in blocks:
        groups.setdefault(_signature(block), []).append(block)
    weight = {key: sum(1 for _ in members[0].modules()) * (1 + 0.1 * (len(members) - 1))
              for key, members in groups.items()}
    loads, chosen = [0.0] * count, set()
    for key in sorted(groups, key=lambda k: -weight[k]):  # sorted() is stable: ties keep the model's order
        lightest = loads.index(min(loads))
        loads[lightest] += weight[key]
        if lightest == index:
            chosen.update(id(b) for b in groups[key])
    return [block for block in blocks if id(block) in chosen]


def _raise_recompile_limits() -> None:
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.accumulated_recompile_limit = max(
        torch._dynamo.config.accumulated_recompile_limit, RECOMPILE_LIMIT * 4)


def _options(settings: CompileSettings) -> dict[str, object]:
    # Never Inductor's own CUDA graphs ("reduce-overhead"): cuda_graphs.py captures the compiled code.
    options: dict[str, object] = {"triton.cudagraphs": False}
    if settings.autotune:
        options.update(max_autotune=True, coordinate_descent_tuning=True)
    if settings.tuned:
        options.update(TUNED_INDUCTOR)
    if settings.mm1x1:
        options["conv_1x1_as_mm"] = True
    if settings.quick:
        # Most of a first compilation is spent building Triton kernels, not tracing (bench/RESULTS.md,
        # figures behind choices); pointwise kernels otherwise build several variants.
        options["triton.autotune_pointwise"] = False
    return options


def compiled_for_inference(fn: Callable[..., torch.Tensor],
                           settings: CompileSettings = CompileSettings()) -> Callable[..., torch.Tensor]:
    """`fn` compiled by Inductor for fixed shapes; the module behind it is untouched, so the plain path
    keeps working while the compiled one is built. Graphs are cached on disk (TORCHINDUCTOR_CACHE_DIR)."""
    _raise_recompile_limits()
    return torch.compile(fn, dynamic=False, options=_options(settings))


def shared_weight_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree whose parameters and buffers are the original tensors (no memory,
    and in-place changes such as LoRA patches show in both)."""
    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, memo)


def compiled_blocks(module: torch.nn.Module, settings: CompileSettings = CompileSettings(),
                    share: tuple[int, int] | None = None) -> torch.nn.Module:
    """A weight-sharing copy of `module` with each repeated block (COMPILED_BLOCKS; with regions="layers"
    the layers of deep transformers) compiled by Inductor; `module` itself stays uncompiled. `share=(i, n)`
    compiles only the i-th of n shares of about equal compile work (a compile helper's part,
    compile_helpers.py)."""
    _raise_recompile_limits()
    twin = shared_weight_copy(module)
    blocks = _regions(twin, settings.regions)
    if share is not None:
        blocks = _share_of(blocks, *share)
    for block in blocks:
        block.compile(dynamic=False, options=_options(settings))
    return twin
