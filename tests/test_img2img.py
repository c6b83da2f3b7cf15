"""img2img resize modes, inpainting with every masked-content mode, and hires fix, on tiny models."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from modules.io.generation_request import Img2ImgRequest, Txt2ImgRequest
from modules.pipeline.image_prep import ResizeMode, resize_image
from modules.pipeline.processing import img2img, txt2img
from tiny_models import load_tiny_model


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return load_tiny_model(tmp_path_factory.mktemp("sd1"), "sd1")


@pytest.fixture(scope="module")
def sd1_inpaint(tmp_path_factory):
    return load_tiny_model(tmp_path_factory.mktemp("sd1_inpaint"), "sd1_inpaint")


def _picture(size=(64, 64)):
    image = Image.new("RGB", size, (30, 60, 200))
    ImageDraw.Draw(image).ellipse((size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4), fill=(220, 30, 30))
    return image


def _mask(size=(64, 64), box=(16, 16, 40, 40)):
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def _request(**fields):
    return Img2ImgRequest(**{"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "seed": 3,
                             "save_images": False, "init_images": [_picture()], **fields})


def test_resize_modes_geometry():
    wide = Image.new("RGB", (128, 64), "white")
    ImageDraw.Draw(wide).rectangle((0, 0, 31, 63), fill="black")
    just = resize_image(ResizeMode.JUST_RESIZE, wide, 64, 64)
    crop = resize_image(ResizeMode.CROP_AND_RESIZE, wide, 64, 64)
    fill = resize_image(ResizeMode.RESIZE_AND_FILL, wide, 64, 64)
    assert just.size == crop.size == fill.size == (64, 64)
    assert just.getpixel((5, 32))[0] < 50  # stretched: the black band keeps a quarter of the width
    assert crop.getpixel((5, 32))[0] > 200  # cropped: the black band's left part is cut away
    assert fill.getpixel((32, 2)) == fill.getpixel((32, 16))  # filled: the top band repeats the top row


@pytest.mark.parametrize("mode", list(ResizeMode))
def test_each_resize_mode_makes_an_image_of_the_requested_size(sd1, mode):
    request = _request(init_images=[_picture((96, 64))], resize_mode=int(mode), width=64, height=64)
    result = img2img(sd1, request, None)
    assert result.images[0].size == (64, 64)
    assert "Denoising strength: 0.75" in result.infotexts[0]


def test_low_denoising_stays_close_to_the_init_image(sd1):
    init = np.asarray(_picture(), dtype=float)
    close = np.asarray(img2img(sd1, _request(denoising_strength=0.05), None).images[0], dtype=float)
    far = np.asarray(img2img(sd1, _request(denoising_strength=1.0), None).images[0], dtype=float)
    assert np.abs(close - init).mean() < np.abs(far - init).mean()


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
@pytest.mark.parametrize("only_masked", [False, True])
def test_inpainting_leaves_pixels_outside_the_mask_unchanged(sd1, fill, only_masked):
    mask = _mask()
    request = _request(mask=mask, mask_blur=2, inpainting_fill=fill, inpaint_full_res=only_masked,
                       inpaint_full_res_padding=8, denoising_strength=1.0)
    result = img2img(sd1, request, None)
    before, after = np.asarray(_picture()), np.asarray(result.images[0])
    # the blurred mask reaches a few pixels past the box; beyond that nothing may change
    outside = np.ones((64, 64), bool)
    outside[16 - 8:40 + 9, 16 - 8:40 + 9] = False
    assert np.array_equal(before[outside], after[outside])
    assert not np.array_equal(before[20:36, 20:36], after[20:36, 20:36])
    assert ("Inpaint area: Only masked" in result.infotexts[0]) == only_masked


def test_inpaint_not_masked_inverts(sd1):
    result = img2img(sd1, _request(mask=_mask(), mask_blur=0, inpainting_mask_invert=1, denoising_strength=1.0), None)
    before, after = np.asarray(_picture()), np.asarray(result.images[0])
    assert np.array_equal(before[20:36, 20:36], after[20:36, 20:36])  # the masked box is now kept
    assert "Mask mode: Inpaint not masked" in result.infotexts[0]


def test_nine_channel_inpainting_checkpoint(sd1_inpaint):
    result = img2img(sd1_inpaint, _request(mask=_mask(), mask_blur=0, denoising_strength=1.0), None)
    before, after = np.asarray(_picture()), np.asarray(result.images[0])
    assert np.array_equal(before[:8], after[:8])
    assert not np.array_equal(before[20:36, 20:36], after[20:36, 20:36])


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest-exact)", "Lanczos"])
def test_hires_fix_doubles_the_size(sd1, upscaler):
    request = Txt2ImgRequest(prompt="a red circle", steps=3, width=64, height=64, seed=1, save_images=False,
                             enable_hr=True, hr_scale=2.0, hr_upscaler=upscaler, hr_second_pass_steps=2,
                             denoising_strength=0.6)
    result = txt2img(sd1, request, None)
    assert result.images[0].size == (128, 128)
    info = result.infotexts[0]
    assert "Size: 128x128" in info and f"Hires upscaler: {upscaler}" in info and "Hires upscale: 2" in info
    assert "Denoising strength: 0.6" in info


def test_hires_resize_to(sd1):
    request = Txt2ImgRequest(prompt="x", steps=2, width=64, height=64, seed=1, save_images=False, enable_hr=True,
                             hr_resize_x=96, hr_resize_y=0, hr_upscaler="Latent")
    assert txt2img(sd1, request, None).images[0].size == (96, 96)


def test_img2img_needs_an_image():
    with pytest.raises(ValueError, match="at least one init image"):
        Img2ImgRequest(prompt="x", init_images=[])


@pytest.mark.parametrize("strength", [0.05, 0.5, 0.75, 1.0])
def test_progress_announces_the_steps_img2img_runs(sd1, strength):
    from modules.service.generation_service import expected_progress

    request = _request(steps=20, denoising_strength=strength)
    reported = []
    img2img(sd1, request, None, callback=lambda step: reported.append((step.index, step.total)))
    _, announced = expected_progress(request)
    assert announced == len(reported) == reported[0][1]
