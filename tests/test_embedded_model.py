"""The shipped default model makes the picture its prompt names, through the normal txt2img path."""

import itertools

import pytest

from conftest import ROOT
from modules.models.checkpoints import list_checkpoints
from modules.app.cmd_args import parse_args
from modules.models.devices import DevicePolicy
from modules.io.generation_request import Txt2ImgRequest
from modules.service.model_manager import ModelManager
from modules.io.paths import Paths
from modules.pipeline.processing import txt2img
from shape_analysis import read_image
from tools.embedded_model.dataset import COLOUR_NAMES, SHAPES, with_article

EMBEDDED = ROOT / "models" / "Stable-diffusion" / "embedded-shapes-v1.safetensors"


@pytest.fixture(scope="module")
def manager():
    assert EMBEDDED.is_file(), f"{EMBEDDED} is missing: the repository ships it"
    paths = Paths.from_args(parse_args(["--data-dir", str(ROOT)], environ={}))
    return ModelManager(paths, DevicePolicy.cpu(), hash_files=False)


def _cases():
    """Every shape in every colour, each on another colour's background, with its own seed."""
    cases = []
    for index, (shape, colour) in enumerate(itertools.product(SHAPES, COLOUR_NAMES)):
        background = COLOUR_NAMES[(COLOUR_NAMES.index(colour) + 1 + index % 5) % len(COLOUR_NAMES)]
        cases.append((colour, shape, background, 1000 + index))
    return cases


def _rates(model, cases, cfg_scale):
    hits = {"foreground": 0, "background": 0, "shape": 0}
    for colour, shape, background, seed in cases:
        prompt = f"{with_article(colour)} {shape} on {with_article(background)} background"
        request = Txt2ImgRequest(prompt=prompt, width=model.native_size, height=model.native_size, seed=seed,
                                 cfg_scale=cfg_scale, save_images=False)
        reading = read_image(txt2img(model, request, None).images[0])
        hits["foreground"] += reading.foreground == colour
        hits["background"] += reading.background == background
        hits["shape"] += reading.shape == shape
    return {k: v / len(cases) for k, v in hits.items()}


def test_shipped_model_is_the_default_and_small(manager):
    assert EMBEDDED.stat().st_size <= 25_000_000
    assert EMBEDDED.with_suffix(".yaml").is_file()
    assert manager.default_checkpoint().path.resolve() == EMBEDDED.resolve() or \
        len(list_checkpoints(manager.paths.checkpoint_dirs, None)) > 1
    model = manager.get(EMBEDDED.name)
    assert model.family == "sd1" and model.native_size >= 128


@pytest.fixture(scope="module")
def cfg7_rates(manager):
    model = manager.get(EMBEDDED.name)
    rates = _rates(model, _cases(), cfg_scale=7)
    print(f"\nCFG 7 over {len(_cases())} prompts: foreground colour {rates['foreground']:.0%}, "
          f"background colour {rates['background']:.0%}, shape {rates['shape']:.0%}")
    return rates


def test_prompts_make_the_named_colours(cfg7_rates):
    # A floor that guards against regressions in the whole path (loader, encoder, sampler, decoder).
    assert cfg7_rates["foreground"] >= 0.75
    assert cfg7_rates["background"] >= 0.85
    assert cfg7_rates["shape"] >= 0.25


def test_prompts_meet_the_quality_targets(cfg7_rates):
    assert cfg7_rates["foreground"] >= 0.9
    assert cfg7_rates["background"] >= 0.9
    assert cfg7_rates["shape"] >= 0.7


def test_guidance_scale_matters(manager, cfg7_rates):
    model = manager.get(EMBEDDED.name)
    unguided = _rates(model, _cases()[::3], cfg_scale=1)
    colour7 = (cfg7_rates["foreground"] + cfg7_rates["background"]) / 2
    colour1 = (unguided["foreground"] + unguided["background"]) / 2
    print(f"\ncolour accuracy: CFG 7 {colour7:.0%}, CFG 1 {colour1:.0%}")
    assert colour1 <= colour7 - 0.15
