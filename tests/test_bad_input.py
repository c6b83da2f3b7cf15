"""Broken or hostile model files give one clear message naming the file and the problem."""


import pytest
import safetensors.torch
import torch

from modules.app.cmd_args import parse_args
from modules.models.devices import DevicePolicy
from modules.service.model_manager import ModelManager, NoCheckpointError
from modules.io.paths import Paths
from modules.models.safe_load import ModelFileError, UnsafeModelFileError
from pickle_payloads import WritesCanary
from tiny_models import save_checkpoint, tiny_ldm_yaml, tiny_original_state_dict


def _manager(data_dir):
    return ModelManager(Paths.from_args(parse_args(["--data-dir", str(data_dir), "--no-shipped-models"], environ={})),
                        DevicePolicy.cpu())


def _folder(tmp_path):
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_missing_models_folder_says_where_to_put_checkpoints(tmp_path):
    manager = _manager(tmp_path / "nothing-here")
    assert manager.checkpoints == []
    with pytest.raises(NoCheckpointError, match=r"no checkpoint found: put a \.safetensors or \.ckpt file in .*Stable-diffusion"):
        manager.get()


def test_truncated_checkpoint_is_named(tmp_path):
    path = _folder(tmp_path) / "broken.safetensors"
    save_checkpoint(tiny_original_state_dict("sd1"), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="broken.safetensors: damaged or truncated"):
        _manager(tmp_path).get()


def test_unknown_architecture_is_named(tmp_path):
    path = _folder(tmp_path) / "some-lora.safetensors"
    safetensors.torch.save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 8),
                                 "lora_unet_down_blocks_0.alpha": torch.tensor(4.0)}, str(path))
    with pytest.raises(ModelFileError) as err:
        _manager(tmp_path).get()
    message = str(err.value)
    assert "some-lora.safetensors" in message
    assert "not a Stable Diffusion" in message and "LoRA" in message


def test_weights_that_do_not_fit_are_named(tmp_path):
    folder = _folder(tmp_path)
    state_dict = tiny_original_state_dict("sd1")
    del state_dict["model.diffusion_model.out.2.weight"]
    save_checkpoint(state_dict, folder / "partial.safetensors")
    (folder / "partial.yaml").write_text(tiny_ldm_yaml("sd1"))
    with pytest.raises(ModelFileError, match="partial.safetensors: weights do not fit the sd1 architecture"):
        _manager(tmp_path).get()


def test_pickle_with_code_is_refused_and_manager_keeps_working(tmp_path):
    folder = _folder(tmp_path)
    canary = tmp_path / "canary"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)},
                "x": WritesCanary(canary)},
               folder / "a-evil.ckpt")
    save_checkpoint(tiny_original_state_dict("sd1"), folder / "b-good.safetensors")
    (folder / "b-good.yaml").write_text(tiny_ldm_yaml("sd1"))
    manager = _manager(tmp_path)

    with pytest.raises(UnsafeModelFileError, match="a-evil.ckpt: refused to load"):
        manager.get("a-evil.ckpt")
    assert not canary.exists()
    assert manager.get("b-good").family == "sd1"
