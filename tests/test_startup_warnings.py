"""Starting the app prints no deprecation warning that a user cannot act on."""

import subprocess
import sys

from conftest import ROOT


def test_image_model_registry_imports_without_the_jit_script_warning():
    # The registry imports spandrel-extra-arches, whose CodeFormer module uses torch.jit.script; the
    # server builds it at start to list upscalers and face restorers. -W default shows every warning.
    code = "from modules.postprocess import spandrel_models; spandrel_models.registry()"
    run = subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "torch.jit.script" not in run.stderr
