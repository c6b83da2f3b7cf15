"""Values JSON admits but no request means: NaN and infinities, lone UTF-16 surrogates, unknown names,
edge values. Each is a 4xx naming the field, never a 500, and a refused request changes nothing.

The property-based sweep below puts hostile values into every field of every request model (the
OpenAPI schema says which fields there are), one or several at a time, on top of a cheap valid body.
It complements the schema-driven run in test_api_limits.py, which generates standard JSON only and so
never sends `NaN` or a lone surrogate.
"""

import base64
import io
import json
import math

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from server_process import ServerProcess

def _tiny_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# A cheap valid body per route; the sweep spoils it.
def _bases() -> dict[str, dict]:
    image = _tiny_png()
    generation = {"prompt": "a red circle on a blue background", "width": 64, "height": 64, "steps": 1}
    return {
        "/sdapi/v1/txt2img": generation,
        "/sdapi/v1/img2img": {**generation, "init_images": [image], "denoising_strength": 0.5},
        "/sdapi/v1/extra-single-image": {"image": image, "upscaling_resize": 1.0},
        "/sdapi/v1/extra-batch-images": {"imageList": [{"data": image, "name": "a.png"}], "upscaling_resize": 1.0},
        "/sdapi/v1/png-info": {"image": image},
        "/sdapi/v1/options": {"live_previews_enable": True},
    }


HOSTILE = [math.nan, math.inf, -math.inf, "\ud800", "a\udfffb", {"\ud800": 1}, ["\udc00"], 1e308, -1e308,
           -1, 0, 2**64, "", None, [], {}, True, "../../../etc/passwd", "Bogus"]


def post_raw(url: str, body, timeout: float = 120) -> requests.Response:
    """JSON as Python writes it: NaN and Infinity as bare words, surrogates as \\u escapes."""
    data = json.dumps(body, allow_nan=True, ensure_ascii=True)
    return requests.post(url, data=data.encode("ascii"), headers={"Content-Type": "application/json"},
                         timeout=timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("hostile")
    with ServerProcess("--nowebui", data_dir=data_dir) as running:
        yield running


@pytest.fixture(scope="module")
def fields(server) -> dict[str, list[str]]:
    """Each swept route's request fields, as the server's own OpenAPI schema lists them."""
    schema = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    components = schema["components"]["schemas"]
    found = {}
    for path in _bases():
        content = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        ref = content.get("$ref")
        found[path] = sorted(components[ref.rsplit("/", 1)[1]]["properties"]) if ref else []
    found["/sdapi/v1/options"] = sorted(requests.get(f"{server.url}/sdapi/v1/options", timeout=10).json())
    return found


def _message(response: requests.Response) -> str:
    return json.dumps(response.json().get("detail"))


# ---- the cases found by hand ---------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/sdapi/v1/txt2img", "/sdapi/v1/img2img"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused_naming_the_field(server, path, value):
    body = {**_bases()[path], "cfg_scale": value}
    response = post_raw(server.url + path, body)
    assert response.status_code == 422, response.text
    assert "cfg_scale" in _message(response) and "finite" in _message(response)


def test_non_finite_numbers_in_extras_are_refused(server):
    body = {**_bases()["/sdapi/v1/extra-single-image"], "upscaling_resize": math.nan}
    response = post_raw(server.url + "/sdapi/v1/extra-single-image", body)
    assert response.status_code == 422 and "upscaling_resize" in _message(response)


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "styles"])
def test_a_lone_surrogate_is_refused_naming_the_field(server, field):
    value = ["\ud800"] if field == "styles" else "a cat \ud800"
    response = post_raw(server.url + "/sdapi/v1/txt2img", {**_bases()["/sdapi/v1/txt2img"], field: value})
    assert response.status_code == 422, response.text
    assert field in _message(response) and "surrogate" in _message(response)


def test_an_unknown_style_is_refused_naming_it(server):
    response = post_raw(server.url + "/sdapi/v1/txt2img", {**_bases()["/sdapi/v1/txt2img"], "styles": ["Nope"]})
    assert response.status_code == 422, response.text
    assert "styles" in _message(response) and "Nope" in _message(response)


def test_hires_fix_at_denoising_strength_zero_upscales_without_denoising(server):
    body = {**_bases()["/sdapi/v1/txt2img"], "width": 128, "height": 128, "steps": 2, "seed": 5,
            "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0}
    response = post_raw(server.url + "/sdapi/v1/txt2img", body)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.size == (192, 192)
    assert "Denoising strength: 0" in image.info["parameters"]


def test_a_size_that_is_not_a_multiple_of_8_is_rounded_down(server):
    response = post_raw(server.url + "/sdapi/v1/txt2img", {**_bases()["/sdapi/v1/txt2img"], "width": 130})
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.size == (128, 64)
    assert json.loads(response.json()["info"])["width"] == 128


# ---- the sweep -------------------------------------------------------------------------------------

@st.composite
def spoiled_bodies(draw, fields: dict[str, list[str]]):
    path = draw(st.sampled_from(sorted(fields)))
    body = dict(_bases()[path])
    for name in draw(st.lists(st.sampled_from(fields[path]), min_size=1, max_size=3, unique=True)):
        body[name] = draw(st.sampled_from(HOSTILE))
    if path != "/sdapi/v1/options" and draw(st.booleans()):
        body["override_settings"] = {draw(st.sampled_from(fields["/sdapi/v1/options"])): draw(st.sampled_from(HOSTILE))}
    return path, body


def test_hostile_values_in_any_field_never_cause_a_server_error(server, fields):
    failures = []

    @given(case=spoiled_bodies(fields))
    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def sweep(case):
        path, body = case
        if path == "/sdapi/v1/txt2img" or path == "/sdapi/v1/img2img":
            # keep accepted generations cheap: the sweep is about refusals
            for name, cap in (("steps", 1), ("n_iter", 1), ("batch_size", 1), ("enable_hr", False)):
                if not isinstance(body.get(name), (int, float)) or body.get(name, 0) > cap:
                    body[name] = cap
            if isinstance(body.get("width"), (int, float)) and body["width"] > 64:
                body["width"] = 64
            if isinstance(body.get("height"), (int, float)) and body["height"] > 64:
                body["height"] = 64
        response = post_raw(server.url + path, body)
        if response.status_code >= 500:
            failures.append((path, repr(body)[:300], response.status_code, response.text[:300]))

    sweep()
    assert failures == []
    # The server still serves, and the sweep's refused options left the settings as they were.
    assert requests.get(f"{server.url}/sdapi/v1/options", timeout=10).json()["sd_vae"] == "Automatic"
    assert post_raw(server.url + "/sdapi/v1/txt2img", _bases()["/sdapi/v1/txt2img"]).status_code == 200
