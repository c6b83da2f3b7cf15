"""A client that gives up takes its job with it: a queued job is dropped (it never runs), a running one
is interrupted, so the next user is served at once. --keep-abandoned-jobs keeps AUTOMATIC1111's way of
finishing them. Real servers over HTTP; the clients close their connections as a timed-out client does."""

import http.client
import json
import time

import pytest
import requests

from server_process import ROOT, ServerProcess

CHECKPOINTS = ROOT / "models" / "Stable-diffusion"
# The request, at the embedded model's size: hours of work on this machine.
LONG = {"prompt": "a long one", "batch_size": 8, "n_iter": 100, "steps": 150, "width": 128, "height": 128, "seed": 1}
SMALL = {"prompt": "next user", "width": 64, "height": 64, "steps": 2, "seed": 2}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess("--api", "--ckpt-dir", str(CHECKPOINTS), data_dir=tmp_path_factory.mktemp("disconnect")) as s:
        assert _post(s, SMALL).status_code == 200  # the model is loaded before anything is timed
        yield s


def _post(server, body, timeout=120):
    return requests.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=timeout)


def _progress(server, task=None) -> dict:
    params = {"id_task": task} if task else {}
    return requests.get(f"{server.url}/sdapi/v1/progress", params=params, timeout=10).json()


def _wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _give_up_after(server, body, seconds: float) -> None:
    """A client with a read timeout: it closes its connection when the answer is late."""
    with pytest.raises(requests.ReadTimeout):
        _post(server, body, timeout=seconds)


class HeldRequest:
    """A request whose connection stays open until `close()`, as a patient client's does."""

    def __init__(self, server, body):
        self.connection = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=300)
        self.connection.request("POST", "/sdapi/v1/txt2img", json.dumps(body), {"Content-Type": "application/json"})

    def close(self):
        self.connection.close()


def _idle(server) -> bool:
    progress = _progress(server)
    return progress["state"]["job"] == "" and progress["queued"] == 0


def _served_promptly(server) -> float:
    started = time.monotonic()
    assert _post(server, SMALL, timeout=60).status_code == 200
    return time.monotonic() - started


def test_a_running_job_whose_client_times_out_is_interrupted(server):
    task = "task(abandoned-running)"
    _give_up_after(server, {**LONG, "force_task_id": task}, 3)
    assert _wait_until(lambda: _idle(server), 15), _progress(server)
    state = _progress(server, task)["state"]
    assert state["interrupted"] and state["job_no"] == 0 and 0 < state["sampling_step"] < 150
    assert _served_promptly(server) < 30
    assert f"Job {task} (txt2img) interrupted: its client went away" in server.log()


def test_a_queued_job_whose_client_times_out_never_runs(server):
    running, queued = "task(patient-running)", "task(abandoned-queued)"
    patient = HeldRequest(server, {**LONG, "force_task_id": running})
    try:
        assert _wait_until(lambda: _progress(server)["state"]["job"] == running, 30)
        _give_up_after(server, {**LONG, "force_task_id": queued}, 2)
        assert _wait_until(lambda: _progress(server, queued)["textinfo"] == "cancelled", 10)
        progress = _progress(server)
        assert progress["state"]["job"] == running and progress["queued"] == 0  # the patient client's job goes on
        assert _progress(server, queued)["state"]["sampling_step"] == 0
        assert f"Job {queued} (txt2img) dropped before it started: its client went away" in server.log()
    finally:
        patient.close()
    assert _wait_until(lambda: _idle(server), 15)
    assert _served_promptly(server) < 30


def test_keep_abandoned_jobs_finishes_them_as_automatic1111_does(tmp_path):
    task = "task(kept)"
    with ServerProcess("--nowebui", "--keep-abandoned-jobs", "--ckpt-dir", str(CHECKPOINTS),
                       data_dir=tmp_path) as server:
        assert _post(server, SMALL).status_code == 200
        _give_up_after(server, {**LONG, "force_task_id": task}, 2)
        time.sleep(3)  # longer than it takes to notice a client that went away
        step = _progress(server, task)["state"]["sampling_step"]
        assert _progress(server)["state"]["job"] == task
        assert _wait_until(lambda: _progress(server, task)["state"]["sampling_step"] > step, 30)
        requests.post(f"{server.url}/sdapi/v1/interrupt", params={"id_task": task}, timeout=10)
        assert _wait_until(lambda: _idle(server), 30)
        assert "client went away" not in server.log()


def test_a_closed_page_takes_its_running_job_along(server):
    from browser import chromium_page, open_ui, set_number

    with chromium_page() as page:
        open_ui(page, server.url)
        page.locator("#txt2img_prompt textarea").fill("a long one from the page")
        set_number(page, "txt2img_steps", 150)
        set_number(page, "txt2img_batch_count", 100)
        page.locator("#txt2img_generate").click()
        assert _wait_until(lambda: _progress(server)["state"]["sampling_step"] > 0, 30), _progress(server)
        task = _progress(server)["state"]["job"]
    # The browser is gone: the page's job stops instead of keeping the device for its 100 batches.
    assert _wait_until(lambda: _idle(server), 30), _progress(server)
    assert _progress(server, task)["state"]["interrupted"]
    assert f"Job {task} (txt2img) interrupted: its page was closed" in server.log()
    assert _served_promptly(server) < 30
