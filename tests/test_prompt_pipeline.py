"""The prompt language through the real txt2img path on a tiny model."""

import numpy as np
import pytest
import torch

from modules.models.embeddings import load_embeddings
from modules.io.generation_request import Txt2ImgRequest
from modules.pipeline.prompts.midjourney_params import MidjourneyParamError
from modules.pipeline.processing import Resources, txt2img
from modules.io.styles import PromptStyle, save_styles
from tiny_models import load_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_tiny_model(tmp_path_factory.mktemp("sd1"), "sd1")


def run(model, prompt, resources=None, **fields):
    request = Txt2ImgRequest(**{"prompt": prompt, "steps": 4, "width": 64, "height": 64, "seed": 9,
                                "save_images": False, **fields})
    result = txt2img(model, request, None, resources=resources)
    return np.asarray(result.images[0]).astype(int), result


def test_prompt_editing_switches_conditioning(model):
    red, _ = run(model, "a red circle")
    blue, _ = run(model, "a blue square")
    never, _ = run(model, "[a red circle:a blue square:10]")  # step 10 of 4: never switches
    at_once, _ = run(model, "[a red circle:a blue square:0]")
    halfway, _ = run(model, "[a red circle:a blue square:0.5]")
    assert np.array_equal(never, red)
    assert np.array_equal(at_once, blue)
    assert not np.array_equal(halfway, red) and not np.array_equal(halfway, blue)


def test_alternation_differs_from_either_prompt(model):
    red, _ = run(model, "a red circle")
    mixed, _ = run(model, "a [red|blue] circle")
    assert not np.array_equal(red, mixed)


def test_and_with_weights(model):
    red, _ = run(model, "a red circle")
    zero_weight, _ = run(model, "a red circle AND a blue square:0")
    both, _ = run(model, "a red circle AND a blue square")
    assert np.abs(zero_weight - red).max() <= 2  # same guidance; only batched float rounding differs
    assert np.abs(both - red).max() > 2


def test_comments_are_dropped_before_encoding(model):
    plain, result = run(model, "a red circle")
    commented, result = run(model, "a red circle # secret note")
    assert np.array_equal(plain, commented)
    assert "secret" not in result.infotexts[0]


def test_emphasis_mode_changes_and_is_recorded(model):
    plain, _ = run(model, "a (red:1.6) circle")
    no_norm, result = run(model, "a (red:1.6) circle", emphasis="No norm")
    assert not np.array_equal(plain, no_norm)
    assert "Emphasis: No norm" in result.infotexts[0]


def test_embedding_by_file_name(model, tmp_path):
    width = model.text_encoders[0].model.config.hidden_size
    folder = tmp_path / "embeddings"
    folder.mkdir()
    torch.save({"string_to_param": {"*": torch.randn(2, width, generator=torch.Generator().manual_seed(0))},
                "name": "zqxstyle", "step": 100}, folder / "zqxstyle.pt")
    database = load_embeddings(folder, model)
    assert "zqxstyle" in database.loaded
    resources = Resources(embeddings=database)
    without, _ = run(model, "a red circle in zqxstyle")
    with_it, result = run(model, "a red circle in zqxstyle", resources)
    assert not np.array_equal(without, with_it)
    assert "TI hashes: \"zqxstyle: " in result.infotexts[0]


def test_styles_are_applied(model, tmp_path):
    styles_file = tmp_path / "styles.csv"
    save_styles(styles_file, [PromptStyle("Bold", "{prompt}, bold colours", "dull")])
    _, result = run(model, "a red circle", Resources(styles_file=styles_file), styles=["Bold"])
    assert result.infotexts[0].startswith("a red circle, bold colours\nNegative prompt: dull\n")


def test_midjourney_parameters(model):
    image, result = run(model, "a red circle --w 96 --h 64 --seed 77 --no blur --q 0.5")
    assert image.shape[:2] == (64, 96)
    info = result.infotexts[0]
    assert info.startswith("a red circle\nNegative prompt: blur\n")
    assert "Steps: 2," in info and "Seed: 77," in info
    stopped, _ = run(model, "a red circle --stop 50")
    full, _ = run(model, "a red circle")
    assert not np.array_equal(stopped, full)
    with pytest.raises(MidjourneyParamError, match="--ar 16x9"):
        run(model, "a red circle --ar 16x9")
