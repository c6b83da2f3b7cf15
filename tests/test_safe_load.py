"""Model files are read by content, and pickles that would run code are refused unrun."""

import pickle

import pytest
import safetensors.torch
import torch

from modules.models import safe_load
from modules.models.safe_load import FileFormat, ModelFileError, UnsafeModelFileError
from pickle_payloads import WritesCanary




def test_malicious_ckpt_is_refused_and_never_runs(tmp_path):
    canary = tmp_path / "canary"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": WritesCanary(canary)}, path)

    with pytest.raises(UnsafeModelFileError) as err:
        safe_load.load_state_dict(path)

    assert str(path) in str(err.value)
    assert "system" in str(err.value)
    assert not canary.exists()


def test_malicious_legacy_pickle_is_refused(tmp_path):
    canary = tmp_path / "canary"
    path = tmp_path / "old.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": WritesCanary(canary)}, f, protocol=2)
    with pytest.raises(ModelFileError):
        safe_load.load_state_dict(path)
    assert not canary.exists()


def test_weights_only_checkpoint_with_training_extras_loads(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"a.weight": torch.ones(3, 2)}, "global_step": 470000, "epoch": 6}, path)
    sd = safe_load.load_state_dict(path)
    assert list(sd) == ["a.weight"]
    assert torch.equal(sd["a.weight"], torch.ones(3, 2))


@pytest.mark.parametrize("real,named", [("safetensors", ".ckpt"), ("ckpt", ".safetensors")])
def test_format_is_decided_by_content_not_extension(tmp_path, real, named):
    weights = {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    path = tmp_path / f"renamed{named}"
    if real == "safetensors":
        safetensors.torch.save_file(weights, str(path))
        expected = FileFormat.SAFETENSORS
    else:
        torch.save({"state_dict": weights}, path)
        expected = FileFormat.TORCH_ZIP
    assert safe_load.sniff_format(path) is expected
    assert torch.equal(safe_load.load_state_dict(path)["x"], weights["x"])


def test_truncated_safetensors_names_file_and_problem(tmp_path):
    path = tmp_path / "cut.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="cut.safetensors.*(damaged|truncated)"):
        safe_load.load_state_dict(path)


def test_truncated_ckpt_names_file_and_problem(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ModelFileError, match="cut.ckpt.*(damaged|truncated)"):
        safe_load.load_state_dict(path)


@pytest.mark.parametrize("content,problem", [(b"", "empty"), (b"hello, this is not a model" * 10, "not a safetensors")])
def test_garbage_files_are_named(tmp_path, content, problem):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=problem):
        safe_load.load_state_dict(path)


def test_safetensors_shapes_come_from_the_header(tmp_path):
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file({"a": torch.zeros(2, 3), "b": torch.zeros(5)}, str(path))
    assert safe_load.read_tensor_shapes(path) == {"a": (2, 3), "b": (5,)}
