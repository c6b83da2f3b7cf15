"""The real server, started as users start it, answers over HTTP."""

import requests

from server_process import ServerProcess


def test_page_without_checkpoint_says_so_and_keeps_serving(tmp_path):
    with ServerProcess("--no-shipped-models", data_dir=tmp_path) as server:
        page = requests.get(server.url + "/", timeout=10)
        assert page.status_code == 200
        config = requests.get(server.url + "/config", timeout=10).json()
        texts = str(config)
        assert "No checkpoint is present" in texts
        assert "models/Stable-diffusion" in texts
        # still serving after a failed model load attempt at start-up
        assert requests.get(server.url + "/", timeout=10).status_code == 200
        assert "no checkpoint found" in server.log()


def test_binds_loopback_by_default(tmp_path):
    with ServerProcess(data_dir=tmp_path) as server:
        assert "Running on local URL:  http://127.0.0.1:" in server.log()
