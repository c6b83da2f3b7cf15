"""What the page says about input it refuses, in a real browser against the real server: the same
bounds and words as the API (a typed value out of range is refused by name, never clamped), bad
uploads refused as the API refuses them, settings named in their errors, and no traceback in the
server log for a user's mistake."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest
import requests

from browser import (BOTH_WIDTHS, DESKTOP, close_toasts, data_dir_with_embedded_model, open_tab, save_artifact,
                     set_number, ui_page, wait_for_toast)
from security_faults import FAILING_HOOK, FAULTY_SERVER, HOOK_FAILURE_MARKER
from server_process import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server with the test faults installed: they act only on prompts that carry their marker."""
    data = data_dir_with_embedded_model(tmp_path_factory.mktemp("checks"))
    with ServerProcess("--api", data_dir=data, script=FAULTY_SERVER) as running:
        yield running




@pytest.fixture
def page(server, request):
    with ui_page(server.url, request.node.name, getattr(request, "param", DESKTOP)) as page:
        yield page


def api_message(server, route: str, body: dict) -> str:
    """The API's 422 for `body`, in the words the page uses: `field: message`."""
    response = requests.post(f"{server.url}/sdapi/v1/{route}", json=body, timeout=60)
    assert response.status_code == 422, response.text
    problem = response.json()["detail"][0]
    return f"{'.'.join(str(part) for part in problem['loc'] if part != 'body')}: {problem['msg']}"


def header_only_png(width: int, height: int) -> bytes:
    """A PNG claiming huge dimensions with a tiny body: what a decoder sees of a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def tracebacks(server) -> int:
    return server.log().count("Traceback (most recent call last)")


@BOTH_WIDTHS
@pytest.mark.parametrize("field, value", [("steps", 100000), ("width", -100), ("batch_size", 1000)])
def test_typed_value_out_of_range_is_refused_with_the_apis_words(page, server, field, value, request):
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    set_number(page, f"txt2img_{field}", value)
    assert page.locator(f"#txt2img_{field} input[type=number]").input_value() == str(value), "not clamped"
    before = tracebacks(server)
    page.locator("#txt2img_generate").click()
    expected = api_message(server, "txt2img", {"prompt": "a red circle", field: value})
    assert wait_for_toast(page, f"{field}: ") == expected
    save_artifact(page, request.node.name, full_page=False)
    assert tracebacks(server) == before, "a user's mistake is one log line, not a traceback"
    assert f"Refused: {expected}" in server.log()


def test_prompt_longer_than_the_apis_limit_is_refused(page, server):
    from modules.io.generation_request import MAX_PROMPT_CHARS

    page.locator("#txt2img_prompt textarea").fill("x" * (MAX_PROMPT_CHARS + 1))
    page.locator("#txt2img_generate").click()
    expected = api_message(server, "txt2img", {"prompt": "x" * (MAX_PROMPT_CHARS + 1)})
    assert wait_for_toast(page, "prompt: ") == expected


def test_width_not_a_multiple_of_8_is_rounded_down_as_the_api_does(page):
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    set_number(page, "txt2img_steps", 3)
    set_number(page, "txt2img_width", 130)
    page.locator("#txt2img_generate").click()
    page.wait_for_function("document.querySelector('#txt2img_info textarea').value.includes('Size: 128x')",
                           timeout=90_000)


def test_a_failing_hook_is_named_on_the_page_and_the_next_run_works(page, server, request):
    page.locator("#txt2img_prompt textarea").fill(f"a red circle {HOOK_FAILURE_MARKER}")
    set_number(page, "txt2img_steps", 3)
    page.locator("#txt2img_generate").click()
    message = wait_for_toast(page, f"Hook '{FAILING_HOOK}' failed at before_batch")
    assert "the injected hook failure" in message
    save_artifact(page, request.node.name, full_page=False)
    close_toasts(page)
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    page.locator("#txt2img_generate").click()
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('Done in')",
                           timeout=90_000)
    assert "Traceback" not in message


def test_a_new_error_clears_the_last_runs_done_text(page, request):
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    set_number(page, "txt2img_steps", 3)
    page.locator("#txt2img_generate").click()
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('Done in')",
                           timeout=90_000)
    set_number(page, "txt2img_steps", 1000)
    page.locator("#txt2img_generate").click()
    wait_for_toast(page, "steps: ")
    assert "Done" not in page.locator("#txt2img_progress").inner_text()
    save_artifact(page, request.node.name, full_page=False)


@BOTH_WIDTHS
def test_settings_errors_name_the_setting(page, server, request):
    open_tab(page, "tab_settings")
    set_number(page, "setting_eta_noise_seed_delta", -5)
    before = tracebacks(server)
    page.locator("#settings_submit").click()
    message = wait_for_toast(page, "eta_noise_seed_delta")
    assert message.startswith("Eta noise seed delta")
    assert "Input should be greater than or equal to 0" in message
    assert page.locator("#setting_eta_noise_seed_delta input").input_value() == "-5", "not clamped"
    save_artifact(page, request.node.name, full_page=False)
    assert tracebacks(server) == before


@BOTH_WIDTHS
def test_png_info_refuses_a_file_that_is_not_an_image_as_the_api_does(page, server, tmp_path, request):
    bad = tmp_path / "notes.png"
    bad.write_text("these are my notes, not a picture")
    open_tab(page, "tab_pnginfo")
    before = tracebacks(server)
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(bad))
    expected = api_message(server, "png-info", {"image": base64.b64encode(bad.read_bytes()).decode()})
    assert wait_for_toast(page, "image: ") == expected
    text = page.locator("[data-testid=toast-text]").first.inner_text()
    assert "/tmp" not in text and "gradio" not in text.lower()
    save_artifact(page, request.node.name, full_page=False)
    assert tracebacks(server) == before


@BOTH_WIDTHS
def test_img2img_refuses_a_20000_pixel_square_as_the_api_does(page, server, tmp_path, request):
    bomb = tmp_path / "huge.png"
    bomb.write_bytes(header_only_png(20000, 20000))
    open_tab(page, "tab_img2img")
    page.locator("#img2img_image input[type=file]").set_input_files(str(bomb))
    page.locator("#img2img_prompt textarea").fill("a red circle")
    page.wait_for_timeout(500)  # the upload lands before Generate reads the box
    before = tracebacks(server)
    page.locator("#img2img_generate").click()
    expected = api_message(server, "img2img", {"prompt": "a red circle",
                                               "init_images": [base64.b64encode(bomb.read_bytes()).decode()]})
    assert wait_for_toast(page, "init_images.0: ") == expected
    assert "larger than 16777216 pixels" in expected
    save_artifact(page, request.node.name, full_page=False)
    close_toasts(page)
    assert tracebacks(server) == before
