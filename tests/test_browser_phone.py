"""The page on a phone (390 px wide) in a real browser against the real server: every tab reachable
without a hidden menu, the result right under Generate, and the checkpoint's name cut short with
"…" before the dropdown's arrow."""

from __future__ import annotations

import pytest

from browser import PHONE, data_dir_with_embedded_model, open_tab, rect, save_artifact, set_number, ui_page
from server_process import ServerProcess

TABS = ["tab_txt2img", "tab_img2img", "tab_extras", "tab_pnginfo", "tab_settings"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = data_dir_with_embedded_model(tmp_path_factory.mktemp("phone"))
    with ServerProcess(data_dir=data) as running:
        yield running


@pytest.fixture
def page(server, request):
    with ui_page(server.url, request.node.name, PHONE) as page:
        yield page


def test_every_tab_is_on_screen_without_a_hidden_menu(page):
    assert not page.locator("#tabs .overflow-menu button").first.is_visible()
    for elem_id in TABS:
        box = page.locator(f"#{elem_id}-button").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE[0], elem_id
    for elem_id in reversed(TABS):
        open_tab(page, elem_id)
        page.wait_for_selector(f"#{elem_id}", state="visible")
    open_tab(page, "tab_img2img")
    for elem_id in ("img2img_img2img_tab", "img2img_img2img_sketch_tab", "img2img_inpaint_tab",
                    "img2img_inpaint_upload_tab"):
        box = page.locator(f"#{elem_id}-button").bounding_box()
        assert box is not None and box["x"] + box["width"] <= PHONE[0], elem_id
    save_artifact(page, "phone_tabs", full_page=False)


def test_result_shows_right_under_generate(page):
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    set_number(page, "txt2img_steps", 4)
    page.locator("#txt2img_generate").scroll_into_view_if_needed()
    page.locator("#txt2img_generate").click()
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('Done in')",
                           timeout=90_000)
    page.wait_for_function("document.querySelector('#txt2img_gallery img')?.naturalWidth === 128")
    generate, image = rect(page, "#txt2img_generate"), rect(page, "#txt2img_gallery img")
    assert image["y"] > generate["bottom"]
    assert image["y"] - generate["bottom"] < 400, "the image is on the screen that has the Generate button"
    assert rect(page, "#txt2img_settings")["y"] > image["bottom"], "the parameters come after the result"
    save_artifact(page, "phone_result", full_page=False)
    save_artifact(page, "phone_result_page")


def test_checkpoint_name_ends_before_the_arrow(page):
    box = page.evaluate("""() => {
        const input = document.querySelector('#sd_checkpoint input');
        const arrow = document.querySelector('#sd_checkpoint .icon-wrap').getBoundingClientRect();
        const style = getComputedStyle(input);
        const text_end = input.getBoundingClientRect().right - parseFloat(style.paddingRight);
        return {text_end, arrow_start: arrow.left, overflow: style.textOverflow,
                cut: input.scrollWidth > input.clientWidth};
    }""")
    assert box["cut"], "the name is longer than the box on a phone"
    assert box["overflow"] == "ellipsis"
    assert box["text_end"] <= box["arrow_start"], box
    save_artifact(page, "phone_checkpoint", full_page=False)
