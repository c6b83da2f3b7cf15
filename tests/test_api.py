"""The /sdapi/v1 API of the real server, driven by the `webuiapi` client that AUTOMATIC1111 users have."""

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import webuiapi
from PIL import Image

from modules.io.infotext import parse_generation_parameters
from server_process import ROOT, ServerProcess

CHECKPOINTS = ROOT / "models" / "Stable-diffusion"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("api-server")
    with ServerProcess("--api", "--ckpt-dir", str(CHECKPOINTS), data_dir=data_dir) as running:
        running.data_dir = data_dir
        yield running


@pytest.fixture
def api(server):
    port = int(server.url.rsplit(":", 1)[1])
    return webuiapi.WebUIApi(port=port, sampler="Euler", steps=4)


def _infotext(image: Image.Image) -> dict:
    return parse_generation_parameters(image.info["parameters"])


def _post(server, route, body):
    return requests.post(f"{server.url}/sdapi/v1/{route}", json=body, timeout=120)


def _not_queued(server, task_id):
    progress = requests.get(f"{server.url}/sdapi/v1/progress", params={"id_task": task_id}, timeout=10).json()
    return progress["job_id"] is None


def test_txt2img_returns_pngs_whose_infotext_matches_the_request(api):
    result = api.txt2img(prompt="a red circle", negative_prompt="blurry", width=128, height=96, steps=5,
                         seed=1234, cfg_scale=6.5, sampler_name="DPM++ 2M Karras")
    assert len(result.images) == 1
    image = result.image
    assert image.format == "PNG" and image.size == (128, 96)
    params = _infotext(image)
    assert params["Prompt"] == "a red circle" and params["Negative prompt"] == "blurry"
    assert (params["Steps"], params["Sampler"], params["Schedule type"]) == ("5", "DPM++ 2M", "Karras")
    assert (params["Seed"], params["CFG scale"], params["Size-1"], params["Size-2"]) == ("1234", "6.5", "128", "96")
    assert params["Model"] == "embedded-shapes-v1"
    assert result.info["all_seeds"] == [1234]
    assert result.info["infotexts"] == [image.info["parameters"]]
    assert result.parameters["prompt"] == "a red circle"


def test_api_defaults_are_automatic1111s(server):
    response = _post(server, "txt2img", {"prompt": "x", "width": 64, "height": 64, "steps": 1, "seed": 3,
                                         "sampler_index": "Euler a"})
    assert response.status_code == 200
    info = json.loads(response.json()["info"])
    assert info["sampler_name"] == "Euler a"  # sampler_index when sampler_name is absent
    assert response.json()["parameters"]["save_images"] is False
    assert not (server.data_dir / "outputs").exists()  # the API saves nothing unless asked
    params = _post(server, "txt2img", {"width": 64, "height": 64}).json()["parameters"]
    assert params["steps"] == 50


def test_batches_come_with_a_grid_first_and_seeds_in_order(api):
    result = api.txt2img(prompt="shapes", width=64, height=64, steps=2, seed=40, batch_size=2, n_iter=2)
    assert len(result.images) == 5
    assert result.images[0].size == (128, 128)  # the grid
    assert result.info["index_of_first_image"] == 1
    assert result.info["all_seeds"] == [40, 41, 42, 43]
    assert [_infotext(im)["Seed"] for im in result.images[1:]] == ["40", "41", "42", "43"]


def test_img2img_with_a_mask_repaints_only_the_masked_area(api):
    init = api.txt2img(prompt="a blue square", width=128, height=128, steps=4, seed=7).image.convert("RGB")
    mask = Image.new("L", init.size, 0)
    mask.paste(255, (40, 40, 88, 88))
    result = api.img2img(images=[init], mask_image=mask, prompt="a yellow circle", width=128, height=128,
                         steps=6, seed=99, denoising_strength=0.9, inpaint_full_res=False)
    out = result.image.convert("RGB")
    assert out.size == (128, 128)
    for corner in ((0, 0), (127, 0), (0, 127), (127, 127)):
        assert out.getpixel(corner) == init.getpixel(corner)
    assert out.crop((48, 48, 80, 80)).tobytes() != init.crop((48, 48, 80, 80)).tobytes()
    params = _infotext(out)
    assert params["Prompt"] == "a yellow circle" and params["Seed"] == "99"
    assert params["Denoising strength"] == "0.9" and params["Mask blur"] == "4"
    assert result.parameters["init_images"] is None


def test_png_info_reads_the_parameters_back(api):
    image = api.txt2img(prompt="a green triangle", width=64, height=64, steps=3, seed=77).image
    info = api.png_info(image)
    assert info.info == image.info["parameters"]
    assert info.json["parameters"]["Seed"] == "77"
    assert info.json["parameters"]["Prompt"] == "a green triangle"


def test_lists_models_samplers_and_the_rest(api, server):
    models = api.get_sd_models()
    assert [m["model_name"] for m in models] == ["embedded-shapes-v1"]
    assert models[0]["title"].startswith("embedded-shapes-v1.safetensors [")
    names = [s["name"] for s in api.get_samplers()]
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM"} <= set(names)
    assert "Karras" in [s["label"] for s in api.get_schedulers()]
    assert {"None", "Lanczos", "Nearest"} <= {u["name"] for u in api.get_upscalers()}
    assert "Latent" in [m["name"] for m in api.get_latent_upscale_modes()]
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    assert "ram" in api.get_memory()
    for route in ("sd-vae", "face-restorers", "prompt-styles", "embeddings", "loras"):
        assert requests.get(f"{server.url}/sdapi/v1/{route}", timeout=10).status_code == 200
    for route in ("refresh-checkpoints", "refresh-vae", "refresh-loras", "unload-checkpoint", "reload-checkpoint"):
        assert requests.post(f"{server.url}/sdapi/v1/{route}", timeout=60).status_code == 200
    assert requests.get(f"{server.url}/docs", timeout=10).status_code == 200


def test_options_are_saved_and_used_by_later_jobs(api, server):
    title = api.get_sd_models()[0]["title"]
    api.set_options({"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": title})
    try:
        options = api.get_options()
        assert options["CLIP_stop_at_last_layers"] == 2 and options["sd_model_checkpoint"] == title
        saved = json.loads((server.data_dir / "config.json").read_text())
        assert saved["CLIP_stop_at_last_layers"] == 2
        image = api.txt2img(prompt="x", width=64, height=64, steps=2, seed=1).image
        assert _infotext(image)["Clip skip"] == "2"
        # an override holds for its job only
        image = api.txt2img(prompt="x", width=64, height=64, steps=2, seed=1,
                            override_settings={"CLIP_stop_at_last_layers": 3}).image
        assert _infotext(image)["Clip skip"] == "3"
        assert api.get_options()["CLIP_stop_at_last_layers"] == 2
    finally:
        api.set_options({"CLIP_stop_at_last_layers": 1})
    bad = _post(server, "options", {"sd_model_checkpoint": "no-such-model"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "sd_model_checkpoint"]
    assert _post(server, "options", {"CLIP_stop_at_last_layers": 99}).status_code == 422


def test_interrupt_stops_a_long_job_within_steps(api, server):
    outcome = {}

    def long_job():
        started = time.monotonic()
        outcome["result"] = api.txt2img(prompt="a long one", width=128, height=128, steps=150, seed=5, n_iter=3)
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=long_job)
    thread.start()
    deadline = time.monotonic() + 60
    progress = api.get_progress()
    while progress["state"]["sampling_step"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        progress = api.get_progress()
    assert progress["state"]["sampling_steps"] == 150 and 0 < progress["progress"] < 1
    assert progress["current_image"]  # live preview
    assert progress["warmup"] is None  # nothing compiles without --compile
    api.interrupt()
    thread.join(60)
    result = outcome["result"]
    assert result.info["interrupted"] is True
    # Only the first of the three batches ran: an interrupt ends the job, not just the batch.
    assert len(result.images) == 1 and _infotext(result.image)["Seed"] == "5"
    assert outcome["seconds"] < 30
    assert api.get_progress()["state"]["job"] == ""  # nothing running any more


def test_extras_single_and_batch(api):
    image = api.txt2img(prompt="a circle", width=64, height=64, steps=2, seed=3).image
    single = api.extra_single_image(image, upscaler_1="Lanczos", upscaling_resize=2)
    assert single.image.size == (128, 128)
    assert "Postprocess upscaler: Lanczos" in single.info
    batch = api.extra_batch_images([image, image], upscaler_1="Nearest", resize_mode=1,
                                   upscaling_resize_w=96, upscaling_resize_h=80)
    assert [im.size for im in batch.images] == [(96, 80), (96, 80)]


@pytest.mark.parametrize("route, body, field", [
    ("txt2img", {"width": 100000}, "width"),
    ("txt2img", {"width": 60}, "width"),
    ("txt2img", {"steps": 151}, "steps"),
    ("txt2img", {"batch_size": 65}, "batch_size"),
    ("txt2img", {"n_iter": 101}, "n_iter"),
    ("txt2img", {"cfg_scale": 31}, "cfg_scale"),
    ("txt2img", {"sampler_name": "No Such Sampler"}, "sampler_name"),
    ("txt2img", {"override_settings": {"sd_model_checkpoint": "missing"}}, "sd_model_checkpoint"),
    ("txt2img", {"enable_hr": True, "hr_upscaler": "missing"}, "hr_upscaler"),
    ("img2img", {"init_images": ["not base64!"]}, "init_images"),
    ("img2img", {"init_images": [base64.b64encode(b"not an image").decode()]}, "init_images"),
    ("img2img", {"init_images": ["http://127.0.0.1:22/x.png"]}, "init_images"),
    ("img2img", {"init_images": [], "denoising_strength": 2}, "init_images"),
    ("img2img", {"init_images": ["AAAA"], "denoising_strength": 1.5}, "denoising_strength"),
    ("extra-single-image", {"image": "@@@", "upscaler_1": "Lanczos"}, "image"),
])
def test_invalid_requests_are_422_naming_the_field_and_queue_nothing(server, route, body, field):
    task_id = f"task(invalid-{abs(hash(json.dumps(body))) % 10**8})"
    response = _post(server, route, {**body, "force_task_id": task_id})
    assert response.status_code == 422, response.text
    assert field in response.text
    assert _not_queued(server, task_id)


def test_unknown_upscaler_in_extras_is_422(server):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="PNG")
    response = _post(server, "extra-single-image", {"image": base64.b64encode(buffer.getvalue()).decode(),
                                                    "upscaler_1": "Missing"})
    assert response.status_code == 422 and "upscaler_1" in response.text


def test_unknown_alwayson_scripts_are_ignored_with_a_note(server):
    response = _post(server, "txt2img", {"width": 64, "height": 64, "steps": 1,
                                         "alwayson_scripts": {"ControlNet": {"args": []}}})
    assert response.status_code == 200
    assert any("ControlNet" in note for note in json.loads(response.json()["info"])["notes"])


def test_twenty_clients_with_a_hundred_jobs_each_get_their_own_results(server):
    port = int(server.url.rsplit(":", 1)[1])

    def client(number):
        api = webuiapi.WebUIApi(port=port, sampler="Euler", steps=2)
        outcomes = []
        for k in range(5):
            seed = 1000 * number + k
            try:
                result = api.txt2img(prompt=f"client {number} job {k}", width=64, height=64, steps=2, seed=seed)
                params = _infotext(result.image)
                outcomes.append((seed, result.info["all_seeds"], params["Seed"], params["Prompt"], 200))
            except RuntimeError as e:
                outcomes.append((seed, None, None, None, e.args[0]))
        return number, outcomes

    started = time.monotonic()
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(client, range(20)))
    elapsed = time.monotonic() - started
    print(f"100 jobs from 20 clients in {elapsed:.1f} s")
    statuses = [o[4] for _, outcomes in results for o in outcomes]
    assert all(status < 500 for status in statuses)
    assert statuses.count(200) == 100
    for number, outcomes in results:
        for k, (seed, all_seeds, infotext_seed, prompt, _) in enumerate(outcomes):
            assert all_seeds == [seed] and infotext_seed == str(seed)
            assert prompt == f"client {number} job {k}"
