"""Self-attention projections as one product of stacked weights (modules/stacked_projections.py): no
copy of the weights, the plain UNet's output exactly, and every later change to the weights followed."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from modules.stacked_projections import STACKED, StackedSelfAttention
from tiny_models import load_tiny_model, plain_and_sampled, unet_inputs



def _stacked_layers(model):
    return [m for m in model._sampling_unet().modules() if isinstance(getattr(m, "processor", None),
                                                                       StackedSelfAttention)]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_self_attention_runs_on_stacked_weights_that_are_the_parameters_themselves(tmp_path, family):
    model = load_tiny_model(tmp_path, family)
    before = {name: p.detach().clone() for name, p in model.unet.state_dict().items()}
    tensors = unet_inputs(model.unet, 0)
    assert torch.equal(*plain_and_sampled(model, tensors))

    layers = _stacked_layers(model)
    self_attention = [m for m in model.unet.modules() if getattr(m, "is_cross_attention", None) is False]
    assert len(layers) == len(self_attention) > 0
    assert all(type(m.processor) is AttnProcessor2_0 for m in self_attention)  # the UNet itself is unchanged
    for layer in layers:
        stacked = getattr(layer, STACKED)
        weights = (layer.to_q.weight, layer.to_k.weight, layer.to_v.weight)
        assert torch.equal(stacked, torch.cat(weights))
        # views of the stacked tensor: the weights take no memory of their own
        assert all(w.untyped_storage().data_ptr() == stacked.untyped_storage().data_ptr() for w in weights)
    after = model.unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_weights_patched_in_place_or_replaced_are_followed(tmp_path):
    model = load_tiny_model(tmp_path, "sd1")
    tensors = unet_inputs(model.unet, 1)
    plain_and_sampled(model, tensors)
    attention = model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    with torch.no_grad():  # as LoRA patches a weight
        attention.to_v.weight.mul_(1.5)
    assert torch.equal(*plain_and_sampled(model, tensors))

    layer = _stacked_layers(model)[0]
    stacked = getattr(layer, STACKED)
    with torch.no_grad():  # a tensor replaced, not changed in place, as Module.to does when it moves one
        attention.to_k.weight.data = attention.to_k.weight.detach() * -2.0
    assert torch.equal(*plain_and_sampled(model, tensors))
    assert getattr(layer, STACKED) is stacked  # stacked again into the same tensor, where graphs read it
    assert attention.to_k.weight.data_ptr() == stacked[stacked.shape[0] // 3:].data_ptr()
