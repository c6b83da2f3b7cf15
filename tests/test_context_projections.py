"""Cross-attention keys and values computed once per prompt (modules/accel/context_projections.py): the
UNet's output is exactly what diffusers' own attention gives, whatever the context does between calls."""

import pytest
import torch
from torch import Tensor

from modules.accel.context_projections import KEY, ProjectedCrossAttention
from modules.accel.runner import ModelRunner
from modules.models.sd_model import call_unet
from tiny_models import load_tiny_model, unet_inputs


def _inputs(model, seed: int, batch: int = 2):
    return unet_inputs(model.unet, seed, batch)


def plain_and_sampled(runner: ModelRunner, tensors: dict[str, Tensor | None]) -> tuple[Tensor, Tensor]:
    """The output of the model's own UNet (diffusers' processors) and of the UNet sampling runs
    (ModelRunner.unet_fn), for the same unet_inputs."""
    with torch.no_grad():
        plain = call_unet(runner.model.unet, **tensors)
        sampled = runner.unet_fn(tensors["x"], tensors["timestep"], context=tensors["context"],
                                 pooled=tensors["pooled"], time_ids=tensors["time_ids"])
    return plain, sampled


def _projected_layers(runner: ModelRunner) -> list:
    return [m for m in runner.sampling_unet.modules() if isinstance(getattr(m, "processor", None),
                                                                    ProjectedCrossAttention)]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_projected_keys_and_values_give_the_plain_unets_output_exactly(tmp_path, family):
    model = load_tiny_model(tmp_path, family)
    runner = ModelRunner(model)
    tensors = _inputs(model, 0)
    assert torch.equal(*plain_and_sampled(runner, tensors))
    # the model's own UNet keeps diffusers' processors; sampling runs a copy sharing its weights
    assert not any(isinstance(getattr(m, "processor", None), ProjectedCrossAttention) for m in model.unet.modules())
    layers = _projected_layers(runner)
    assert layers and all(getattr(m, KEY) is not None for m in layers)
    assert all(a is b for a, b in zip(runner.sampling_unet.parameters(), model.unet.parameters()))


def test_keys_and_values_are_computed_once_per_context_and_follow_every_change(tmp_path):
    model = load_tiny_model(tmp_path, "sd1")
    runner = ModelRunner(model)
    first, second = _inputs(model, 1), _inputs(model, 2)
    plain_and_sampled(runner, first)
    layer = _projected_layers(runner)[0]
    with torch.no_grad():  # weights whose version counters are large, as after loading and LoRA patches
        for _ in range(300):
            layer.to_k.weight.add_(0.0)
    plain_and_sampled(runner, first)
    projections = []
    layer.to_k.register_forward_hook(lambda *_: projections.append(1))

    for _ in range(3):  # the same context at every step: no projection at all
        assert torch.equal(*plain_and_sampled(runner, first))
    assert projections == []
    assert torch.equal(*plain_and_sampled(runner, second))  # another prompt
    assert torch.equal(*plain_and_sampled(runner, first))  # and back
    assert len(projections) == 2

    first["context"].mul_(0.5)  # the same tensor changed in place
    assert torch.equal(*plain_and_sampled(runner, first))
    with torch.no_grad():  # a weight patched in place, as LoRA does
        model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight.mul_(1.5)
    assert torch.equal(*plain_and_sampled(runner, first))
    assert len(projections) == 4

    batch_of_four = _inputs(model, 3, batch=4)  # another shape, then the first again
    assert torch.equal(*plain_and_sampled(runner, batch_of_four))
    assert torch.equal(*plain_and_sampled(runner, first))


def test_a_prompt_of_another_length_is_projected_on_its_own(tmp_path):
    """Cond and uncond of different token lengths run as two calls (guidance.py): each call's keys and
    values are its own context's."""
    model = load_tiny_model(tmp_path, "sd1")
    runner = ModelRunner(model)
    short, long = _inputs(model, 4, batch=1), _inputs(model, 5, batch=1)
    long["context"] = torch.cat([long["context"], long["context"]], dim=1)  # 154 tokens
    for tensors in (short, long, short):
        assert torch.equal(*plain_and_sampled(runner, tensors))


def test_the_low_memory_modes_run_the_unet_itself(tmp_path):
    import dataclasses

    from modules.models.devices import DevicePolicy

    model = load_tiny_model(tmp_path, "sd1", policy=dataclasses.replace(DevicePolicy.cpu(), memory_mode="lowvram"))
    runner = ModelRunner(model)
    assert runner.sampling_unet is model.unet
    tensors = _inputs(model, 6)
    assert torch.equal(*plain_and_sampled(runner, tensors))


def test_dropping_compiled_state_forgets_the_copies_that_read_the_projections(tmp_path):
    """Each --compile warm-up adopts a new compiled copy; switching the fast path off and on again
    must not keep the old copies' layers (and their compiled code) reachable."""
    from modules.accel.compilation import shared_weight_copy

    model = load_tiny_model(tmp_path, "sd1")
    runner = ModelRunner(model)
    tensors = _inputs(model, 7)
    plain_and_sampled(runner, tensors)
    projections = runner._context_projections()
    for _ in range(3):
        projections.adopt(shared_weight_copy(runner.sampling_unet))
        assert all(len(group) == 2 for group in projections.groups)
        runner.forget()
        assert all(len(group) == 1 for group in projections.groups)
    assert torch.equal(*plain_and_sampled(runner, tensors))
