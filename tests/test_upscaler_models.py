"""Model upscalers load through spandrel from AUTOMATIC1111's folders and upscale in tiles."""

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from spandrel.architectures.ESRGAN import ESRGAN

from modules.generation_request import Txt2ImgRequest
from modules.processing import Resources, txt2img
from modules.upscaler_models import TileSettings, UpscalerRegistry, upscale_tensor_tiled
from tiny_models import load_tiny_model


def tiny_esrgan_state_dict(scale=2, seed=0):
    torch.manual_seed(seed)
    return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale).state_dict()


@pytest.fixture
def registry(tmp_path):
    (tmp_path / "ESRGAN").mkdir()
    (tmp_path / "RealESRGAN").mkdir()
    torch.save({"params_ema": tiny_esrgan_state_dict(2)}, tmp_path / "ESRGAN" / "tiny-2x.pth")
    safetensors.torch.save_file(tiny_esrgan_state_dict(4), str(tmp_path / "RealESRGAN" / "RealESRGAN_x4plus.safetensors"))
    (tmp_path / "ESRGAN" / "broken.pth").write_bytes(b"not a model")
    return UpscalerRegistry({"ESRGAN": [tmp_path / "ESRGAN"], "RealESRGAN": [tmp_path / "RealESRGAN"]},
                            tiles=TileSettings(tile=24, overlap=4))


def test_discovery_uses_a1111_names(registry):
    assert registry.names() == ["broken", "R-ESRGAN 4x+", "tiny-2x"]


def test_upscale_to_exact_size_with_repeated_passes(registry):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    assert registry.upscale(image, "tiny-2x", 60, 40).size == (60, 40)
    assert registry.upscale(image, "tiny-2x", 240, 160).size == (240, 160)  # 2x three times, then Lanczos
    assert registry.upscale(image, "R-ESRGAN 4x+", 120, 80).size == (120, 80)


def test_tiled_equals_whole_image_for_a_pointwise_model():
    # A 1x1 "model" makes tiling exact, so any seam or weighting error shows up directly.
    def model(x):
        return torch.nn.functional.interpolate(x * 0.5 + 0.25, scale_factor=2, mode="nearest")

    image = torch.rand(1, 3, 50, 70)
    whole = upscale_tensor_tiled(model, image, 2, TileSettings(tile=0))
    tiled = upscale_tensor_tiled(model, image, 2, TileSettings(tile=16, overlap=4))
    assert torch.allclose(whole, tiled, atol=1e-6)


def test_broken_file_is_named(registry):
    with pytest.raises(Exception, match="broken.pth"):
        registry.upscale(Image.new("RGB", (8, 8)), "broken", 16, 16)


def test_hires_fix_with_a_model_upscaler(registry, tmp_path):
    model = load_tiny_model(tmp_path / "sd", "sd1")
    request = Txt2ImgRequest(prompt="x", steps=2, width=64, height=64, seed=1, save_images=False, enable_hr=True,
                             hr_scale=2, hr_upscaler="tiny-2x", hr_second_pass_steps=2)
    result = txt2img(model, request, None, resources=Resources(upscalers=registry))
    assert result.images[0].size == (128, 128)
    assert "Hires upscaler: tiny-2x" in result.infotexts[0]
