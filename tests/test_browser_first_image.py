"""A person opens the page, types a prompt, presses Generate and gets an image with its parameters."""

import re

from browser import chromium_page, open_ui
from server_process import ServerProcess
from tiny_models import save_checkpoint, tiny_ldm_yaml, tiny_original_state_dict


def test_generate_in_browser(tmp_path):
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    save_checkpoint(tiny_original_state_dict("sd1"), folder / "tiny.safetensors")
    (folder / "tiny.yaml").write_text(tiny_ldm_yaml("sd1"))

    with ServerProcess(data_dir=tmp_path) as server, chromium_page() as page:
        open_ui(page, server.url)
        assert re.search(r"tiny\.safetensors \[[0-9a-f]{10}\]",
                         page.locator("#sd_checkpoint input").input_value())
        page.locator("#txt2img_prompt textarea").fill("a red circle")
        for field, value in (("width", "64"), ("height", "64"), ("steps", "3"), ("seed", "5")):
            page.locator(f"#txt2img_{field} input[type=number]").fill(value)
        page.locator("#txt2img_generate").click()
        page.wait_for_selector("#txt2img_gallery img", timeout=60_000)
        page.wait_for_function("document.querySelector('#txt2img_info textarea').value.includes('Seed')")
        info = page.locator("#txt2img_info textarea").input_value()
        page.locator("#txt2img_prompt textarea").fill("a red circle, " * 30)
        page.wait_for_function("document.querySelector('#txt2img_token_counter').innerText.includes('/150')")
        assert page.locator("#txt2img_token_counter").inner_text().strip() == "120/150"
        assert page.errors == []

    assert info.startswith("a red circle\nSteps: 3, Sampler: Euler")
    assert "Seed: 5, Size: 64x64" in info
    saved = list((tmp_path / "outputs" / "txt2img-images").glob("*/00000-5.png"))
    assert len(saved) == 1


def test_page_without_checkpoint_tells_user_what_to_do(tmp_path):
    with ServerProcess("--no-shipped-models", data_dir=tmp_path) as server, chromium_page() as page:
        open_ui(page, server.url)
        text = page.locator("#status").inner_text()
        assert "No checkpoint is present" in text
        assert "models/Stable-diffusion" in text
        page.locator("#txt2img_prompt textarea").fill("anything")
        page.locator("#txt2img_generate").click()
        page.wait_for_selector("text=no checkpoint found", timeout=30_000)
        assert page.errors == []
