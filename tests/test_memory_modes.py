"""--medvram and --lowvram change where weights wait between uses, never the image.

On this CPU-only machine the "GPU" is the CPU too, so what is checked is that the hooks which move
the parts are wired to every way the parts are called (prompt encoding, sampling, VAE decode and
encode, LoRA) and leave the result bit-identical; the memory figures come from bench/gpu_speed.py.
"""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from modules.models.devices import DevicePolicy
from modules.io.generation_request import Img2ImgRequest, Txt2ImgRequest
from modules.pipeline.processing import img2img, txt2img
from tiny_models import load_tiny_model


def _images(model, request):
    return [np.asarray(im) for im in txt2img(model, request, None).images]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("mode", ["medvram", "lowvram"])
def test_same_images_in_every_memory_mode(tmp_path, family, mode):
    normal = load_tiny_model(tmp_path / "normal", family)
    policy = dataclasses.replace(DevicePolicy.cpu(), memory_mode=mode)
    low = load_tiny_model(tmp_path / mode, family, policy=policy)
    request = Txt2ImgRequest(prompt="a red circle", steps=3, width=64, height=64, seed=5, batch_size=2,
                             save_images=False)
    for expected, got in zip(_images(normal, request), _images(low, request)):
        assert np.array_equal(expected, got)

    init = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3)))
    edit = Img2ImgRequest(prompt="a blue square", steps=3, width=64, height=64, seed=5, init_images=[init],
                          denoising_strength=0.6, save_images=False)
    assert np.array_equal(np.asarray(img2img(normal, edit, None).images[0]),
                          np.asarray(img2img(low, edit, None).images[0]))


def test_medvram_keeps_one_part_resident(tmp_path):
    policy = dataclasses.replace(DevicePolicy.cpu(), memory_mode="medvram")
    model = load_tiny_model(tmp_path, "sd1", policy=policy)
    hooks = [len(m._forward_pre_hooks) for m in (model.unet, model.vae.decoder, model.text_encoders[0].model)]
    assert all(count >= 1 for count in hooks)
    model.offload.use(model.unet)
    model.text_encoders[0].hidden_states(torch.zeros(1, 77, dtype=torch.long), depth=1)
    assert model.offload.resident is model.text_encoders[0].model
    txt2img(model, Txt2ImgRequest(prompt="x", steps=2, width=64, height=64, save_images=False), None)
    assert model.offload.resident is model.vae  # the VAE ran last: it is the part left on the device


def test_unknown_memory_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown memory mode 'tinyvram'"):
        load_tiny_model(tmp_path, "sd1", policy=dataclasses.replace(DevicePolicy.cpu(), memory_mode="tinyvram"))


def test_full_previews_fall_back_to_cheap_ones_in_low_memory_modes(tmp_path):
    """A full-VAE preview runs between two sampling steps: in --medvram/--lowvram each one would move the
    UNet off the device and back, so the worker makes the cheap preview there."""
    from modules.pipeline.live_preview import PreviewMaker, preview_method

    latents = torch.zeros(1, 4, 8, 8)
    for mode, expect in (("normal", "Full"), ("medvram", "Approx cheap"), ("lowvram", "Approx cheap")):
        model = load_tiny_model(tmp_path / mode, policy=dataclasses.replace(DevicePolicy.cpu(), memory_mode=mode))
        assert preview_method("Full", model) == expect, mode
        assert preview_method("Approx cheap", model) == "Approx cheap"  # cheap previews unless asked for
        assert [image.size for image in PreviewMaker(model, "Full").start(latents).images()] == \
            [(64, 64) if expect == "Full" else (8, 8)]
