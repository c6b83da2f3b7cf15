"""A fresh --data-dir (a second user, a container volume) keeps the models that ship with the product:
the embedded default checkpoint and R-ESRGAN 4x+ stay listed, after the data folder's own models."""

import base64
import hashlib
import io
import shutil

import pytest
import requests
from PIL import Image

from conftest import ROOT
from modules.app.cmd_args import parse_args
from modules.models.devices import DevicePolicy
from modules.service.model_manager import ModelManager
from modules.io.paths import Paths
from server_process import ServerProcess
from tiny_models import save_checkpoint, tiny_ldm_yaml, tiny_original_state_dict
from tools import convert_realesrgan_ncnn as converter

EMBEDDED = ROOT / "models" / "Stable-diffusion" / "embedded-shapes-v1.safetensors"
R_ESRGAN = "R-ESRGAN 4x+"


@pytest.fixture(scope="module")
def shipped_upscaler():
    """The file setup makes in the install's models/ (run_tests.sh, launch.py); made here too when
    pytest runs on its own."""
    path = converter.ensure_realesrgan_x4plus(ROOT / "models")
    assert path is not None, "the conversion failed: see the warning above"
    return path


def _manager(data_dir, *flags, hash_files=False):
    paths = Paths.from_args(parse_args(["--data-dir", str(data_dir), *flags], environ={}))
    return ModelManager(paths, DevicePolicy.cpu(), hash_files=hash_files)


def _install_tiny(data_dir, name="tiny"):
    folder = data_dir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(tiny_original_state_dict("sd1"), folder / f"{name}.safetensors")
    (folder / f"{name}.yaml").write_text(tiny_ldm_yaml("sd1"))
    return folder / f"{name}.safetensors"


def test_fresh_data_dir_lists_the_shipped_models_with_their_titles(tmp_path, shipped_upscaler):
    manager = _manager(tmp_path / "fresh", hash_files=True)

    (info,) = manager.checkpoints
    sha256 = hashlib.sha256(EMBEDDED.read_bytes()).hexdigest()
    assert info.path.resolve() == EMBEDDED.resolve()
    assert info.title == f"embedded-shapes-v1.safetensors [{sha256[:10]}]"
    assert manager.default_checkpoint() is info
    assert manager.upscalers.find(R_ESRGAN).path.resolve() == shipped_upscaler.resolve()


def test_data_dir_models_come_first_and_stay_the_default(tmp_path, shipped_upscaler):
    tiny = _install_tiny(tmp_path)
    manager = _manager(tmp_path)

    assert [c.name for c in manager.checkpoints] == ["tiny.safetensors", "embedded-shapes-v1.safetensors"]
    assert manager.default_checkpoint().path == tiny


def test_install_as_data_dir_lists_each_shipped_model_once(shipped_upscaler):
    manager = _manager(ROOT)

    names = [c.name for c in manager.checkpoints]
    assert names.count("embedded-shapes-v1.safetensors") == 1 and len(names) == len(set(names))
    assert manager.upscalers.names().count(R_ESRGAN) == 1


def test_a_copy_in_the_data_dir_stands_for_the_shipped_file(tmp_path, shipped_upscaler):
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(EMBEDDED, folder / EMBEDDED.name)
    (tmp_path / "models" / "RealESRGAN").mkdir()
    shutil.copy(shipped_upscaler, tmp_path / "models" / "RealESRGAN" / shipped_upscaler.name)
    manager = _manager(tmp_path)

    assert [c.path for c in manager.checkpoints] == [folder / EMBEDDED.name]
    assert manager.upscalers.names().count(R_ESRGAN) == 1
    assert manager.upscalers.find(R_ESRGAN).path.parent == tmp_path / "models" / "RealESRGAN"


def test_no_shipped_models_lists_only_the_folders(tmp_path, shipped_upscaler):
    manager = _manager(tmp_path, "--no-shipped-models")

    assert manager.checkpoints == []
    assert manager.upscalers.find(R_ESRGAN) is None


def test_server_on_a_fresh_data_dir_makes_an_image(tmp_path, shipped_upscaler):
    with ServerProcess("--api", data_dir=tmp_path / "fresh") as server:
        api = f"{server.url}/sdapi/v1"
        models = requests.get(f"{api}/sd-models", timeout=30).json()
        upscalers = requests.get(f"{api}/upscalers", timeout=30).json()
        result = requests.post(f"{api}/txt2img", json={"prompt": "a red circle on a white background", "steps": 4,
                                                       "width": 128, "height": 128, "seed": 3}, timeout=300)
        log = server.log()

    assert [m["model_name"] for m in models] == ["embedded-shapes-v1"]
    assert R_ESRGAN in [u["name"] for u in upscalers]
    assert result.status_code == 200, result.text
    (encoded,) = result.json()["images"]
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert image.format == "PNG" and image.size == (128, 128)
    assert "no checkpoint found" not in log
    # The start itself prints no library deprecation warning (see modules/postprocess/spandrel_models.py).
    assert "torch.jit.script" not in log
