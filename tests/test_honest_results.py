"""What the API answers describes what it did: refused settings change nothing, saved names that no
longer resolve fall back instead of failing every job, `info` and `parameters` match the image and its
infotext, unknown networks are reported, and a request without a size gets the model's own size."""

import base64
import io
import json

import pytest
import requests
from PIL import Image

from server_process import ROOT, ServerProcess

CHECKPOINTS = ROOT / "models" / "Stable-diffusion"
EMBEDDED_SIZE = 128


def _start(data_dir):
    return ServerProcess("--nowebui", "--ckpt-dir", str(CHECKPOINTS), data_dir=data_dir)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("honest")
    with _start(data_dir) as running:
        running.data_dir = data_dir
        yield running


def txt2img(server, **body) -> tuple[dict, list[Image.Image], dict]:
    response = requests.post(f"{server.url}/sdapi/v1/txt2img", json={"steps": 2, **body}, timeout=120)
    assert response.status_code == 200, response.text
    answer = response.json()
    images = [Image.open(io.BytesIO(base64.b64decode(data))) for data in answer["images"]]
    return json.loads(answer["info"]), images, answer["parameters"]


def options(server) -> dict:
    return requests.get(f"{server.url}/sdapi/v1/options", timeout=10).json()


# ---- settings: a refused change changes nothing ------------------------------------------------

@pytest.mark.parametrize("change", [{"sd_vae": "../../../etc/passwd"},
                                    {"sd_vae": "missing.safetensors", "live_previews_enable": False},
                                    {"face_restoration_model": "Bogus", "show_progress_every_n_steps": 7},
                                    {"sd_model_checkpoint": "nope.safetensors"}])
def test_a_refused_option_change_writes_nothing(server, change):
    config = server.data_dir / "config.json"
    before, saved = options(server), config.read_bytes() if config.exists() else None
    response = requests.post(f"{server.url}/sdapi/v1/options", json=change, timeout=30)
    assert response.status_code == 422, response.text
    refused = next(key for key in change if key in ("sd_vae", "face_restoration_model", "sd_model_checkpoint"))
    assert [error["loc"][-1] for error in response.json()["detail"]] == [refused]
    assert options(server) == before
    assert (config.read_bytes() if config.exists() else None) == saved
    info, images, _ = txt2img(server, prompt="a red circle", width=64, height=64)
    assert images[0].size == (64, 64)


def test_an_unknown_face_restorer_is_refused_in_overrides_too(server):
    response = requests.post(f"{server.url}/sdapi/v1/txt2img", json={
        "prompt": "a red circle", "steps": 1, "width": 64, "height": 64,
        "override_settings": {"face_restoration_model": "Bogus"}}, timeout=30)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "override_settings", "face_restoration_model"]
    assert "GFPGAN" in response.json()["detail"][0]["msg"]


def test_a_saved_vae_that_no_longer_exists_falls_back_to_automatic(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"sd_vae": "deleted-since.safetensors",
                                                      "live_previews_enable": False}))
    with _start(tmp_path) as running:
        assert options(running)["sd_vae"] == "Automatic"
        assert options(running)["live_previews_enable"] is False  # the other saved values stay
        _, images, _ = txt2img(running, prompt="a red circle", width=64, height=64)
        assert images[0].size == (64, 64)
        assert "deleted-since.safetensors" in running.log() and "no longer resolves" in running.log()


# ---- info, parameters and the infotext describe the same job ----------------------------------

def test_midjourney_parameters_are_reported_as_they_ran(server):
    info, images, parameters = txt2img(server, prompt="a red circle --ar 2:1 --no blue --seed 7")
    infotext = images[0].info["parameters"]
    width, height = images[0].size
    assert abs(width / height - 2) < 0.1  # sides are multiples of 8
    assert (info["width"], info["height"]) == (parameters["width"], parameters["height"]) == (width, height)
    assert f"Size: {width}x{height}" in infotext
    assert info["prompt"] == parameters["prompt"] == "a red circle"
    assert infotext.startswith("a red circle\nNegative prompt: blue\n")
    assert info["negative_prompt"] == parameters["negative_prompt"] == "blue"
    assert info["seed"] == parameters["seed"] == 7 and "Seed: 7," in infotext
    assert info["infotexts"] == [infotext]


# ---- unknown networks are reported ------------------------------------------------------------

def test_unknown_networks_are_named_in_info(server):
    info, images, _ = txt2img(server, prompt="a red circle <lora:nothere:1> <lora:../../etc/passwd:1>",
                              width=64, height=64)
    assert "Networks not found: nothere, ../../etc/passwd" in info["notes"]
    assert images[0].size == (64, 64)


# ---- a request without a size gets the model's own -------------------------------------------

def test_a_request_without_a_size_is_made_at_the_models_native_size(server):
    info, images, parameters = txt2img(server, prompt="a yellow star on a blue background", seed=3)
    assert images[0].size == (EMBEDDED_SIZE, EMBEDDED_SIZE)
    assert (info["width"], info["height"]) == (parameters["width"], parameters["height"]) == images[0].size
    info, images, _ = txt2img(server, prompt="a yellow star", width=64)
    assert images[0].size == (64, EMBEDDED_SIZE)  # only the side left out is the native one
