"""Bounded requests: a body over the cap is a 413 before it is read (Content-Length) or as soon as the
cap is passed (chunked); a 422 repeats only a short prefix of what it refuses; a generation asking for
more images x steps x pixels than the server allows is a 422 naming the numbers. Real servers over HTTP."""

import json
import select
import socket
import time

import pytest
import requests

from modules.io.generation_request import Txt2ImgRequest
from server_process import ROOT, ServerProcess

CHECKPOINTS = ROOT / "models" / "Stable-diffusion"
SMALL = {"prompt": "still serving", "width": 64, "height": 64, "steps": 2, "seed": 3}
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The UI and the API with the default bounds."""
    with ServerProcess("--api", "--ckpt-dir", str(CHECKPOINTS), data_dir=tmp_path_factory.mktemp("bounds")) as s:
        yield s


@pytest.fixture(scope="module")
def small_caps(tmp_path_factory):
    """The API alone with a 1 MiB body cap and room for 2 megapixel-steps per request."""
    with ServerProcess("--nowebui", "--max-body-size", "1", "--max-request-work", "2", "--ckpt-dir", str(CHECKPOINTS),
                       data_dir=tmp_path_factory.mktemp("small-caps")) as s:
        yield s


def _post(server, body, route="txt2img", **kwargs):
    return requests.post(f"{server.url}/sdapi/v1/{route}", json=body, timeout=120, **kwargs)


def _still_serving(server) -> None:
    response = _post(server, SMALL)
    assert response.status_code == 200 and len(response.json()["images"]) == 1


def _connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=60)


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the HTTP/1.1 response on `sock` (sent with a Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), json.loads(body)


def _request_head(server, path: str, length_header: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.url.rsplit(':', 1)[1]}\r\n"
            f"Content-Type: application/json\r\n{length_header}\r\n\r\n").encode()


# ---- request bodies -----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/sdapi/v1/txt2img", "/gradio_api/upload"])
def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_read(server, path):
    with _connect(server) as sock:  # 2 GiB declared, more than the default cap; only 64 KiB sent
        sock.sendall(_request_head(server, path, f"Content-Length: {2 * 1024 * MIB}") + b"{" * 65536)
        status, body = _read_response(sock)
    assert status == 413 and "--max-body-size" in body["detail"]
    _still_serving(server)


def test_an_ordinary_client_sending_too_much_gets_the_413(small_caps):
    response = _post(small_caps, {"prompt": "x" * (2 * MIB)})
    assert response.status_code == 413
    assert response.json() == {"detail": "request body larger than 1 MiB, the limit of this server (--max-body-size)"}
    _still_serving(small_caps)


def test_a_chunked_body_is_refused_once_past_the_cap_without_reading_the_rest(small_caps):
    chunk = b"x" * 65536
    sent, total = 0, 64 * MIB
    with _connect(small_caps) as sock:
        sock.sendall(_request_head(small_caps, "/sdapi/v1/txt2img", "Transfer-Encoding: chunked"))
        while sent < total and not select.select([sock], [], [], 0)[0]:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        status, body = _read_response(sock)
    assert status == 413 and "1 MiB" in body["detail"]
    assert sent < total / 2  # answered while the client was still sending, not after reading it all
    _still_serving(small_caps)


def test_a_chunked_body_under_the_cap_is_served(small_caps):
    payload = json.dumps(SMALL).encode()
    response = requests.post(f"{small_caps.url}/sdapi/v1/txt2img", data=iter([payload[:10], payload[10:]]),
                             headers={"Content-Type": "application/json"}, timeout=120)
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 200


# ---- echoed values --------------------------------------------------------------------------------

def test_a_50_mb_prompt_gets_a_short_422(server):
    started = time.monotonic()
    response = _post(server, {"prompt": "x" * 50_000_000})
    assert response.status_code == 422 and len(response.content) < 1000
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "prompt"] and "20000 characters" in error["msg"]
    assert error["input"] == "x" * 100 + "..."
    assert time.monotonic() - started < 30
    _still_serving(server)


def test_values_quoted_in_messages_are_cut_too(server):
    response = _post(server, {"sampler_name": "y" * 1_000_000, "prompt": "z" * 1_000})
    assert response.status_code == 422 and len(response.content) < 3000
    error = response.json()["detail"][0]
    # The message still names the problem and the choices; the whole request it echoes is a short prefix.
    assert f"unknown sampler '{'y' * 100}...'" in error["msg"] and "choose one of: " in error["msg"]
    assert len(error["input"]) <= 103


def test_the_ui_apps_validation_errors_are_short_too(server):
    response = requests.post(f"{server.url}/gradio_api/queue/join", timeout=60,
                             json={"data": [], "fn_index": "q" * 5_000_000, "session_hash": "s"})
    assert response.status_code == 422 and len(response.content) < 1000
    assert any(error["input"] == "q" * 100 + "..." for error in response.json()["detail"])


# ---- work per request -------------------------------------------------------------------------------

def test_a_request_for_days_of_work_is_refused_naming_the_numbers(server):
    started = time.monotonic()
    response = _post(server, {"batch_size": 64, "n_iter": 100, "steps": 150, "width": 2048, "height": 2048})
    assert response.status_code == 422 and time.monotonic() - started < 5
    message = response.json()["detail"][0]["msg"]
    for part in ("3,840,000 megapixel-steps", "6400 images x 150 steps at 2048x2048", "allows 250,000",
                 "--max-request-work"):
        assert part in message
    _still_serving(server)


def test_a_size_given_inside_the_prompt_counts_as_well(server):
    response = _post(server, {"prompt": "a star --w 2048 --h 2048", "batch_size": 64, "n_iter": 100, "steps": 150,
                              "width": 64, "height": 64})
    assert response.status_code == 422
    assert "6400 images x 150 steps at 2048x2048" in response.json()["detail"][0]["msg"]
    _still_serving(server)


def test_everyday_requests_fit_the_default_work_bound():
    from modules.app.cmd_args import DEFAULT_MAX_REQUEST_WORK
    from modules.service.generation_service import RequestTooLargeError, check_work

    everyday = Txt2ImgRequest(batch_size=8, n_iter=4, steps=150, width=1024, height=1024)
    check_work(everyday, DEFAULT_MAX_REQUEST_WORK)
    check_work(everyday.model_copy(update={"enable_hr": True, "hr_scale": 2.0}), DEFAULT_MAX_REQUEST_WORK)
    check_work(everyday.model_copy(update={"n_iter": 100}), DEFAULT_MAX_REQUEST_WORK)
    with pytest.raises(RequestTooLargeError):
        check_work(Txt2ImgRequest(batch_size=64, n_iter=100, steps=150, width=2048, height=2048),
                   DEFAULT_MAX_REQUEST_WORK)


def test_the_hires_pass_counts_and_the_work_bound_is_a_flag(small_caps):
    # 128x128 at 10 steps is 0.16 megapixel-steps; its hires pass at 512x512 adds 2.5.
    first_pass = {**SMALL, "width": 128, "height": 128, "steps": 10}
    assert _post(small_caps, first_pass).status_code == 200
    response = _post(small_caps, {**first_pass, "enable_hr": True, "hr_scale": 4, "hr_upscaler": "Latent"})
    assert response.status_code == 422
    message = response.json()["detail"][0]["msg"]
    assert "3 megapixel-steps" in message and "hires pass 512x512" in message and "allows 2 per request" in message
