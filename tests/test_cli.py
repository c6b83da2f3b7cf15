"""The command-line entry point writes images with their parameters, like the UI."""

import subprocess
import sys

from PIL import Image

from conftest import ROOT
from tiny_models import save_checkpoint, tiny_ldm_yaml, tiny_original_state_dict


def test_cli_txt2img_writes_png_with_parameters(tmp_path):
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    save_checkpoint(tiny_original_state_dict("sd1"), folder / "tiny.safetensors")
    (folder / "tiny.yaml").write_text(tiny_ldm_yaml("sd1"))

    run = subprocess.run([sys.executable, "-m", "modules.app.cli", "--data-dir", str(tmp_path), "--prompt", "a cat",
                          "--steps", "2", "--width", "64", "--height", "64", "--seed", "42"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)

    assert run.returncode == 0, run.stderr
    (printed,) = run.stdout.split()
    image = Image.open(printed)
    assert image.size == (64, 64)
    assert printed.endswith("-42.png") and "txt2img-images" in printed
    assert "Seed: 42" in image.info["parameters"]


def test_cli_without_checkpoint_fails_clearly(tmp_path):
    run = subprocess.run([sys.executable, "-m", "modules.app.cli", "--data-dir", str(tmp_path), "--no-shipped-models",
                          "--prompt", "x"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "no checkpoint found" in run.stderr
