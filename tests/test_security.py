"""The threat table of research/security.md, one test per row (T01..T27, in the table's order).

Rows about the server run against the real server over HTTP: one UI+API server with logins is
shared by the module; servers with other flags are started only where the flags are the point.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import requests
from PIL import Image

from pickle_payloads import WritesCanary
from security_faults import FAILING_HOOK, FAULTY_SERVER, HOOK_FAILURE_MARKER, OOM_MARKER
from server_process import ROOT, ServerProcess

pytestmark = pytest.mark.security

CHECKPOINTS = ROOT / "models" / "Stable-diffusion"
ALICE, BOB, UI = ("alice", "pw-alice"), ("bob", "pw-bob"), ("ui", "pw-ui")
CANARY_TEXT = "canary-secret-contents"
CHEAP = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("security")
    data_dir = base / "data"
    data_dir.mkdir()
    (base / "canary.txt").write_text(CANARY_TEXT)
    (data_dir / "config.json").write_text('{"a":')  # T23: damaged by a crash mid-write
    (data_dir / "styles.csv").write_bytes(b"\xff\xfename,prompt\n\x00\x00")
    outputs = data_dir / "outputs"
    outputs.mkdir()
    (outputs / "x").symlink_to(base, target_is_directory=True)  # T02: a link out of outputs
    (data_dir / "outputs_evil").mkdir()
    (data_dir / "outputs_evil" / "canary.txt").write_text(CANARY_TEXT)
    running = ServerProcess("--api", "--api-auth", f"{ALICE[0]}:{ALICE[1]},{BOB[0]}:{BOB[1]}",
                            "--gradio-auth", f"{UI[0]}:{UI[1]}", "--allowed-hosts", "sd.lan",
                            "--ckpt-dir", str(CHECKPOINTS), data_dir=data_dir, script=FAULTY_SERVER)
    running.data_dir, running.base, running.outputs = data_dir, base, outputs
    running.port = int(running.url.rsplit(":", 1)[1])
    with running:
        yield running


def raw(server, method: str, path: str, headers: dict | None = None, body: bytes | None = None,
        auth: tuple[str, str] | None = UI) -> tuple[int, dict, str]:
    """A request sent byte for byte (requests would normalise `..` and `%2e` away)."""
    headers = dict(headers or {})
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
        for key, value in headers.items():
            connection.putheader(key, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode(
            errors="replace")
    finally:
        connection.close()


def api_post(server, route: str, body: dict, auth=ALICE, **kwargs) -> requests.Response:
    return requests.post(f"{server.url}/sdapi/v1/{route}", json=body, auth=auth, timeout=kwargs.pop("timeout", 120),
                         **kwargs)


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def output_files(server) -> set[Path]:
    return {p for p in server.outputs.rglob("*") if p.is_file() and "x" not in p.relative_to(server.outputs).parts[:1]}


# ---- files -----------------------------------------------------------------------------------------

def test_T01_path_traversal_on_file_routes(server):
    outputs = server.outputs
    for path in (f"/gradio_api/file={outputs}/../../canary.txt", f"/gradio_api/file={outputs}/%2e%2e/%2e%2e/canary.txt",
                 f"/gradio_api/file={outputs}/..%5c..%5ccanary.txt", f"/gradio_api/file={outputs}/%252e%252e/canary.txt",
                 "/gradio_api/file=../canary.txt", "/static/..%2f..%2fcanary.txt",
                 f"/gradio_api/file?path={outputs}/../../canary.txt"):
        status, _, body = raw(server, "GET", path)
        assert status == 403, path
        assert CANARY_TEXT not in body


def test_T02_symlink_and_prefix_confusion_escape(server):
    from modules.app.http_guard import resolve_under

    outputs = server.outputs
    assert resolve_under(outputs, "x/canary.txt") is None  # a link inside outputs pointing out
    assert resolve_under(outputs, "../outputs_evil/canary.txt") is None  # a sibling sharing the prefix
    (outputs / "inside.txt").write_text("ok")
    assert resolve_under(outputs, "inside.txt") == (outputs / "inside.txt").resolve()
    for path in (f"/gradio_api/file={outputs}/x/canary.txt", f"/gradio_api/file={outputs}_evil/canary.txt"):
        status, _, body = raw(server, "GET", path)
        assert status == 403, path
        assert CANARY_TEXT not in body


def test_T02_containment_matches_resolved_relative_to(tmp_path):
    """Property: resolve_under agrees with Path.resolve().relative_to on generated relative paths."""
    from hypothesis import given, settings, strategies as st

    from modules.app.http_guard import resolve_under

    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "link").symlink_to(tmp_path, target_is_directory=True)
    segment = st.sampled_from(["a", "b", "..", ".", "", "link", "root", "c.txt"])

    @given(st.lists(segment, min_size=1, max_size=6))
    @settings(max_examples=300, deadline=None, database=None)
    def agree(parts):
        requested = "/".join(parts)
        result = resolve_under(root, requested)
        try:
            (root / requested).resolve().relative_to(root.resolve())
            inside = bool(requested) and not requested.startswith("/")
        except ValueError:
            inside = False
        assert (result is not None) == inside, requested

    agree()


def test_T03_existence_oracle_same_answer_for_missing_and_forbidden(server):
    answers = {raw(server, "GET", path)[::2] for path in (
        "/gradio_api/file=../does-not-exist", "/gradio_api/file=../canary.txt",
        f"/gradio_api/file={server.base}/does-not-exist.txt", f"/gradio_api/file={server.base}/canary.txt")}
    assert len(answers) == 1
    assert next(iter(answers))[0] == 403


def test_T04_windows_unc_and_drive_paths_refused(server):
    for path in ("/gradio_api/file=//11.0.225.200/share", "/gradio_api/file=\\\\host\\share\\x",
                 "/gradio_api/file=%5c%5chost%5cshare", "/gradio_api/file=C:/Windows/win.ini",
                 "/gradio_api/file=c:%5cwindows%5cwin.ini"):
        assert raw(server, "GET", path)[0] == 403, path


def test_T05_user_named_file_write(server):
    from modules.io.styles import StyleNameError, validate_style_name

    for name in ("../../x", "..\\..\\x", "a/b", "#comment", ""):
        with pytest.raises(StyleNameError):
            validate_style_name(name)
    # Saved images are named NNNNN-<seed>.png: nothing a user types reaches a file name.
    before = {p for p in server.base.rglob("*") if p.is_file()}
    response = api_post(server, "txt2img", {**CHEAP, "prompt": "../../../../escaped/..\\..\\x", "save_images": True})
    assert response.status_code == 200
    created = {p for p in server.base.rglob("*") if p.is_file()} - before
    assert created and all(p.resolve().is_relative_to(server.outputs.resolve()) for p in created
                           if p.suffix == ".png")


def test_T06_path_settings_cannot_be_changed_over_the_network(server):
    for key, value in (("outdir_txt2img_samples", "scripts"), ("samples_filename_pattern", "../x"),
                       ("outdir_samples", "/tmp"), ("directories_filename_pattern", "..")):
        assert api_post(server, "options", {key: value}).status_code == 403
        overridden = api_post(server, "txt2img", {**CHEAP, "override_settings": {key: value}})
        assert overridden.status_code == 403
    options = requests.get(f"{server.url}/sdapi/v1/options", auth=ALICE, timeout=10).json()
    assert "outdir_txt2img_samples" not in options and "samples_filename_pattern" not in options


# ---- browser-borne attacks -------------------------------------------------------------------------

def test_T07_cross_site_request_forgery_refused(server):
    task = "task(csrf)"
    body = json.dumps({**CHEAP, "force_task_id": task}).encode()
    host = f"127.0.0.1:{server.port}"
    refused = (
        {"Origin": "https://evil.example", "Content-Type": "application/json"},
        {"Origin": "null", "Content-Type": "application/json"},
        {"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"},
        {"Sec-Fetch-Site": "same-site", "Content-Type": "application/json"},
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {},
    )
    for headers in refused:
        status, _, _ = raw(server, "POST", "/sdapi/v1/txt2img", headers, body, auth=ALICE)
        assert status == 403, headers
    # Gradio's own routes get the same origin check.
    assert raw(server, "POST", "/gradio_api/queue/join", {"Origin": "https://evil.example",
                                                          "Content-Type": "application/json"}, b"{}")[0] == 403
    progress = requests.get(f"{server.url}/sdapi/v1/progress", params={"id_task": task}, auth=ALICE, timeout=10)
    assert progress.json()["job_id"] is None  # nothing was queued
    same_origin = raw(server, "POST", "/sdapi/v1/txt2img", {"Origin": f"http://{host}",
                                                            "Content-Type": "application/json"},
                      json.dumps(CHEAP).encode(), auth=ALICE)
    assert same_origin[0] == 200
    assert raw(server, "POST", "/sdapi/v1/interrupt", auth=ALICE)[0] == 200  # bodiless POSTs (A1111 clients)


def test_T08_dns_rebinding_host_header_allow_list(server):
    for host in ("evil.example", f"evil.example:{server.port}", f"localhost.evil.example:{server.port}"):
        status, _, _ = raw(server, "GET", "/sdapi/v1/options", {"Host": host}, auth=ALICE)
        assert status == 400, host
        assert raw(server, "GET", "/", {"Host": host})[0] == 400
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", f"[::1]:{server.port}", "sd.lan:7860"):
        assert raw(server, "GET", "/sdapi/v1/options", {"Host": host}, auth=ALICE)[0] == 200, host


def test_T09_no_permissive_cors(server):
    for origin in ("https://evil.example", "null", f"http://localhost:{server.port + 1}"):
        preflight = raw(server, "OPTIONS", "/sdapi/v1/txt2img",
                        {"Origin": origin, "Access-Control-Request-Method": "POST",
                         "Access-Control-Request-Headers": "content-type"}, auth=None)
        assert "access-control-allow-origin" not in preflight[1], origin
        for path in ("/sdapi/v1/options", "/config", "/"):
            _, headers, _ = raw(server, "GET", path, {"Origin": origin}, auth=ALICE if "sdapi" in path else UI)
            assert not any(k.startswith("access-control-") for k in headers), (origin, path)


def test_T09_cors_only_for_configured_origins():
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from modules.app.http_guard import GuardConfig, HttpGuard

    async def hello(request):
        return JSONResponse({"ok": True}, headers={"Access-Control-Allow-Origin": "*"})

    app = HttpGuard(Starlette(routes=[Route("/sdapi/v1/x", hello, methods=["GET", "POST"])]),
                    GuardConfig(cors_origins=frozenset({"https://app.example"})))

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            good = await client.options("/sdapi/v1/x", headers={"Origin": "https://app.example",
                                                                "Access-Control-Request-Method": "POST"})
            assert good.headers["access-control-allow-origin"] == "https://app.example"
            evil = await client.get("/sdapi/v1/x", headers={"Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in evil.headers  # the inner `*` is stripped
            allowed = await client.post("/sdapi/v1/x", json={}, headers={"Origin": "https://app.example"})
            assert allowed.status_code == 200
            assert allowed.headers["access-control-allow-origin"] == "https://app.example"

    import asyncio
    asyncio.run(run())


# ---- logins ----------------------------------------------------------------------------------------

SIDE_ROUTES = ("/", "/config", "/gradio_api/info", "/gradio_api/config", "/gradio_api/upload",
               "/gradio_api/queue/join", "/gradio_api/file=x.png", "/assets/index.js", "/theme.css",
               "/favicon.ico", "/manifest.json", "/internal/ping", "/internal/sysinfo", "/sd_extra_networks/thumb",
               "/login", "/gradio_api/startup-events", "/not-a-route")


def test_T10_unauthenticated_side_routes(server):
    schema_response = requests.get(f"{server.url}/openapi.json", timeout=10)  # public, as in AUTOMATIC1111
    schema = schema_response.json()
    api_routes = [(m.upper(), p) for p, methods in schema["paths"].items() for m in methods]
    assert len(api_routes) >= 29
    routes = api_routes + [(m, p) for p in SIDE_ROUTES for m in ("GET", "POST")]
    for method, path in routes:
        for auth in (None, ("ui", "wrong"), ("mallory", ALICE[1]), ("alice", "")):
            response = requests.request(method, server.url + path, auth=auth, json={}, timeout=10)
            assert response.status_code == 401, (method, path, auth)
            assert response.headers["WWW-Authenticate"] == "Basic"
    assert requests.get(f"{server.url}/", auth=UI, timeout=30).status_code == 200
    assert requests.get(f"{server.url}/sdapi/v1/options", auth=UI, timeout=10).status_code == 401  # API login only
    flags = requests.get(f"{server.url}/sdapi/v1/cmd-flags", auth=ALICE, timeout=10)
    options = requests.get(f"{server.url}/sdapi/v1/options", auth=ALICE, timeout=10)
    error = api_post(server, "txt2img", {"width": "x"})
    for text in (flags.text, options.text, error.text, schema_response.text):
        for secret in (ALICE[1], BOB[1], UI[1]):
            assert secret not in text


def test_T10_password_compare_is_constant_time_and_attempts_limited():
    import asyncio
    import inspect

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from modules.app.api import auth
    from modules.app.http_guard import GuardConfig, HttpGuard

    assert "compare_digest" in inspect.getsource(auth.credentials_match)

    async def ok(request):
        return PlainTextResponse("ok")

    app = HttpGuard(Starlette(routes=[Route("/", ok)]),
                    GuardConfig(ui_credentials=(("ui", "right"),), max_failed_logins=5))

    async def run():
        lan = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))
        other = httpx.ASGITransport(app=app, client=("192.0.2.8", 40000))
        async with httpx.AsyncClient(transport=lan, base_url="http://127.0.0.1") as attacker, \
                httpx.AsyncClient(transport=other, base_url="http://127.0.0.1") as neighbour:
            for _ in range(5):
                assert (await attacker.get("/", auth=("ui", "guess"))).status_code == 401
            locked = await attacker.get("/", auth=("ui", "right"))
            assert locked.status_code == 429 and int(locked.headers["Retry-After"]) >= 1
            assert (await neighbour.get("/", auth=("ui", "right"))).status_code == 200

    asyncio.run(run())


def _start_refused(tmp_path, *flags) -> subprocess.CompletedProcess:
    env = {**os.environ, "COMMANDLINE_ARGS": ""}
    return subprocess.run([sys.executable, str(ROOT / "webui.py"), "--data-dir", str(tmp_path), *flags],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_T11_lan_exposure_needs_a_login(tmp_path, server):
    for flags in (("--listen",), ("--server-name", "0.0.0.0"), ("--listen", "--api")):
        result = _start_refused(tmp_path, *flags, "--port", "1")
        assert result.returncode != 0
        assert "refusing to start without a login" in result.stderr and "--gradio-auth" in result.stderr
    schema = requests.get(f"{server.url}/openapi.json", auth=ALICE, timeout=10).json()
    assert not [p for p in schema["paths"] if "extension" in p or "install" in p]
    for path in ("/sdapi/v1/extensions/install", "/internal/extensions/install"):
        assert api_post(server, path.removeprefix("/sdapi/v1/"), {"url": "http://x"}).status_code in (403, 404)


def test_T12_ssrf_via_image_url(server):
    hits = []

    class Stub(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:22/")
            self.end_headers()

        def log_message(self, *args):
            pass

    stub = HTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        urls = ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:22/",
                f"http://127.0.0.1:{stub.server_port}/redirect.png", "file:///etc/passwd", "ftp://example.com/x.png")
        for url in urls:
            assert api_post(server, "img2img", {**CHEAP, "init_images": [url]}).status_code == 422, url
            assert api_post(server, "png-info", {"image": url}).status_code == 422, url
            assert api_post(server, "extra-single-image", {"image": url}).status_code == 422, url
    finally:
        stub.shutdown()
    assert hits == []


# ---- model files -----------------------------------------------------------------------------------



def test_T13_pickle_rce_in_ckpt(tmp_path):
    import torch

    from modules.models import safe_load

    canary = tmp_path / "canary"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": WritesCanary(canary)}, path)
    with pytest.raises(safe_load.UnsafeModelFileError):
        safe_load.load_state_dict(path)
    assert not canary.exists()
    assert not [line for line in Path(ROOT / "modules" / "app" / "cmd_args.py").read_text().splitlines()
                if "unsafe" in line.lower() and "add_argument" in line]  # no global off switch


def test_T14_loader_chosen_by_content_not_extension(tmp_path):
    import pickle

    from modules.models import safe_load

    canary = tmp_path / "canary"
    for name in ("x.SAFETENSORS", "x.safetensors", "x.SafeTensors"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(WritesCanary(canary)))
        with pytest.raises(safe_load.ModelFileError):
            safe_load.load_state_dict(path)
    assert not canary.exists()


def _safetensors(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    raw_header = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw_header) if length is None else length) + raw_header + data


def test_T15_malformed_safetensors(tmp_path):
    import resource

    from modules.models import safe_load

    tensor = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    cases = {
        "huge-length": _safetensors({"w": tensor}, b"\0" * 8, length=2 ** 63),
        "header-100MB+1": _safetensors({"w": tensor}, b"\0" * 8, length=100_000_001),
        "overlap": _safetensors({"a": tensor, "b": {**tensor, "data_offsets": [4, 12]}}, b"\0" * 12),
        "shape-mismatch": _safetensors({"w": {**tensor, "shape": [3]}}, b"\0" * 8),
        "truncated": _safetensors({"w": tensor}, b"\0" * 3),
        "not-json": _safetensors(b"{not json", b""),
    }
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name, content in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(safe_load.ModelFileError):
            safe_load.load_state_dict(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200


def test_T16_scanner_bypass_pickles_still_refused(tmp_path):
    import pickle

    import torch

    from modules.models import safe_load

    class ResolveName:
        def __reduce__(self):
            import pkgutil
            return (pkgutil.resolve_name, ("os:system",))

    canary = tmp_path / "canary"
    for name, payload in (("resolve", ResolveName()), ("system", WritesCanary(canary))):
        path = tmp_path / f"{name}.ckpt"
        torch.save({"state_dict": {"w": torch.zeros(1)}, "x": payload}, path)
        with pytest.raises(safe_load.UnsafeModelFileError):
            safe_load.load_state_dict(path)
        legacy = tmp_path / f"{name}.pt"
        legacy.write_bytes(pickle.dumps({"x": payload}, protocol=2))
        with pytest.raises(safe_load.ModelFileError):
            safe_load.load_state_dict(legacy)
    assert not canary.exists()


# ---- untrusted inputs ------------------------------------------------------------------------------

def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming huge dimensions with a tiny body: the bytes of a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _gif_bomb() -> bytes:
    """A GIF whose logical screen and frame are 30000x30000 pixels."""
    header = b"GIF89a" + struct.pack("<HHBBB", 30000, 30000, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, 30000, 30000, 0) + b"\x02\x02\x44\x01\x00;"
    return header + frame


def test_T17_decompression_bomb_upload(server):
    from modules.app.api import images

    pixels_limit = Image.MAX_IMAGE_PIXELS
    for content in (_png_header_only(20000, 20000), _gif_bomb()):
        encoded = base64.b64encode(content).decode()
        for route, body in (("png-info", {"image": encoded}), ("img2img", {**CHEAP, "init_images": [encoded]}),
                            ("extra-single-image", {"image": encoded})):
            started = time.monotonic()
            response = api_post(server, route, body)
            assert response.status_code in (413, 422), (route, response.text)
            assert time.monotonic() - started < 1.0
        with pytest.raises(images.ImageFieldError):
            images.decode_image(encoded, "image")
    assert Image.MAX_IMAGE_PIXELS == pixels_limit


def test_T17_upload_byte_cap(monkeypatch):
    from modules.app.api import images

    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 1024)
    big = png_b64(Image.effect_noise((128, 128), 64).convert("RGB"))
    with pytest.raises(images.ImageFieldError, match="larger than"):
        images.decode_image(big, "image")


def test_T18_huge_width_height_steps_batch_refused_before_work(server):
    for body in ({"width": 100000}, {"height": 100000}, {"steps": 100000}, {"batch_size": 1000},
                 {"n_iter": 100000}, {"prompt": "x" * 1_000_000}, {"width": 8192, "height": 8192}):
        started = time.monotonic()
        response = api_post(server, "txt2img", {**CHEAP, **body})
        assert response.status_code == 422, body
        assert time.monotonic() - started < 1.0


# ---- faults ----------------------------------------------------------------------------------------

def test_T19_cuda_out_of_memory_fails_only_that_job(server):
    failed = api_post(server, "txt2img", {**CHEAP, "steps": 6, "prompt": f"a cat {OOM_MARKER}"})
    assert failed.status_code == 503
    assert "ran out of memory" in failed.json()["detail"] and "Traceback" not in failed.text
    after = api_post(server, "txt2img", {**CHEAP, "prompt": "a cat"})
    assert after.status_code == 200 and len(after.json()["images"]) == 1


def test_T19_a_failing_hook_fails_only_that_job_and_says_which(server):
    failed = api_post(server, "txt2img", {**CHEAP, "prompt": f"a cat {HOOK_FAILURE_MARKER}"})
    assert failed.status_code == 500
    detail = failed.json()["detail"]
    assert f"Hook '{FAILING_HOOK}' failed at before_batch" in detail and "the injected hook failure" in detail
    assert "Traceback" not in failed.text
    after = api_post(server, "txt2img", {**CHEAP, "prompt": "a cat"})
    assert after.status_code == 200 and len(after.json()["images"]) == 1


def _interrupt_a_long_job(server, task: str, interrupter) -> tuple[requests.Response, int, float]:
    """Start a 150-step job as alice, let `interrupter` cancel it after 2 steps; the job's answer,
    the status of the cancel request, and seconds from cancel to the job's end."""
    result = {}

    def long_job():
        result["response"] = api_post(server, "txt2img", {**CHEAP, "steps": 150, "force_task_id": task,
                                                          "save_images": True})

    thread = threading.Thread(target=long_job)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        progress = requests.get(f"{server.url}/sdapi/v1/progress", params={"id_task": task}, auth=ALICE,
                                timeout=10).json()
        if progress["state"]["sampling_step"] >= 2:
            break
        time.sleep(0.05)
    cancel = api_post(server, "interrupt", {}, auth=interrupter, params={"id_task": task}).status_code
    if interrupter != ALICE:
        api_post(server, "interrupt", {}, auth=ALICE, params={"id_task": task})
    started = time.monotonic()
    thread.join(60)
    return result["response"], cancel, time.monotonic() - started


def test_T20_interrupt_is_per_job_and_owner_scoped(server):
    response, cancel, _ = _interrupt_a_long_job(server, "task(t20-bob)", BOB)
    assert cancel == 403  # bob may not cancel alice's job
    response, cancel, seconds = _interrupt_a_long_job(server, "task(t20)", ALICE)
    assert cancel == 200 and response.status_code in (200, 409) and seconds < 20
    progress = requests.get(f"{server.url}/sdapi/v1/progress", params={"id_task": "task(t20)"}, auth=ALICE,
                            timeout=10).json()
    assert progress["state"]["sampling_step"] < 150


def test_T20_interrupted_job_saves_nothing(server):
    before = output_files(server)
    _interrupt_a_long_job(server, "task(t20-save)", ALICE)
    assert output_files(server) == before


def test_T21_concurrent_api_calls_and_settings_change(server):
    responses: list[int] = []

    def one(i: int) -> None:
        responses.append(api_post(server, "txt2img", {**CHEAP, "steps": 1, "seed": i}).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    changed = api_post(server, "options", {"CLIP_stop_at_last_layers": 2})
    for thread in threads:
        thread.join(120)
    assert changed.status_code == 200
    assert len(responses) == 20 and set(responses) <= {200, 429}
    assert requests.get(f"{server.url}/sdapi/v1/options", auth=ALICE, timeout=10).json()[
        "CLIP_stop_at_last_layers"] == 2
    api_post(server, "options", {"CLIP_stop_at_last_layers": 1})


_KILLED_WHILE_SAVING = """
import os, signal, sys
from pathlib import Path
from PIL import Image
sys.path.insert(0, {root!r})
from modules.io import image_saving
def die(*args):
    os.kill(os.getpid(), signal.SIGKILL)
image_saving.os.replace = die
options = image_saving.SaveOptions(outputs_dir=Path({target!r}).parent, temp_dir=Path({temp!r}))
image_saving.write_image_atomic(Image.new("RGB", (256, 256), "red"), Path({target!r}), "infotext", options)
"""


def test_T22_partial_output_files(tmp_path):
    from webui import _remove_partial_saves

    outputs = tmp_path / "outputs"
    (outputs / "ok.png").parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(outputs / "ok.png")
    target, temp = outputs / "killed.png", tmp_path / "tmp"  # the server's layout: temp files beside outputs
    script = _KILLED_WHILE_SAVING.format(root=str(ROOT), target=str(target), temp=str(temp))
    result = subprocess.run([sys.executable, "-c", script],
                            capture_output=True, timeout=60)
    assert result.returncode == -9
    assert not target.exists()
    pngs = list(outputs.glob("*.png"))
    assert pngs == [outputs / "ok.png"]
    for png in pngs:
        Image.open(png).verify()
    assert sorted(p.name for p in outputs.iterdir()) == ["ok.png"]
    assert list(temp.glob(".saving-*"))  # the half-written file, outside outputs
    _remove_partial_saves(temp)  # what start-up does
    assert not list(temp.iterdir())


def test_T23_corrupt_config_and_styles_moved_aside(server):
    quarantined = list((server.data_dir / "tmp").glob("config.json.*.bad"))
    assert len(quarantined) == 1 and quarantined[0].read_text() == '{"a":'
    assert "moved to" in server.log() and "started with defaults" in server.log()
    assert requests.get(f"{server.url}/sdapi/v1/options", auth=ALICE, timeout=10).status_code == 200
    styles = requests.get(f"{server.url}/sdapi/v1/prompt-styles", auth=ALICE, timeout=10)
    assert styles.status_code == 200 and styles.json() == []
    assert list((server.data_dir / "tmp").glob("styles.csv.*.bad"))
    assert "Styles file" in server.log()


class _StubVae:
    """Decodes to NaN in half precision (all or some pixels); `fp32_nan` keeps it NaN in float32 too."""

    def __init__(self, partial: bool, fp32_nan: bool):
        import torch
        self.dtype, self.partial, self.fp32_nan, self.torch = torch.float16, partial, fp32_nan, torch
        self.decoded_in: list = []

    def to(self, dtype=None, memory_format=None):
        self.dtype = dtype or self.dtype
        return self

    def decode(self, latents, return_dict=False):
        torch = self.torch
        self.decoded_in.append(latents.dtype)
        pixels = torch.zeros(latents.shape[0], 3, latents.shape[2] * 8, latents.shape[3] * 8)
        if latents.dtype == torch.float16 or self.fp32_nan:
            if self.partial:
                pixels[:, :, 0, 0] = float("nan")
            else:
                pixels[:] = float("nan")
        return (pixels,)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tiny_models import load_tiny_model

    return load_tiny_model(tmp_path_factory.mktemp("models"), "sd1")


def _with_vae(model, vae):
    """The real model with its VAE replaced by one that makes NaN, in a half-precision policy."""
    import dataclasses

    import torch
    return dataclasses.replace(model, vae=vae, policy=dataclasses.replace(model.policy, vae_dtype=torch.float16))


@pytest.mark.parametrize("partial", [False, True])
def test_T24_nan_images_retried_in_fp32_else_error(partial, tiny_model):
    import torch

    from modules.pipeline.vae_codec import NonFiniteImageError, decode_latents

    latents = torch.zeros(1, 4, 8, 8)
    vae = _StubVae(partial, fp32_nan=False)
    model = _with_vae(tiny_model, vae)
    images = decode_latents(model, latents)
    assert vae.decoded_in == [torch.float16, torch.float32] and len(images) == 1
    # The VAE stays in float32 (AUTOMATIC1111's "revert VAE to 32-bit floats"): no second failed decode.
    assert vae.dtype == torch.float32 and model.policy.vae_dtype == torch.float32
    decode_latents(model, latents)
    assert vae.decoded_in == [torch.float16, torch.float32, torch.float32]
    with pytest.raises(NonFiniteImageError, match="no image was saved"):
        decode_latents(_with_vae(tiny_model, _StubVae(partial, fp32_nan=True)), latents)
    with pytest.raises(NonFiniteImageError):
        decode_latents(_with_vae(tiny_model, _StubVae(partial, fp32_nan=False)),
                       torch.full((1, 4, 8, 8), float("nan")))


def test_T24_nan_error_is_a_clear_api_error():
    from modules.app.api.routes import http_error
    from modules.pipeline.vae_codec import NonFiniteImageError

    error = http_error(NonFiniteImageError("the VAE produced NaN or infinite pixels even in float32"))
    assert error.status_code == 500 and "NaN" in error.detail


def test_T25_error_leakage_and_wrong_codes(server):
    cases = (("img2img", {**CHEAP, "init_images": ["not base64!!"]}), ("png-info", {"image": "%%%"}),
             ("png-info", {"image": base64.b64encode(b"not an image").decode()}),
             ("txt2img", {"width": "wide"}), ("txt2img", {"sampler_name": "nope"}),
             ("options", {"CLIP_stop_at_last_layers": 99}), ("extra-single-image", {"image": ""}))
    for route, body in cases:
        response = api_post(server, route, body)
        assert 400 <= response.status_code < 500, (route, body, response.status_code)
        assert "Traceback" not in response.text and 'File "' not in response.text
    status, _, text = raw(server, "POST", "/sdapi/v1/txt2img", {"Content-Type": "application/json"},
                          b"{not json", auth=ALICE)
    assert status == 422 and "Traceback" not in text


# ---- supply chain and the suite itself -------------------------------------------------------------

def test_T26_stale_vulnerable_framework_pins():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "audit_dependencies.py"), "--offline"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for package in ("gradio", "starlette", "fastapi", "pillow", "torch", "safetensors"):
        assert f"{package} " in result.stdout.lower()
    assert "not checked" in result.stdout  # the offline run says what it could not check


def test_T27_security_tests_are_collected():
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "security",
                             "-p", "no:cacheprovider", str(ROOT / "tests" / "test_security.py")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    collected = [line for line in result.stdout.splitlines() if "::test_T" in line]
    rows = {line.split("::test_T")[1][:2] for line in collected}
    assert len(collected) >= 27 and rows == {f"{i:02d}" for i in range(1, 28)}, result.stdout[-2000:]
