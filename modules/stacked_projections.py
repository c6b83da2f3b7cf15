"""Self-attention's query, key and value projections as one matrix product.

A self-attention layer projects the same hidden states three times (to_q, to_k, to_v). One product
with the three weights stacked is faster on a GPU: fewer and wider kernels (an SDXL UNet step on an
H200, compiled: 32.2 -> 31.5 ms; SD1.5: 6.42 -> 6.23 ms; bench/RESULTS.md). diffusers' own
`fuse_projections` copies the weights into a new layer, which adds their size to memory (74 MB for
SD1.5, 590 MB for SDXL). Here the stacked tensor is the weights' storage instead: the three parameters
become row blocks (views) of it, so there is no copy, and everything that uses the parameters, the
plain path, LoRA's in-place patches, state dicts, sees the same numbers.

A parameter whose tensor is replaced rather than changed in place (moved or cast by Module.to) is no
longer a view; `StackedProjections.keep_stacked` finds such layers and stacks them again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

STACKED = "stacked_qkv_weight"
_STANDARD = AttnProcessor2_0()


def runs_plain_attention(module: torch.nn.Module) -> bool:
    """An attention layer run by diffusers' standard processor, with none of the options it would
    apply around the projections and the attention itself."""
    return (isinstance(module, Attention) and type(module.processor) is AttnProcessor2_0
            and module.norm_cross is None and module.spatial_norm is None and module.group_norm is None
            and module.norm_q is None and module.norm_k is None and not module.residual_connection
            and module.rescale_output_factor == 1.0)


def stackable(module: torch.nn.Module) -> bool:
    """Self-attention whose three projections are bias-free and of one shape."""
    if not runs_plain_attention(module) or module.is_cross_attention:
        return False
    projections = (module.to_q, module.to_k, module.to_v)
    return (all(isinstance(p, torch.nn.Linear) and p.bias is None for p in projections)
            and len({(tuple(p.weight.shape), p.weight.dtype, p.weight.device) for p in projections}) == 1)


class StackedSelfAttention:
    """diffusers' AttnProcessor2_0 for self-attention, with the three projections as one product of the
    stacked weights (else as usual)."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        stacked = getattr(attn, STACKED, None)
        if stacked is None or encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            return _STANDARD(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        batch, length, _ = hidden_states.shape
        head_dim = stacked.shape[0] // 3 // attn.heads
        query, key, value = F.linear(hidden_states, stacked).view(batch, length, 3, attn.heads, head_dim).permute(
            2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, length, attn.heads * head_dim).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


class StackedProjections:
    """The stackable self-attention layers of `unet` (modules whose parameters it may share with
    another UNet: that UNet's parameters become views too, its processors stay as they are), their
    weights stacked and run by StackedSelfAttention."""

    def __init__(self, unet: torch.nn.Module):
        self.layers = [m for m in unet.modules() if stackable(m)]
        for layer in self.layers:
            _stack(layer)
            layer.set_processor(StackedSelfAttention())

    def keep_stacked(self) -> None:
        """Stack again every layer whose parameters are no longer views of its stacked tensor. Into the
        same tensor when the shape, dtype and device still match: graphs replay it at a fixed address,
        and weight-sharing copies of the UNet hold it too."""
        for layer in self.layers:
            if not _is_stacked(layer):
                _stack(layer)


def _weights(layer: Attention) -> tuple[torch.nn.Parameter, ...]:
    return layer.to_q.weight, layer.to_k.weight, layer.to_v.weight


def _is_stacked(layer: Attention) -> bool:
    stacked = getattr(layer, STACKED, None)
    if stacked is None:
        return False
    step = stacked[0].numel() * stacked.element_size() * stacked.shape[0] // 3
    return all(w.data_ptr() == stacked.data_ptr() + i * step and w.dtype == stacked.dtype
               for i, w in enumerate(_weights(layer)))


@torch.no_grad()
def _stack(layer: Attention) -> None:
    weights = _weights(layer)
    stacked = getattr(layer, STACKED, None)
    rows = weights[0].shape[0]
    wanted = (3 * rows, *weights[0].shape[1:])
    if stacked is None or stacked.shape != wanted or stacked.dtype != weights[0].dtype \
            or stacked.device != weights[0].device:
        stacked = torch.empty(wanted, dtype=weights[0].dtype, device=weights[0].device)
    for i, weight in enumerate(weights):  # the weights are copied before any of them is re-pointed
        stacked[i * rows:(i + 1) * rows].copy_(weight)
    for i, weight in enumerate(weights):
        weight.data = stacked[i * rows:(i + 1) * rows]
    layer.register_buffer(STACKED, stacked, persistent=False)
