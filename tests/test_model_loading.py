"""Tiny checkpoints of every family, in the original single-file layout, go the whole way:
discovered, hashed, detected, loaded offline, and turned into an image."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from modules.app.cmd_args import parse_args
from modules.models.devices import DevicePolicy
from modules.io.generation_request import Txt2ImgRequest
from modules.models.model_families import detect_family
from modules.service.model_manager import ModelManager
from modules.io.paths import Paths
from modules.pipeline.processing import txt2img
from modules.models.safe_load import read_tensor_shapes
from tiny_models import save_checkpoint, tiny_ldm_yaml, tiny_original_state_dict

FAMILIES = {"sd1": "sd1", "sd1_inpaint": "sd1_inpaint", "sd2_v": "sd2", "sdxl": "sdxl"}


def _install(tmp_path, family, fmt, with_yaml=True):
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tiny-{family}.{fmt}"
    save_checkpoint(tiny_original_state_dict(family), path, fmt=fmt)
    if with_yaml:
        (folder / f"tiny-{family}.yaml").write_text(tiny_ldm_yaml(family))
    return path


def _manager(tmp_path):
    # Only the tiny checkpoints these tests write: not the shipped model too.
    paths = Paths.from_args(parse_args(["--data-dir", str(tmp_path), "--no-shipped-models"], environ={}))
    return ModelManager(paths, DevicePolicy.cpu())


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_checkpoint_makes_an_image(tmp_path, family, fmt):
    path = _install(tmp_path, family, fmt)
    manager = _manager(tmp_path)

    (info,) = manager.checkpoints
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.title == f"tiny-{family}.{fmt} [{info.sha256[:10]}]"
    assert str(detect_family(read_tensor_shapes(path)).value if hasattr(detect_family(read_tensor_shapes(path)), "value")
               else detect_family(read_tensor_shapes(path))) == FAMILIES[family]

    model = manager.get()
    assert model.family == FAMILIES[family]
    assert model.prediction == ("v_prediction" if family == "sd2_v" else "epsilon")

    request = Txt2ImgRequest(prompt="a red circle", negative_prompt="blurry", steps=3, cfg_scale=5,
                             width=64, height=64, seed=1234, batch_size=2)
    result = txt2img(model, request, tmp_path / "outputs")

    assert [im.size for im in result.images] == [(64, 64), (64, 64)]
    assert result.seeds == [1234, 1235]
    saved = Image.open(result.paths[0])
    assert saved.size == (64, 64)
    params = saved.info["parameters"]
    assert params.startswith("a red circle\nNegative prompt: blurry\nSteps: 3, Sampler: Euler")
    assert f"Seed: 1234, Size: 64x64, Model hash: {info.sha256[:10]}, Model: tiny-{family}" in params
    assert result.paths[0].parent.parent.name == "txt2img-images"
    assert [p.name for p in result.paths] == ["00000-1234.png", "00001-1235.png"]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def _pixels(model, threads: int | None = None, **fields) -> list[np.ndarray]:
    request = Txt2ImgRequest(prompt="a blue square", steps=4, width=64, height=64, save_images=False, **fields)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        return [np.asarray(image) for image in txt2img(model, request, None).images]
    finally:
        torch.set_num_threads(previous)


def test_same_seed_same_pixels_and_a_batch_reproduces_the_single_image(tmp_path):
    """The guarantee: the same seed, settings and batch size on one machine give the same pixels, bit for
    bit. In another batch size (or with another thread count) the same seed gives the same image up
    to rounding, at most one grey level apart: PyTorch's CPU kernels are chosen by shape and thread
    count (a small 3x3 convolution of one image runs without oneDNN, of two images with it; a one-row
    linear layer runs as a matrix-vector product; group norm splits its sums by thread count), so
    sums are added in another order, and the last bits differ."""
    _install(tmp_path, "sd1", "safetensors")
    model = _manager(tmp_path).get()

    (first,) = _pixels(model, seed=77)
    (again,) = _pixels(model, seed=77)
    batch = _pixels(model, seed=76, batch_size=2)
    (one_thread,) = _pixels(model, threads=1, seed=77)
    (other,) = _pixels(model, seed=78)

    assert np.array_equal(first, again)
    assert all(np.array_equal(a, b) for a, b in zip(batch, _pixels(model, seed=76, batch_size=2)))
    for same_image in (batch[1], one_thread):
        assert np.abs(first.astype(int) - same_image.astype(int)).max() <= 1
        assert _psnr(first, same_image) >= 60
    assert _psnr(first, other) < 30


def test_family_is_detected_without_sidecar(tmp_path):
    # Tiny sizes need the sidecar to build modules, but the family comes from the keys alone.
    for family, expected in FAMILIES.items():
        path = _install(tmp_path, family, "safetensors", with_yaml=False)
        detected = detect_family(read_tensor_shapes(path))
        assert getattr(detected, "value", detected) == expected


def test_manager_switches_and_unloads(tmp_path):
    _install(tmp_path, "sd1", "safetensors")
    _install(tmp_path, "sdxl", "ckpt")
    manager = _manager(tmp_path)
    assert [c.name for c in manager.checkpoints] == ["tiny-sd1.safetensors", "tiny-sdxl.ckpt"]

    first = manager.get()
    assert first.family == "sd1" and manager.loaded is first
    second = manager.get("tiny-sdxl")
    assert second.family == "sdxl" and manager.loaded is second
    assert manager.get() is second  # no query: keep what is loaded
    manager.unload()
    assert manager.loaded is None


def test_a_switch_frees_the_previous_model_at_once(tmp_path):
    # With CUDA graphs each part's graph runner calls back into the model's runner, a reference cycle
    # that only a garbage collection would break; a switch must not leave the old model's memory to chance.
    import gc
    import weakref

    from modules.accel.runner import UNET

    _install(tmp_path, "sd1", "safetensors")
    _install(tmp_path, "sdxl", "ckpt")
    manager = _manager(tmp_path)
    first = manager.get("tiny-sd1")
    runner = manager.runner_for(first)
    assert runner.model is first and manager.resources(first).runner is runner
    runner._part(UNET, runner._unet_forward, runner._compiled_unet)  # what the GPU path builds at its first step
    gone, runner_gone = weakref.ref(first), weakref.ref(runner)
    del first, runner
    gc.disable()
    try:
        second = manager.get("tiny-sdxl")
        assert gone() is None and runner_gone() is None
        assert manager.runner_for(second).model is second and manager.runner_for(None) is None
    finally:
        gc.enable()


def test_preferred_checkpoint_flag_wins(tmp_path):
    _install(tmp_path, "sd1", "safetensors")
    other = _install(tmp_path, "sd2_v", "safetensors")
    paths = Paths.from_args(parse_args(["--data-dir", str(tmp_path), "--ckpt", str(other)], environ={}))
    manager = ModelManager(paths, DevicePolicy.cpu(), preferred_checkpoint=str(other))
    assert manager.get().family == "sd2"


@pytest.mark.parametrize("family, yaml_channels", [("sd1", 320), ("sdxl", 320)])
def test_without_sidecar_the_family_standard_yaml_is_used(tmp_path, family, yaml_channels):
    # A real checkpoint has no sidecar: the loader reads the family's yaml from configs/. The tiny
    # model's channels differ from it, so loading fails, naming the yaml's size and the file's.
    from modules.models.sd_loader import CheckpointLoadError, inspect_checkpoint

    path = save_checkpoint(tiny_original_state_dict(family), tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointLoadError, match=f"{yaml_channels} base channels"):
        inspect_checkpoint(path)
