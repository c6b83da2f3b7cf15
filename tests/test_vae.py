"""VAE files: Automatic picks one named like the checkpoint, None keeps the baked-in one."""

import numpy as np
import pytest

from modules.models import ldm_layout
from modules.app.cmd_args import parse_args
from modules.models.devices import DevicePolicy
from modules.io.generation_request import Txt2ImgRequest
from modules.service.model_manager import ModelManager
from modules.io.paths import Paths
from modules.pipeline.processing import txt2img
from modules.models.vae import list_vaes, resolve_vae
from tiny_models import save_checkpoint, tiny_ldm_yaml, tiny_original_state_dict


def _setup(tmp_path):
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    save_checkpoint(tiny_original_state_dict("sd1", seed=0), folder / "tiny.safetensors")
    (folder / "tiny.yaml").write_text(tiny_ldm_yaml("sd1"))
    # A different VAE: the VAE part of another tiny checkpoint, saved bare as VAE files are.
    other = ldm_layout.split_original(tiny_original_state_dict("sd1", seed=5))["vae"]
    (tmp_path / "models" / "VAE").mkdir(parents=True)
    save_checkpoint(other, tmp_path / "models" / "VAE" / "other.vae.pt", fmt="ckpt")
    return folder


def _image(manager, **request):
    model = manager.get()
    req = Txt2ImgRequest(prompt="x", steps=2, width=64, height=64, seed=3, save_images=False, **request)
    return model, np.asarray(txt2img(model, req, None).images[0])


def test_vae_choices_change_the_decoder(tmp_path):
    _setup(tmp_path)
    paths = Paths.from_args(parse_args(["--data-dir", str(tmp_path)], environ={}))
    manager = ModelManager(paths, DevicePolicy.cpu(), vae_choice="None")
    assert [v.name for v in manager.vaes] == ["other.vae.pt"]
    model, baked = _image(manager)
    assert model.vae_name is None

    manager.set_vae("other.vae.pt")
    model, external = _image(manager)
    assert model.vae_name == "other.vae.pt"
    assert not np.array_equal(baked, external)

    with pytest.raises(ValueError, match="unknown VAE 'missing.pt'"):
        manager.set_vae("missing.pt")


def test_automatic_uses_vae_named_like_checkpoint(tmp_path):
    folder = _setup(tmp_path)
    vaes = list_vaes([tmp_path / "models" / "VAE"], [folder])
    assert resolve_vae("Automatic", folder / "tiny.safetensors", vaes) is None
    (tmp_path / "models" / "VAE" / "other.vae.pt").rename(tmp_path / "models" / "VAE" / "tiny.vae.pt")
    vaes = list_vaes([tmp_path / "models" / "VAE"], [folder])
    assert resolve_vae("Automatic", folder / "tiny.safetensors", vaes).name == "tiny.vae.pt"
    assert resolve_vae("None", folder / "tiny.safetensors", vaes) is None


def test_in_place_activations_in_the_decoder_change_no_pixel(tmp_path):
    import torch

    from tiny_models import load_tiny_model

    model = load_tiny_model(tmp_path, "sd1")
    silus = [m for m in model.vae.decoder.modules() if isinstance(m, torch.nn.SiLU)]
    assert silus and all(m.inplace for m in silus)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        in_place = model.vae_decode(z)
        for m in silus:
            m.inplace = False
        assert torch.equal(model.vae_decode(z), in_place)
