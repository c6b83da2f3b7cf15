"""API-only server (--nowebui) with logins and a tiny queue: 401 without a login, 429 when full,
no secrets in cmd-flags, and a property-based run over the OpenAPI schema that finds no 5xx."""

import threading
import time

import pytest
import requests
import webuiapi
from hypothesis import HealthCheck, given, settings

from server_process import ROOT, ServerProcess

CHECKPOINTS = ROOT / "models" / "Stable-diffusion"
LOGIN = ("alice", "s3cret:with-colon")
SECOND_LOGIN = ("bob", "hunter2")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("api-only")
    logins = f"{LOGIN[0]}:{LOGIN[1]},{SECOND_LOGIN[0]}:{SECOND_LOGIN[1]}"
    with ServerProcess("--nowebui", "--api-auth", logins, "--gradio-auth", "ui:ui-password", "--queue-size", "1",
                       "--ckpt-dir", str(CHECKPOINTS), data_dir=data_dir) as running:
        yield running


def _routes(server):
    schema = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    return [(method.upper(), path) for path, methods in schema["paths"].items() for method in methods]


def test_every_api_route_needs_the_login(server):
    routes = _routes(server)
    assert len(routes) >= 29
    for method, path in routes:
        for auth in (None, ("alice", "wrong"), ("mallory", LOGIN[1])):
            response = requests.request(method, server.url + path, auth=auth, json={}, timeout=10)
            assert response.status_code == 401, (method, path, auth)
            assert response.headers["WWW-Authenticate"] == "Basic"
    for auth in (LOGIN, SECOND_LOGIN):
        assert requests.get(f"{server.url}/sdapi/v1/sd-models", auth=auth, timeout=10).status_code == 200


def test_api_only_server_has_docs_and_no_ui(server):
    assert requests.get(f"{server.url}/docs", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/", timeout=10).status_code == 404


def test_cmd_flags_never_contain_secrets(server):
    response = requests.get(f"{server.url}/sdapi/v1/cmd-flags", auth=LOGIN, timeout=10)
    flags = response.json()
    assert flags["nowebui"] is True and flags["queue_size"] == 1
    assert flags["api_auth"] == flags["gradio_auth"] == "<redacted>"
    for secret in (LOGIN[1], SECOND_LOGIN[1], "ui-password"):
        assert secret not in response.text


def test_a_full_queue_answers_429_with_retry_after_and_users_control_only_their_jobs(server):
    port = int(server.url.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(port=port, username=LOGIN[0], password=LOGIN[1], sampler="Euler")
    results = {}

    def generate(name, task_id):
        body = {"prompt": name, "width": 128, "height": 128, "steps": 150, "seed": 1, "force_task_id": task_id}
        results[name] = requests.post(f"{server.url}/sdapi/v1/txt2img", json=body, auth=LOGIN, timeout=120)

    running = threading.Thread(target=generate, args=("running", "task(running)"))
    running.start()
    deadline = time.monotonic() + 60
    while api.get_progress()["state"]["job"] != "task(running)" and time.monotonic() < deadline:
        time.sleep(0.05)
    waiting = threading.Thread(target=generate, args=("waiting", "task(waiting)"))
    waiting.start()
    while api.get_progress()["queued"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)

    refused = requests.post(f"{server.url}/sdapi/v1/txt2img", json={"width": 64, "height": 64, "steps": 1},
                            auth=LOGIN, timeout=30)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1

    other_user = requests.post(f"{server.url}/sdapi/v1/interrupt", params={"id_task": "task(running)"},
                               auth=SECOND_LOGIN, timeout=10)
    assert other_user.status_code == 403
    queued = requests.get(f"{server.url}/sdapi/v1/progress", params={"id_task": "task(waiting)"},
                          auth=LOGIN, timeout=10).json()
    assert queued["textinfo"] == "In queue: 1/1"
    for task_id in ("task(waiting)", "task(running)"):
        requests.post(f"{server.url}/sdapi/v1/interrupt", params={"id_task": task_id}, auth=LOGIN, timeout=10)
    running.join(120)
    waiting.join(120)
    assert results["running"].status_code == results["waiting"].status_code == 200


# ---- property-based run over the OpenAPI schema --------------------------------------------------
# Generation routes get their sizes and counts capped so that valid examples stay cheap on a CPU;
# invalid ones are sent as generated.
CHEAP_GENERATION = {"width": 64, "height": 64, "steps": 1, "batch_size": 1, "n_iter": 1, "enable_hr": False,
                    "hr_second_pass_steps": 0, "upscaling_resize": 1.0}
EXAMPLES_PER_OPERATION = 25


def _capped(case):
    if isinstance(case.body, dict) and case.operation.path.endswith(("txt2img", "img2img", "extra-single-image",
                                                                     "extra-batch-images")):
        for key, value in CHEAP_GENERATION.items():
            if key in case.body or key in ("width", "height", "steps"):
                case.body[key] = value
    return case


def test_schema_fuzzing_finds_no_server_errors(server):
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", auth=LOGIN)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 29
    failures, count = [], [0]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case):
                response = _capped(case).call(auth=LOGIN, timeout=60)
                count[0] += 1
                if response.status_code >= 500:
                    failures.append((operation.label, mode.value, case.body, response.status_code, response.text))

            check()
    print(f"schema fuzzing: {count[0]} requests over {len(operations)} operations")
    assert failures == []
