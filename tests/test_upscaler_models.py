"""Model upscalers load through spandrel from AUTOMATIC1111's folders and upscale in tiles."""

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.GFPGAN import GFPGAN
from spandrel.architectures.SwinIR import SwinIR

from modules.io.generation_request import Txt2ImgRequest
from modules.pipeline.processing import Resources, txt2img
from modules.postprocess.upscaler_models import TileSettings, UpscalerRegistry, upscale_tensor_tiled
from tiny_models import load_tiny_model


def tiny_esrgan_state_dict(scale=2, seed=0):
    torch.manual_seed(seed)
    return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale).state_dict()


def esrgan_new_layout(old: dict) -> dict:
    """The same RRDBNet in the key layout of the Real-ESRGAN/BasicSR code (conv_first, body.N.rdbM...),
    which spandrel has to recognise and convert."""
    blocks = 1 + max(int(k.split(".")[3]) for k in old if k.startswith("model.1.sub.") and ".RDB" in k)
    tail = {"model.3": "conv_up1", "model.6": "conv_up2", "model.8": "conv_hr", "model.10": "conv_last"}
    if "model.10.weight" not in old:  # 2x: one upsampling conv
        tail = {"model.3": "conv_up1", "model.5": "conv_hr", "model.7": "conv_last"}
    new = {}
    for key, value in old.items():
        head, param = key.rsplit(".", 1)
        if head == "model.0":
            head = "conv_first"
        elif head == f"model.1.sub.{blocks}":
            head = "conv_body"
        elif head.startswith("model.1.sub."):
            _, _, _, block, rdb, conv, _ = head.split(".")
            head = f"body.{block}.rdb{rdb[3:]}.{conv}"
        else:
            head = tail[head]
        new[f"{head}.{param}"] = value
    return new


def _seeded(build):
    torch.manual_seed(0)
    return build().state_dict()


# One entry per architecture users put in AUTOMATIC1111's upscaler folders: how to build a small
# random-weight file of it, the folder it goes in, and the scale the file must be identified with.
ARCHITECTURES = {
    "esrgan-old-layout": ("ESRGAN", "ESRGAN", 4, lambda: tiny_esrgan_state_dict(4)),
    "esrgan-new-layout": ("ESRGAN", "ESRGAN", 4, lambda: esrgan_new_layout(tiny_esrgan_state_dict(4))),
    "realesrgan-compact": ("RealESRGAN", "Compact", 2,
                           lambda: {"params": _seeded(lambda: Compact(num_feat=8, num_conv=2, upscale=2))}),
    "swinir": ("SwinIR", "SwinIR", 2, lambda: {"params": _seeded(lambda: SwinIR(
        img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
        upsampler="pixelshuffledirect"))}),
}


def _save(state: dict, path):
    if path.suffix == ".safetensors":
        flat = state.get("params", state.get("params_ema", state))
        safetensors.torch.save_file({k: v.contiguous() for k, v in flat.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("entry", sorted(ARCHITECTURES))
def test_each_architecture_is_discovered_identified_and_upscales(tmp_path, entry, suffix):
    folder_kind, architecture, scale, build = ARCHITECTURES[entry]
    folder = tmp_path / folder_kind
    folder.mkdir()
    _save(build(), folder / f"my-{entry}{suffix}")  # the name says nothing; the weights do
    registry = UpscalerRegistry({folder_kind: [folder]}, tiles=TileSettings(tile=24, overlap=4))
    assert registry.unsupported == []
    [file] = registry.files
    assert (file.name, file.architecture, file.scale) == (f"my-{entry}", architecture, scale)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 28, 3), dtype=np.uint8))
    assert registry.upscale(image, file.name, 28 * scale, 20 * scale).size == (28 * scale, 20 * scale)


@pytest.fixture
def registry(tmp_path):
    (tmp_path / "ESRGAN").mkdir()
    (tmp_path / "RealESRGAN").mkdir()
    torch.save({"params_ema": tiny_esrgan_state_dict(2)}, tmp_path / "ESRGAN" / "tiny-2x.pth")
    safetensors.torch.save_file(tiny_esrgan_state_dict(4), str(tmp_path / "RealESRGAN" / "RealESRGAN_x4plus.safetensors"))
    (tmp_path / "ESRGAN" / "broken.pth").write_bytes(b"not a model")
    torch.save({"params_ema": _seeded(lambda: GFPGAN())}, tmp_path / "ESRGAN" / "faces.pth")
    return UpscalerRegistry({"ESRGAN": [tmp_path / "ESRGAN"], "RealESRGAN": [tmp_path / "RealESRGAN"]},
                            tiles=TileSettings(tile=24, overlap=4))


def test_discovery_uses_a1111_names_and_lists_what_it_skips(registry):
    assert registry.names() == ["R-ESRGAN 4x+", "tiny-2x"]
    assert [(f.architecture, f.scale) for f in registry.files] == [("ESRGAN", 4), ("ESRGAN", 2)]
    reasons = {u.path.name: u.reason for u in registry.unsupported}
    assert set(reasons) == {"broken.pth", "faces.pth"}
    assert "broken.pth" in reasons["broken.pth"]
    assert "GFPGAN face restorer" in reasons["faces.pth"] and "models/GFPGAN" in reasons["faces.pth"]


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


def test_unknown_upscaler_is_named(registry):
    with pytest.raises(ValueError, match="broken"):
        registry.upscale(Image.new("RGB", (8, 8)), "broken", 16, 16)


def test_upscale_can_be_interrupted_between_tiles(registry):
    calls = []

    def check_interrupt():
        calls.append(1)
        if len(calls) == 3:
            raise InterruptedError

    with pytest.raises(InterruptedError):
        registry.upscale(Image.new("RGB", (80, 80)), "tiny-2x", 160, 160, check_interrupt)
    assert len(calls) == 3  # it stopped at the third tile of sixteen


def test_hires_fix_with_a_model_upscaler(registry, tmp_path):
    model = load_tiny_model(tmp_path / "sd", "sd1")
    request = Txt2ImgRequest(prompt="x", steps=2, width=64, height=64, seed=1, save_images=False, enable_hr=True,
                             hr_scale=2, hr_upscaler="tiny-2x", hr_second_pass_steps=2)
    result = txt2img(model, request, None, resources=Resources(upscalers=registry))
    assert result.images[0].size == (128, 128)
    assert "Hires upscaler: tiny-2x" in result.infotexts[0]
