"""The page in a real browser against the real server on the shipped model: generate, change
parameters, interrupt, PNG Info, inpaint with a brushed mask, the Midjourney grid with U/V."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from browser import (choose, data_dir_with_embedded_model, open_tab, open_ui, save_artifact,
                     set_number, ui_page)
from server_process import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = data_dir_with_embedded_model(tmp_path_factory.mktemp("ui"))
    with ServerProcess(data_dir=data) as running:
        running.data_dir = data
        yield running


@pytest.fixture
def page(server, request):
    with ui_page(server.url, request.node.name) as page:
        yield page


def wait_for_info(page, tab: str, text: str, timeout: float = 90_000) -> str:
    page.wait_for_function(f"document.querySelector('#{tab}_info textarea').value.includes({text!r})",
                           timeout=timeout)
    return page.locator(f"#{tab}_info textarea").input_value()


def newest(folder) -> Image.Image:
    files = sorted(folder.glob("*/*.png"), key=lambda p: p.stat().st_mtime)
    assert files, f"nothing saved in {folder}"
    return Image.open(files[-1])


def test_generate_shows_image_and_its_parameters(page, server):
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    set_number(page, "txt2img_steps", 8)
    set_number(page, "txt2img_seed", 5)
    page.locator("#txt2img_generate").click()
    page.wait_for_selector("#txt2img_gallery img", timeout=90_000)
    info = wait_for_info(page, "txt2img", "Seed: 5")
    assert info.startswith("a red circle\nSteps: 8, Sampler: Euler, Schedule type: Automatic")
    assert "Size: 128x128" in info and "Model: embedded-shapes-v1" in info
    assert "Done" in page.locator("#txt2img_progress").inner_text()
    save_artifact(page, "generate")


def test_sampler_size_and_seed_changes_show_in_parameters(page):
    page.locator("#txt2img_prompt textarea").fill("a blue square")
    choose(page, "txt2img_sampling", "DPM++ 2M")
    choose(page, "txt2img_scheduler", "Karras")
    set_number(page, "txt2img_steps", 6)
    set_number(page, "txt2img_width", 96)
    set_number(page, "txt2img_height", 64)
    page.locator("#txt2img_res_switch_btn").click()  # swap: 64x96
    set_number(page, "txt2img_seed", 1234)
    page.locator("#txt2img_generate").click()
    info = wait_for_info(page, "txt2img", "Seed: 1234")
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in info
    assert "Size: 64x96" in info and "Steps: 6," in info
    page.wait_for_function("document.querySelector('#txt2img_gallery img')?.naturalWidth > 0")
    image = page.locator("#txt2img_gallery img").first
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 96]
    save_artifact(page, "sampler_size_seed")


def test_interrupt_stops_a_50_step_run(page):
    page.locator("#txt2img_prompt textarea").fill("a green triangle")
    set_number(page, "txt2img_steps", 50)
    set_number(page, "txt2img_seed", 9)
    page.locator("#txt2img_generate").click()
    page.wait_for_function("/Step \\d+\\/50 · ETA/.test(document.querySelector('#txt2img_progress').innerText)",
                           timeout=60_000)
    progress = page.locator("#txt2img_progress").inner_text()
    pressed = time.monotonic()
    page.locator("#txt2img_interrupt").click()
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('Interrupted')",
                           timeout=30_000)
    stopped_after = time.monotonic() - pressed
    step = int(re.search(r"Step (\d+)/50", progress).group(1))
    assert step < 50
    assert stopped_after < 10, "an interrupt takes effect within a step, not after the run"
    # The image made so far is still shown, as in AUTOMATIC1111.
    wait_for_info(page, "txt2img", "Seed: 9")
    save_artifact(page, "interrupt")


def test_png_info_of_a_generated_file_fills_txt2img(page, server):
    page.locator("#txt2img_prompt textarea").fill("a yellow star, (bright:1.2)")
    page.locator("#txt2img_neg_prompt textarea").fill("blurry")
    set_number(page, "txt2img_steps", 7)
    set_number(page, "txt2img_seed", 4242)
    set_number(page, "txt2img_cfg_scale", 5.5)
    page.locator("#txt2img_generate").click()
    wait_for_info(page, "txt2img", "Seed: 4242")
    saved = sorted((server.data_dir / "outputs" / "txt2img-images").glob("*/*-4242.png"))[-1]

    page.reload()
    open_ui(page, server.url)
    open_tab(page, "tab_pnginfo")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(saved))
    page.wait_for_function("document.querySelector('#pnginfo_generation_info textarea').value.includes('4242')",
                           timeout=30_000)
    assert "CFG scale" in page.locator("#pnginfo_html").inner_text()
    page.locator("#pnginfo_send_to_txt2img").click()
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value.includes('yellow star')")
    assert page.locator("#txt2img_prompt textarea").input_value() == "a yellow star, (bright:1.2)"
    assert page.locator("#txt2img_neg_prompt textarea").input_value() == "blurry"
    assert page.locator("#txt2img_seed input").input_value() == "4242"
    assert page.locator("#txt2img_steps input[type=number]").input_value() == "7"
    assert page.locator("#txt2img_cfg_scale input[type=number]").input_value() == "5.5"
    save_artifact(page, "png_info_to_txt2img")


def _two_colour_image(path) -> Image.Image:
    image = Image.new("RGB", (128, 128), (40, 90, 200))
    ImageDraw.Draw(image).rectangle((0, 0, 63, 127), fill=(230, 200, 40))
    image.save(path)
    return image


def test_inpaint_changes_only_the_brushed_region(page, server, tmp_path):
    original = _two_colour_image(tmp_path / "init.png")
    open_tab(page, "tab_img2img")
    open_tab(page, "img2img_inpaint_tab")
    # The editor sets up its canvas once visible; an upload before that is lost.
    page.wait_for_function("/\\d+%/.test(document.querySelector('#img2maskimg .zoom-number')?.innerText || '')",
                           timeout=30_000)
    page.wait_for_timeout(300)
    page.locator("#img2maskimg input[type=file]").set_input_files(str(tmp_path / "init.png"))
    page.wait_for_function("!document.querySelector('#img2maskimg').innerText.includes('Upload an image')",
                           timeout=30_000)
    page.wait_for_timeout(500)  # the editor fits the image to its canvas after the upload
    page.locator("#img2img_prompt textarea").fill("a red circle")
    set_number(page, "img2img_steps", 8)
    set_number(page, "img2img_denoising_strength", 1)
    set_number(page, "img2img_mask_blur", 0)
    set_number(page, "img2img_seed", 3)
    _brush(page, original.size)
    page.locator("#img2img_generate").click()
    wait_for_info(page, "img2img", "Seed: 3")
    result = np.asarray(newest(server.data_dir / "outputs" / "img2img-images").convert("RGB")).astype(int)
    before = np.asarray(original).astype(int)
    changed = np.abs(result - before).sum(axis=2) > 30
    assert changed[80:110, 85:115].mean() > 0.5, "the brushed region was repainted"
    assert changed[:48, :].mean() < 0.01 and changed[:, :48].mean() < 0.01, "pixels away from the mask stay"
    save_artifact(page, "inpaint")


def _brush(page, size: tuple[int, int]) -> None:
    """Drag the brush over image pixels (85..115, 80..110), mapped through where the editor shows the image."""
    page.locator("#img2maskimg canvas").first.scroll_into_view_if_needed()
    rect = page.evaluate("""() => {
        const c = document.querySelector('#img2maskimg canvas'); const r = c.getBoundingClientRect();
        return {x: r.x, y: r.y, w: r.width, h: r.height}; }""")
    # The editor scales the image to fit its canvas and centres it.
    scale = min(rect["w"] / size[0], rect["h"] / size[1])
    left = rect["x"] + (rect["w"] - size[0] * scale) / 2
    top = rect["y"] + (rect["h"] - size[1] * scale) / 2
    page.mouse.move(left + 88 * scale, top + 84 * scale)
    page.mouse.down()
    for y in range(84, 108, 4):
        page.mouse.move(left + 88 * scale, top + y * scale, steps=3)
        page.mouse.move(left + 112 * scale, top + y * scale, steps=6)
    page.mouse.up()
    page.wait_for_timeout(500)


def test_midjourney_grid_with_u1_and_v2(page, server):
    page.locator("#txt2img_prompt textarea").fill("a purple circle --seed 70")
    set_number(page, "txt2img_steps", 6)
    page.locator("#txt2img_midjourney input").check()
    page.locator("#txt2img_generate").click()
    page.wait_for_selector("#txt2img_mj_actions", state="visible", timeout=90_000)
    page.wait_for_function("document.querySelectorAll('#txt2img_gallery img').length === 4")
    info = wait_for_info(page, "txt2img", "Seed: 70")
    assert "Variation seed" not in info

    page.locator("#txt2img_mj_u1").click()
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('U1: 256x256')",
                           timeout=60_000)
    upscaled = newest(server.data_dir / "outputs" / "extras-images")
    assert upscaled.size == (256, 256)
    assert "Seed: 70" in upscaled.info["parameters"]
    save_artifact(page, "midjourney_u1")

    page.locator("#txt2img_mj_v2").click()
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('V2')", timeout=90_000)
    page.wait_for_function("document.querySelectorAll('#txt2img_gallery img').length === 4")
    info = page.locator("#txt2img_info textarea").input_value()
    assert "Seed: 71," in info, "variations keep the seed of image 2"
    assert "Variation seed strength: 0.3" in info
    save_artifact(page, "midjourney_v2")
