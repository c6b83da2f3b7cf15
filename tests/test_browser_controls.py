"""The page's controls and results in a real browser against the real server: icon buttons say what
they do, ✎ edits styles.csv, inpaint options only where there is a mask, an upscale shown where the
user looks, tiles in the image's shape, PNG Info listing only what the file holds, and a live preview
that fills the result's place without moving the page."""

from __future__ import annotations

import pytest

from browser import (BOTH_WIDTHS, DESKTOP, data_dir_with_embedded_model, open_tab, rect, save_artifact, set_number,
                     ui_page, wait_for_toast)
from server_process import ServerProcess



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = data_dir_with_embedded_model(tmp_path_factory.mktemp("controls"))
    with ServerProcess(data_dir=data) as running:
        running.data_dir = data
        yield running


@pytest.fixture
def page(server, request):
    with ui_page(server.url, request.node.name, getattr(request, "param", DESKTOP)) as page:
        yield page


def generate(page, tab: str = "txt2img") -> str:
    page.locator(f"#{tab}_generate").click()
    page.wait_for_function(f"document.querySelector('#{tab}_progress').innerText.includes('Done in')",
                           timeout=90_000)
    return page.locator(f"#{tab}_info textarea").input_value()


def test_icon_buttons_say_what_they_do(page):
    buttons = ["refresh_checkpoints", "txt2img_res_switch_btn", "txt2img_random_seed", "txt2img_reuse_seed",
               "txt2img_style_edit", "txt2img_style_apply"]
    open_tab(page, "tab_img2img")
    buttons += ["img2img_res_switch_btn", "img2img_random_seed", "img2img_style_edit"]
    for elem_id in buttons:
        page.wait_for_function(f"document.querySelector('#{elem_id}')?.title.length > 5")
        button = page.locator(f"#{elem_id}")
        assert button.get_attribute("aria-label") == button.get_attribute("title")
    assert "width and height" in page.locator("#img2img_res_switch_btn").get_attribute("title")
    page.locator("#img2img_res_switch_btn").hover()
    save_artifact(page, "tooltips", full_page=False)


@BOTH_WIDTHS
def test_pencil_opens_a_style_editor_that_saves_styles_csv(page, server, request):
    page.locator("#txt2img_prompt textarea").fill("a lighthouse at dusk")
    page.locator("#txt2img_style_edit").click()
    page.wait_for_selector("#txt2img_style_editor", state="visible")
    # With no style chosen, the editor starts from the prompts on the page.
    assert page.locator("#txt2img_style_prompt textarea").input_value() == "a lighthouse at dusk"
    name = f"Vivid {request.node.callspec.id}"
    page.locator("#txt2img_style_name input").fill(name)
    page.locator("#txt2img_style_name input").press("Enter")
    page.locator("#txt2img_style_prompt textarea").fill("{prompt}, vivid colours")
    page.locator("#txt2img_style_neg_prompt textarea").fill("dull")
    save_artifact(page, f"style_editor_{request.node.callspec.id}", full_page=False)
    page.locator("#txt2img_style_save").click()
    wait_for_toast(page, f"Style '{name}' saved")
    page.wait_for_selector("#txt2img_style_editor", state="hidden")

    from modules.io.styles import load_styles

    saved = load_styles(server.data_dir / "styles.csv")
    assert saved[name].prompt == "{prompt}, vivid colours" and saved[name].negative_prompt == "dull"
    # Offered at once by the styles dropdown of both tabs.
    page.locator("#txt2img_styles input").click()
    page.wait_for_selector(f"ul[role=listbox] li[aria-label='{name}']")
    page.locator(f"ul[role=listbox] li[aria-label='{name}']").click()
    page.locator("#txt2img_prompt textarea").click()
    page.locator("#txt2img_style_apply").click()
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value"
                           " === 'a lighthouse at dusk, vivid colours'")
    open_tab(page, "tab_img2img")
    page.locator("#img2img_styles input").click()
    page.wait_for_selector(f"ul[role=listbox] li[aria-label='{name}']")


def test_inpaint_options_show_only_in_the_inpaint_modes(page):
    open_tab(page, "tab_img2img")
    page.wait_for_selector("#img2img_image")
    assert not page.locator("#img2img_inpaint_controls").is_visible()
    open_tab(page, "img2img_inpaint_tab")
    page.wait_for_selector("#img2img_inpaint_controls", state="visible")
    save_artifact(page, "inpaint_options_on_inpaint")
    open_tab(page, "img2img_img2img_sketch_tab")
    page.wait_for_selector("#img2img_inpaint_controls", state="hidden")
    open_tab(page, "img2img_inpaint_upload_tab")
    page.wait_for_selector("#img2img_inpaint_controls", state="visible")


def test_upscale_of_a_grid_image_shows_where_the_grid_was(page, request):
    page.locator("#txt2img_prompt textarea").fill("a purple circle --seed 70")
    set_number(page, "txt2img_steps", 6)
    page.locator("#txt2img_midjourney input").check()
    generate(page)
    page.locator("#txt2img_mj_u3").click()
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('U3: 256x256')",
                           timeout=60_000)
    page.wait_for_function("document.querySelector('#txt2img_gallery [data-testid=detailed-image]')"
                           "?.naturalWidth === 256")
    box, gallery = rect(page, "#txt2img_gallery [data-testid=detailed-image]"), rect(page, "#txt2img_gallery")
    assert box["width"] > gallery["width"] / 2, "shown large, not as a fifth tile"
    assert gallery["y"] <= box["y"] < gallery["y"] + 120, "at the top of the results, without scrolling"
    assert "Seed: 72" in page.locator("#txt2img_info textarea").input_value()
    save_artifact(page, request.node.name)


@BOTH_WIDTHS
def test_gallery_tiles_follow_the_images_shape(page, request):
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    set_number(page, "txt2img_steps", 4)
    set_number(page, "txt2img_width", 256)
    set_number(page, "txt2img_height", 96)
    set_number(page, "txt2img_batch_size", 2)
    generate(page)
    page.wait_for_function("[...document.querySelectorAll('#txt2img_gallery .thumbnail-item img')]"
                           ".every(img => img.naturalWidth === 256)")
    for tile in page.locator("#txt2img_gallery .thumbnail-item").all():
        box = tile.bounding_box()
        assert box["width"] / box["height"] == pytest.approx(256 / 96, rel=0.08), box
    save_artifact(page, request.node.name)


def test_png_info_lists_only_what_the_file_holds(page, server, request):
    page.locator("#txt2img_prompt textarea").fill("a yellow star")
    set_number(page, "txt2img_steps", 3)
    set_number(page, "txt2img_seed", 31)
    generate(page)
    saved = sorted((server.data_dir / "outputs" / "txt2img-images").glob("*/*-31.png"))[-1]
    open_tab(page, "tab_pnginfo")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(saved))
    page.wait_for_function("document.querySelector('#pnginfo_html').innerText.includes('Seed')", timeout=30_000)
    listed = page.locator("#pnginfo_html dt").all_inner_texts()
    infotext = page.locator("#pnginfo_generation_info textarea").input_value()
    assert "FP8 weight" not in listed and "Hires checkpoint" not in listed and "VAE Decoder" not in listed
    assert {"Prompt", "Steps", "Sampler", "Seed", "Size", "Model"} <= set(listed)
    for key in listed:
        assert key == "Prompt" or f"{key}: " in infotext, f"{key} is not in the file"
    save_artifact(page, request.node.name)


@BOTH_WIDTHS
def test_live_preview_fills_the_results_place_without_moving_the_page(page, request):
    page.locator("#txt2img_prompt textarea").fill("a green triangle")
    set_number(page, "txt2img_steps", 40)
    set_number(page, "txt2img_seed", 12)
    page.locator("#txt2img_generate").click()
    page.wait_for_function("/Step (1[0-9]|2[0-9])\\/40/.test(document.querySelector('#txt2img_progress').innerText)",
                           timeout=60_000)
    page.wait_for_function("document.querySelector('#txt2img_gallery img')?.naturalWidth > 0")
    preview, gallery = rect(page, "#txt2img_gallery img"), rect(page, "#txt2img_gallery")
    save_artifact(page, f"{request.node.name}_preview", full_page=False)
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('Done in')",
                           timeout=90_000)
    page.wait_for_function("document.querySelector('#txt2img_gallery img')?.naturalWidth === 128")
    result = rect(page, "#txt2img_gallery img")
    for key in ("x", "y", "width", "height"):
        assert preview[key] == pytest.approx(result[key], abs=2), f"the preview sits where the result lands ({key})"
    assert rect(page, "#txt2img_gallery") == pytest.approx(gallery, abs=2), "the results area kept its place and size"
    assert preview["width"] >= 200, "a preview large enough to see"
    save_artifact(page, request.node.name)
