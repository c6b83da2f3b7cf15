"""Extras: upscaling a finished image by a factor or to a size, with one or two upscalers."""

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from spandrel.architectures.ESRGAN import ESRGAN

from modules.io.extras_request import ExtrasFieldError, ExtrasRequest
from modules.postprocess.extras import run_extras
from modules.postprocess.upscaler_models import TileSettings, UpscalerRegistry


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ESRGAN")
    torch.manual_seed(0)
    torch.save(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2).state_dict(), folder / "tiny-2x.pth")
    return UpscalerRegistry({"ESRGAN": [folder]}, tiles=TileSettings(tile=32, overlap=4))


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))


def test_scale_by_a_factor_with_a_model(models, picture):
    result = run_extras(picture, ExtrasRequest(upscaler_1="tiny-2x", upscaling_resize=3), models, None)
    assert result.image.size == (120, 90)
    assert result.info == "Postprocess upscale by: 3, Postprocess upscaler: tiny-2x"


def test_resize_to_a_size_crops_to_it_exactly(models, picture):
    settings = ExtrasRequest(resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100, upscaler_1="Lanczos")
    result = run_extras(picture, settings, models, None)
    assert result.image.size == (100, 100)  # covered 133x100, then the centre cropped
    assert "Postprocess upscale to: 100x100" in result.info and "Postprocess crop to: 100x100" in result.info
    uncropped = run_extras(picture, ExtrasRequest(resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100,
                                                   upscaler_1="Lanczos", upscaling_crop=False), models, None)
    assert uncropped.image.size == (133, 100)


def test_second_upscaler_is_blended_by_its_visibility(models, picture):
    settings = dict(upscaler_1="Nearest", upscaler_2="Lanczos", upscaling_resize=2)
    first = np.asarray(run_extras(picture, ExtrasRequest(**settings), models, None).image, np.float32)
    second = np.asarray(run_extras(picture, ExtrasRequest(upscaler_1="Lanczos", upscaling_resize=2), models,
                                   None).image, np.float32)
    blended = run_extras(picture, ExtrasRequest(**settings, extras_upscaler_2_visibility=0.25), models, None)
    assert "Postprocess upscaler 2: Lanczos" in blended.info
    assert np.abs(np.asarray(blended.image, np.float32) - (0.75 * first + 0.25 * second)).max() <= 1


def test_no_upscaler_leaves_the_size_alone(models, picture):
    result = run_extras(picture, ExtrasRequest(upscaling_resize=4), models, None)
    assert result.image.size == picture.size and result.info == ""


def test_unknown_upscaler_is_named_before_any_work(models, picture):
    with pytest.raises(ExtrasFieldError, match="R-ESRGAN 8x") as refused:
        run_extras(picture, ExtrasRequest(upscaler_1="Lanczos", upscaler_2="R-ESRGAN 8x",
                                           extras_upscaler_2_visibility=0.5), models, None)
    assert refused.value.field == "upscaler_2"


def test_too_large_a_result_is_refused(models, picture):
    too_large = ExtrasRequest(upscaler_1="Lanczos", resize_mode=1, upscaling_resize_w=8192, upscaling_resize_h=8192)
    with pytest.raises(ValueError, match="largest side"):  # 40x30 covering 8192x8192 is 10923 wide before the crop
        run_extras(picture, too_large, models, None)


@pytest.mark.parametrize("fields, field", [
    ({"upscaling_resize": 300}, "upscaling_resize"),
    ({"upscaling_resize": float("nan")}, "upscaling_resize"),
    ({"resize_mode": 2}, "resize_mode"),
    ({"gfpgan_visibility": 1.5}, "gfpgan_visibility"),
])
def test_the_request_refuses_out_of_range_values_by_name(fields, field):
    with pytest.raises(ValidationError) as error:
        ExtrasRequest(**fields)
    assert [e["loc"] for e in error.value.errors()] == [(field,)]


def test_null_fields_take_their_defaults():
    assert ExtrasRequest.model_validate({"upscaling_resize_w": None, "upscaler_1": None}) == ExtrasRequest()
