"""Checkpoint discovery, AUTOMATIC1111-style titles, and the hash cache."""

import hashlib
import os

import safetensors.torch
import torch

from modules.models.checkpoints import find_checkpoint, list_checkpoints
from modules.models.hashes import HashCache


def _write(path, value=0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({"w": torch.full((4,), value)}, str(path))
    return path


def test_discovery_is_recursive_and_skips_vae_files(tmp_path):
    models = tmp_path / "Stable-diffusion"
    _write(models / "b.safetensors", 1)
    _write(models / "sub" / "a.safetensors", 2)
    torch.save({"state_dict": {"w": torch.zeros(1)}}, models / "c.ckpt")
    _write(models / "b.vae.safetensors", 3)
    (models / "notes.txt").write_text("not a model")

    names = [c.name for c in list_checkpoints([models], hash_cache=None)]

    assert names == ["b.safetensors", "c.ckpt", "sub/a.safetensors"]


def test_extra_checkpoint_folder_is_searched(tmp_path):
    _write(tmp_path / "models" / "one.safetensors")
    _write(tmp_path / "elsewhere" / "two.safetensors", 5)
    infos = list_checkpoints([tmp_path / "models", tmp_path / "elsewhere", tmp_path / "missing"], hash_cache=None)
    assert [c.name for c in infos] == ["one.safetensors", "two.safetensors"]


def test_title_uses_first_ten_hex_of_file_sha256(tmp_path):
    path = _write(tmp_path / "m" / "model.safetensors", 7)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()

    (info,) = list_checkpoints([tmp_path / "m"], HashCache(tmp_path / "cache.json"))

    assert info.sha256 == expected
    assert info.title == f"model.safetensors [{expected[:10]}]"
    assert info.model_name == "model"
    assert find_checkpoint([info], expected[:10]) is info
    assert find_checkpoint([info], "model") is info
    assert find_checkpoint([info], info.title) is info
    assert find_checkpoint([info], "other") is None


def test_hash_cache_survives_restart_and_notices_changes(tmp_path):
    path = _write(tmp_path / "m.safetensors", 1)
    cache_file = tmp_path / "cache" / "hashes.json"
    first = HashCache(cache_file).sha256(path)
    assert cache_file.is_file()

    # A fresh cache object (a restart) answers from the file without reading the model:
    # make the model unreadable to prove it.
    os.chmod(path, 0)
    try:
        if os.access(path, os.R_OK):  # root ignores permissions; fall back to checking the entry
            assert str(path.resolve()) in cache_file.read_text()
        else:
            assert HashCache(cache_file).sha256(path) == first
    finally:
        os.chmod(path, 0o644)

    _write(path, 2)  # new content, new size or mtime
    assert HashCache(cache_file).sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest() != first


def test_fallback_files_come_last_and_only_when_no_file_has_their_name(tmp_path):
    shipped = _write(tmp_path / "install" / "shipped.safetensors", 1)
    other_shipped = _write(tmp_path / "install" / "other.safetensors", 2)
    _write(tmp_path / "data" / "a.safetensors", 3)
    _write(tmp_path / "data" / "shipped.safetensors", 4)  # the user's own copy wins

    infos = list_checkpoints([tmp_path / "data"], hash_cache=None, fallback_files=(shipped, other_shipped))
    assert [(c.name, c.path.parent.name) for c in infos] == \
        [("a.safetensors", "data"), ("shipped.safetensors", "data"), ("other.safetensors", "install")]

    # The install's own folder searched as well: each file once.
    infos = list_checkpoints([tmp_path / "install"], hash_cache=None, fallback_files=(shipped,))
    assert [c.name for c in infos] == ["other.safetensors", "shipped.safetensors"]
