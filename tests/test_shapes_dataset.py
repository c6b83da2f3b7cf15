"""The embedded model's training tool: its procedural dataset, its captions, and a whole run at toy sizes."""

from __future__ import annotations

import dataclasses
import random
import re

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tools.embedded_model import dataset
from tools.embedded_model.config import DataConfig, TrainConfig, smoke_config
from tools.embedded_model.export import REQUIRED_PREFIXES, check_channels
from tools.embedded_model.models import build_networks, parameter_count

CONFIG = DataConfig(image_size=64, mislabelled_colour_probability=0.0)  # captions that tell the truth
CAPTION_PATTERN = re.compile(
    r"^an? (?:(?:small|large) )?(?P<colour>\w+) (?P<shape>\w+)(?: (?:at|on|in) the [\w ]+?)? "
    r"on an? (?P<background>\w+) background$"
)


def scenes_for(seed: int, count: int = 64, config: DataConfig = CONFIG) -> dataset.SceneBatch:
    return dataset.sample_scenes(count, config, torch.Generator().manual_seed(seed))


def pixel(images: torch.Tensor, index: int, x: float, y: float) -> torch.Tensor:
    return images[index, :, int(y), int(x)]


def test_vocabulary_has_the_required_colours_and_shapes():
    required_colours = {"red", "green", "blue", "yellow", "orange", "purple", "white", "black"}
    assert required_colours <= set(dataset.COLOUR_NAMES)
    assert {"circle", "square", "triangle", "star"} <= set(dataset.SHAPES)
    assert len(dataset.SHAPES) >= 5


def test_scenes_use_every_colour_and_shape_and_never_the_background_colour():
    scenes = scenes_for(0, count=2000)
    assert set(scenes.shapes[:, 0].tolist()) == set(range(len(dataset.SHAPES)))
    assert set(scenes.colours[:, 0].tolist()) == set(range(len(dataset.COLOUR_NAMES)))
    assert set(scenes.backgrounds.tolist()) == set(range(len(dataset.COLOUR_NAMES)))
    assert not (scenes.colours == scenes.backgrounds[:, None]).any()
    assert set(scenes.counts.tolist()) == {1, 2}


def test_sizes_and_positions_vary_and_shapes_stay_inside_the_image():
    scenes = scenes_for(1, count=500)
    single = scenes.counts == 1
    radii = scenes.radii[single, 0]
    assert radii.max() > 2 * radii.min()
    centres = scenes.centres[single, 0]
    assert centres[:, 0].std() > 5 and centres[:, 1].std() > 5
    low = scenes.centres - scenes.radii[..., None]
    high = scenes.centres + scenes.radii[..., None]
    assert (low >= dataset.MARGIN_PIXELS - 1e-4).all() and (high <= CONFIG.image_size - dataset.MARGIN_PIXELS + 1e-4).all()


def test_single_shape_caption_names_the_colours_drawn_at_the_shape_centre_and_the_corner():
    config = dataclasses.replace(CONFIG, two_shape_probability=0.0)
    scenes = scenes_for(2, count=96, config=config)
    images = dataset.render(scenes, config.image_size)
    texts = dataset.captions(scenes, config, random.Random(2))
    shapes_seen = set()
    for index, (scene, text) in enumerate(zip(dataset.scene_records(scenes), texts)):
        match = CAPTION_PATTERN.match(text)
        assert match, text
        assert match["shape"] == dataset.SHAPES[scene.shapes[0]]
        shapes_seen.add(match["shape"])
        assert dataset.nearest_colour_name(pixel(images, index, *scene.centres[0])) == match["colour"], text
        for corner in ((0, 0), (0, config.image_size - 1), (config.image_size - 1, 0),
                       (config.image_size - 1, config.image_size - 1)):
            assert dataset.nearest_colour_name(pixel(images, index, *corner)) == match["background"], text
    assert shapes_seen == set(dataset.SHAPES)


def test_two_shape_captions_name_both_shapes_in_their_drawn_colours():
    config = dataclasses.replace(CONFIG, two_shape_probability=1.0)
    scenes = scenes_for(3, count=48, config=config)
    images = dataset.render(scenes, config.image_size)
    texts = dataset.captions(scenes, config, random.Random(3))
    for index, (scene, text) in enumerate(zip(dataset.scene_records(scenes), texts)):
        for slot in range(2):
            phrase = dataset.with_article(f"{dataset.COLOUR_NAMES[scene.colours[slot]]} {dataset.SHAPES[scene.shapes[slot]]}")
            assert phrase in text
            drawn = dataset.nearest_colour_name(pixel(images, index, *scene.centres[slot]))
            assert drawn == dataset.COLOUR_NAMES[scene.colours[slot]], text
        first, second = scene.centres
        axis = 0 if scene.layout == dataset.HORIZONTAL else 1
        assert first[axis] < second[axis]  # slot 0 is left of / above slot 1, as the captions say
        assert text.endswith(f"on {dataset.with_article(dataset.COLOUR_NAMES[scene.background])} background")


def test_position_words_match_where_the_shape_is():
    assert dataset.position_phrase(5, 5, 128) == "at the top left"
    assert dataset.position_phrase(64, 64, 128) == "in the middle"
    assert dataset.position_phrase(120, 100, 128) == "at the bottom right"
    assert dataset.position_phrase(10, 64, 128) == "on the left"


def test_grammar_includes_the_plain_form_with_correct_articles():
    config = dataclasses.replace(CONFIG, two_shape_probability=0.0, size_word_probability=0.0,
                                 position_word_probability=0.0)
    texts = dataset.captions(scenes_for(4, count=300, config=config), config, random.Random(4))
    assert all(CAPTION_PATTERN.match(t) and len(t.split()) == 7 for t in texts)
    assert any(t.startswith("an orange ") for t in texts) and not any("a orange" in t for t in texts)


def test_colour_words_are_mislabelled_at_the_configured_rate():
    config = dataclasses.replace(CONFIG, two_shape_probability=0.0, size_word_probability=0.0,
                                 position_word_probability=0.0, mislabelled_colour_probability=0.2)
    scenes = scenes_for(6, count=1000, config=config)
    texts = dataset.captions(scenes, config, random.Random(6))
    wrong = 0
    for scene, text in zip(dataset.scene_records(scenes), texts):
        match = CAPTION_PATTERN.match(text)
        assert match and match["shape"] == dataset.SHAPES[scene.shapes[0]], text  # shapes are never mislabelled
        wrong += match["colour"] != dataset.COLOUR_NAMES[scene.colours[0]]
        wrong += match["background"] != dataset.COLOUR_NAMES[scene.background]
    assert 0.17 < wrong / 2000 < 0.23


def test_images_are_antialiased_rgb_in_range():
    images = dataset.render(scenes_for(5, count=8), 64)
    assert images.shape == (8, 3, 64, 64) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    # Edge pixels blend shape and background: more distinct values than the three flat colours.
    assert len(torch.unique(images[0, 0])) > 3


def test_same_seed_same_scenes_images_and_captions():
    first, second = scenes_for(7), scenes_for(7)
    assert torch.equal(dataset.render(first, 32), dataset.render(second, 32))
    assert dataset.captions(first, CONFIG, random.Random(7)) == dataset.captions(second, CONFIG, random.Random(7))
    assert not torch.equal(dataset.render(scenes_for(8), 32), dataset.render(first, 32))


def test_default_networks_fit_the_file_budget_and_the_yaml():
    config = TrainConfig()
    check_channels(config)
    networks = build_networks(config)
    total = sum(parameter_count(m) for m in (networks.vae, networks.text_encoder, networks.unet))
    assert 2 * total <= config.max_file_bytes
    assert networks.unet.config.cross_attention_dim == config.text.hidden_size


def test_smoke_run_exports_a_loadable_sd1_checkpoint(tmp_path):
    from tools.embedded_model.pipeline import run

    config = smoke_config()
    result = run(config, tmp_path, echo=lambda line: None)

    state = load_file(str(result.checkpoint))
    for prefix in REQUIRED_PREFIXES:
        assert any(key.startswith(prefix) for key in state), prefix
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert "model.diffusion_model.input_blocks.0.0.weight" in state
    assert "first_stage_model.decoder.conv_out.weight" in state
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in state
    assert state["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"].shape == (
        49408, config.text.hidden_size)

    ldm = yaml.safe_load(result.yaml.read_text())["model"]["params"]
    assert ldm["scale_factor"] == pytest.approx(result.record["scale_factor"])
    assert ldm["unet_config"]["params"]["context_dim"] == config.text.hidden_size
    assert ldm["cond_stage_config"]["params"]["width"] == config.text.hidden_size
    assert ldm["first_stage_config"]["params"]["ddconfig"]["resolution"] == config.data.image_size

    # The application's own loader reads it as an SD 1.x model with the trained sizes.
    from modules.models.checkpoints import CheckpointInfo
    from modules.models.devices import DevicePolicy
    from modules.models.sd_loader import load_checkpoint

    model = load_checkpoint(CheckpointInfo(result.checkpoint, result.checkpoint.stem, None), DevicePolicy.cpu())
    assert (model.family, model.prediction) == ("sd1", "epsilon")
    assert model.native_size == config.data.image_size
    assert model.scale_factor == pytest.approx(result.record["scale_factor"])
    assert torch.equal(model.unet.conv_in.weight.half(), state["model.diffusion_model.input_blocks.0.0.weight"])

    record = result.record
    assert record["stages"]["vae"]["steps"] == config.vae.max_steps
    assert record["stages"]["unet"]["steps"] == config.unet.max_steps
    assert all(p["loss"] is not None for p in record["stages"]["unet"]["curve"])
    assert result.log_json.exists() and result.log_markdown.exists() and result.samples.stat().st_size > 0
