"""Extras through one door: the Extras tab, /sdapi/v1/extra-single-image and the Midjourney grid's U1
run the same request through the same service job and give the same pixels; a server killed while an
extras image is being saved leaves nothing partial in outputs/ once it starts again."""

from __future__ import annotations

import base64
import io
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from spandrel.architectures.ESRGAN import ESRGAN

from browser import (chromium_page, choose, data_dir_with_embedded_model, open_tab, open_ui, save_artifact, set_number,
                     ui_page)
from server_process import ServerProcess


TINY_UPSCALER = "tiny-esrgan-2x"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = data_dir_with_embedded_model(tmp_path_factory.mktemp("extras-one-door"))
    # A real ESRGAN file the worker loads through spandrel, small enough for a CPU to run in a moment.
    (data / "models" / "ESRGAN").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2).state_dict(),
               data / "models" / "ESRGAN" / f"{TINY_UPSCALER}.pth")
    with ServerProcess("--api", data_dir=data) as running:
        running.data_dir = data
        yield running


@pytest.fixture
def page(server, request):
    with ui_page(server.url, request.node.name) as page:
        yield page


def saved(folder: Path, pattern: str = "*.png") -> list[Path]:
    return sorted(folder.glob(f"*/{pattern}"), key=lambda p: p.stat().st_mtime)


def wait_for_new_file(folder: Path, before: list[Path], timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if new := [p for p in saved(folder) if p not in before]:
            return new[-1]
        time.sleep(0.2)
    raise AssertionError(f"nothing new saved in {folder}")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def api_extras(server, image_path: Path, **fields) -> Image.Image:
    body = {"image": base64.b64encode(image_path.read_bytes()).decode(), **fields}
    response = requests.post(f"{server.url}/sdapi/v1/extra-single-image", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(base64.b64decode(response.json()["image"])))


def upload_to_extras(page, path: Path) -> None:
    open_tab(page, "tab_extras")
    page.locator("#extras_image input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#extras_image img", timeout=30_000)


def test_the_tab_the_api_and_u1_give_the_same_pixels(page, server):
    extras_images = server.data_dir / "outputs" / "extras-images"
    page.locator("#txt2img_prompt textarea").fill("a purple circle --seed 70")
    set_number(page, "txt2img_steps", 4)
    page.locator("#txt2img_midjourney input").check()
    page.locator("#txt2img_generate").click()
    page.wait_for_selector("#txt2img_mj_actions", state="visible", timeout=120_000)
    choose(page, "txt2img_mj_upscaler", TINY_UPSCALER)
    page.locator("#txt2img_mj_u1").click()
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('U1: 256x256')",
                           timeout=180_000)
    [from_u1] = saved(extras_images)
    assert from_u1.name.endswith("-70.png"), "named by the grid image's seed"
    [grid_image] = saved(server.data_dir / "outputs" / "txt2img-images", "*-70.png")

    from_api = api_extras(server, grid_image, upscaler_1=TINY_UPSCALER, upscaling_resize=2)
    assert saved(extras_images) == [from_u1], "the API saves nothing, as AUTOMATIC1111's does"

    upload_to_extras(page, grid_image)
    choose(page, "extras_upscaler_1", TINY_UPSCALER)
    assert page.locator("#extras_upscaling_resize input[type=number]").input_value() == "2"
    page.locator("#extras_generate").click()
    from_tab = wait_for_new_file(extras_images, [from_u1])
    page.wait_for_function("document.querySelector('#extras_progress').innerText.includes('Done in')",
                           timeout=60_000)
    save_artifact(page, "extras_one_door")

    u1, tab = Image.open(from_u1), Image.open(from_tab)
    assert u1.size == tab.size == from_api.size == (256, 256)
    assert np.array_equal(pixels(u1), pixels(from_api)) and np.array_equal(pixels(tab), pixels(from_api))
    assert u1.info["parameters"] == tab.info["parameters"]
    assert "Seed: 70" in u1.info["parameters"] and f"Postprocess upscaler: {TINY_UPSCALER}" in u1.info["parameters"]
    assert from_api.info["parameters"] == Image.open(grid_image).info["parameters"]


def test_a_server_killed_while_saving_an_extras_image_leaves_no_partial_file(tmp_path):
    data = data_dir_with_embedded_model(tmp_path / "data")
    outputs = data / "outputs"
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(small)
    # Upscaled 4x to 8192x8192, a noisy image takes long enough to encode and write to be caught mid-save.
    Image.fromarray(rng.integers(0, 255, (2048, 2048, 3), dtype=np.uint8)).save(large)

    server = ServerProcess(data_dir=data)
    try:
        with chromium_page() as page:  # its connection dies with the server: no check for script errors
            open_ui(page, server.url)
            upload_to_extras(page, small)
            choose(page, "extras_upscaler_1", "Lanczos")
            page.locator("#extras_generate").click()
            complete = wait_for_new_file(outputs / "extras-images", [])

            open_ui(page, server.url)
            upload_to_extras(page, large)
            choose(page, "extras_upscaler_1", "Lanczos")
            set_number(page, "extras_upscaling_resize", 4)
            page.locator("#extras_generate").click()
            deadline = time.monotonic() + 300
            while not (writing := list(data.rglob(".saving-*"))):
                assert time.monotonic() < deadline, "the large save never started"
                time.sleep(0.01)
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait(30)
    finally:
        server.stop()
    assert server.process.returncode == -signal.SIGKILL
    assert not writing[0].is_relative_to(outputs), "temporary files are written outside outputs/"

    with ServerProcess(data_dir=data):  # the next start clears what the killed one left
        files = [p for p in outputs.rglob("*") if p.is_file()]
        assert complete in files
        for path in files:
            assert path.suffix == ".png" and not path.name.startswith(".")
            with Image.open(path) as image:
                image.load()  # a truncated PNG raises here
        assert list(data.rglob(".saving-*")) == []
