"""Cross-attention keys and values computed once per prompt instead of at every sampling step.

In each cross-attention layer the keys and values are projections of the prompt's embeddings, which
stay the same from one step to the next: 32 matrix products per SD1.5 step and 140 per SDXL step
recompute the same result (their cost per step is in bench/RESULTS.md). Here they
are computed when the context changes and kept as buffers of the attention modules, which
`ProjectedCrossAttention` reads in place of the two projections. The computation is the same call on
the same tensor, so the keys and values are bit-identical to the ones computed at every step.

Buffers are kept per context shape for as long as graphs may be replaying: a captured graph reads
them at fixed addresses, so they are refilled in place, never replaced.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from modules.accel.compilation import CompileSettings, compiled_blocks, shared_weight_copy

KEY, VALUE = "context_key", "context_value"
_STANDARD = AttnProcessor2_0()


def projectable(module: torch.nn.Module) -> bool:
    """Cross-attention run by diffusers' standard processor, with none of the options it would skip."""
    return (isinstance(module, Attention) and module.is_cross_attention and type(module.processor) is AttnProcessor2_0
            and module.norm_cross is None and module.spatial_norm is None and module.group_norm is None
            and module.norm_q is None and module.norm_k is None and not module.residual_connection
            and module.rescale_output_factor == 1.0)


class ProjectedCrossAttention:
    """diffusers' AttnProcessor2_0 for cross-attention, with the keys and values taken from the module's
    buffers when they are there for a context of this batch and length (else computed as usual)."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        key, value = getattr(attn, KEY, None), getattr(attn, VALUE, None)
        if (key is None or encoder_hidden_states is None or attention_mask is not None or hidden_states.ndim != 3
                or key.shape[:2] != encoder_hidden_states.shape[:2]):
            return _STANDARD(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        batch = hidden_states.shape[0]
        head_dim = key.shape[-1] // attn.heads
        query = attn.to_q(hidden_states).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


class ContextProjections:
    """`unet`: a weight-sharing copy of a UNet whose cross-attention reads projected keys and values
    (the UNet itself keeps diffusers' processors); the keys and values of the context last given, set
    on its layers and on those of its compiled copies (`compiled`)."""

    def __init__(self, unet: torch.nn.Module):
        self.unet = shared_weight_copy(unet)
        layers = [m for m in self.unet.modules() if projectable(m)]
        for layer in layers:
            layer.set_processor(ProjectedCrossAttention())
        self.groups: list[list[Attention]] = [[layer] for layer in layers]
        self._kept: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._projected: tuple | None = None  # (context object, its version, weights' version)
        # A compiled copy is made on a background thread while sampling may be setting buffers.
        self._lock = threading.RLock()

    def compiled(self, settings: CompileSettings, share: tuple[int, int] | None = None) -> torch.nn.Module:
        """compilation.compiled_blocks of `unet` (what --compile runs, and each compile helper its
        `share` of), its layers given the projections from now on."""
        with self._lock:
            copy = compiled_blocks(self.unet, settings, share)
            self.adopt(copy)
        return copy

    def adopt(self, copy: torch.nn.Module) -> None:
        """Also set the buffers of `copy`, a weight-sharing copy of `unet`."""
        layers = [m for m in copy.modules() if isinstance(getattr(m, "processor", None), ProjectedCrossAttention)]
        if len(layers) != len(self.groups):
            raise ValueError(f"the copy has {len(layers)} projected layers, the UNet {len(self.groups)}")
        with self._lock:
            for group, layer in zip(self.groups, layers):
                group.append(layer)
            if self._projected is not None:
                for group in self.groups:
                    self._assign(group[-1:], getattr(group[0], KEY), getattr(group[0], VALUE))

    @torch.no_grad()
    def update(self, source: torch.Tensor, context: torch.Tensor, keep: bool) -> None:
        """Make every layer's keys and values those of `context` (the UNet's input: `source` converted
        to its dtype) unless they already are. `keep`: refill this shape's buffers in place (graphs
        replay them) instead of replacing them."""
        with self._lock:
            self._update(source, context, keep)

    def _update(self, source: torch.Tensor, context: torch.Tensor, keep: bool) -> None:
        state = (source, source._version, self._weights_version())
        if self._projected is not None and state[0] is self._projected[0] and state[1:] == self._projected[1:]:
            return
        shape = (tuple(context.shape), context.dtype, context.device)
        kept = self._kept.get(shape) if keep else None
        projections = []
        for index, group in enumerate(self.groups):
            key, value = group[0].to_k(context), group[0].to_v(context)
            if kept is not None:
                key, value = kept[index][0].copy_(key), kept[index][1].copy_(value)
            projections.append((key, value))
            self._assign(group, key, value)
        if keep:
            self._kept[shape] = projections
        self._projected = state

    def clear(self) -> None:
        """Forget every kept projection and adopted copy (the graphs and compiled copies that read them
        are being dropped too)."""
        with self._lock:
            self._kept.clear()
            self._projected = None
            self.groups = [group[:1] for group in self.groups]
            for group in self.groups:
                self._assign(group, None, None)

    def _weights_version(self) -> int:
        # In-place weight changes (LoRA patches) bump these counters.
        return sum(p._version for group in self.groups for p in (group[0].to_k.weight, group[0].to_v.weight))

    @staticmethod
    def _assign(layers: list[Attention], key: torch.Tensor | None, value: torch.Tensor | None) -> None:
        for layer in layers:
            if getattr(layer, KEY, None) is not key:
                layer.register_buffer(KEY, key, persistent=False)
                layer.register_buffer(VALUE, value, persistent=False)

