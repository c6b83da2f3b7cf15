"""Midjourney-style trailing parameters and their mapping onto a txt2img request."""

import pytest

from modules.pipeline.prompts.midjourney_params import (MidjourneyParamError, MidjourneyParams, cfg_for_stylize,
                                               parse_midjourney_params, size_for_aspect, to_request_fields)


@pytest.mark.parametrize("ratio,native,expected", [
    ((16, 9), 512, (680, 384)),
    ((9, 16), 512, (384, 680)),
    ((1, 1), 512, (512, 512)),
    ((16, 9), 1024, (1368, 768)),
    ((3, 2), 768, (944, 624)),
    ((4, 1), 1024, (2048, 512)),  # the long side is capped; the ratio stays
])
def test_size_for_aspect(ratio, native, expected):
    width, height = size_for_aspect(*ratio, native)
    assert (width, height) == expected
    assert width % 8 == 0 and height % 8 == 0


@pytest.mark.parametrize("prompt,clean,params", [
    ("a cat", "a cat", MidjourneyParams()),
    ("a cat --ar 16:9", "a cat", MidjourneyParams(width=680, height=384)),
    ("a cat --aspect 2:3", "a cat", MidjourneyParams(width=416, height=624)),
    ("a cat \u2014ar 16:9 \u2014seed 42", "a cat", MidjourneyParams(width=680, height=384, seed=42)),
    ("a cat --w 640 --h 513", "a cat", MidjourneyParams(width=640, height=512)),
    ("a cat --ar 2:1 --w 1024", "a cat", MidjourneyParams(width=1024, height=512)),
    ("a cat --h 512 --ar 2:1", "a cat", MidjourneyParams(width=1024, height=512)),
    ("a cat --no text, frame ,, watermark", "a cat", MidjourneyParams(no=("text", "frame", "watermark"))),
    ("a cat --seed 4294967295 --chaos 25 --stop 80 --q .5 --s 250", "a cat",
     MidjourneyParams(seed=4294967295, chaos=25, stop=80, quality=0.5, stylize=250)),
    ("a cat --c 5 --quality 2 --stylize 0", "a cat", MidjourneyParams(chaos=5, quality=2.0, stylize=0)),
    ("x--y and a--b", "x--y and a--b", MidjourneyParams()),
    ("a dog \u2014 running -- fast", "a dog \u2014 running -- fast", MidjourneyParams()),
    ("--seed 5", "", MidjourneyParams(seed=5)),
    ("a cat   --seed 5   ", "a cat", MidjourneyParams(seed=5)),
])
def test_parse(prompt, clean, params):
    assert parse_midjourney_params(prompt, 512) == (clean, params)


@pytest.mark.parametrize("prompt,message", [
    ("a --ar 16x9", "--ar 16x9: expected W:H with whole numbers"),
    ("a --ar 16:9.5", "--ar 16:9.5: expected W:H with whole numbers"),
    ("a --ar 0:1", "--ar 0:1: both sides"),
    ("a --ar 1:100", "too extreme"),
    ("a --aspect", "--aspect: expected W:H"),
    ("a --foo 3", "--foo: unknown parameter"),
    ("a --seed -1", "--seed -1: expected a whole number"),
    ("a --seed 4294967296", "--seed 4294967296: must be from 0 to 4294967295"),
    ("a --w 32", "--w 32: must be from 64 to 2048"),
    ("a --h 4096", "--h 4096: must be from 64 to 2048"),
    ("a --w wide", "--w wide: expected a whole number"),
    ("a --chaos 101", "--chaos 101: must be from 0 to 100"),
    ("a --stop 5", "--stop 5: must be from 10 to 100"),
    ("a --q 3", "--q 3: expected one of .25, .5, 1, 2"),
    ("a --s 2000", "--s 2000: must be from 0 to 1000"),
    ("a --no", "--no: expected what to leave out"),
    ("a --seed 1 --seed 2", "--seed: given twice"),
    ("a --ar 1:1 --w 512 --h 512", "--ar: cannot be combined"),
    ("a --ar 16:9 of a cat", "--ar 16:9 of a cat: expected W:H"),
])
def test_errors_name_the_parameter(prompt, message):
    with pytest.raises(MidjourneyParamError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_midjourney_params(prompt, 512)


def test_stylize_mapping_is_monotonic_with_default_seven():
    assert cfg_for_stylize(100) == 7.0
    assert cfg_for_stylize(0) == 4.0
    assert cfg_for_stylize(1000) == 10.0
    values = [cfg_for_stylize(s) for s in range(0, 1001, 10)]
    assert values == sorted(values)
    assert all(value * 2 == int(value * 2) for value in values)


def test_request_fields():
    _, params = parse_midjourney_params(
        "a cat --ar 16:9 --seed 7 --no text, frame --chaos 30 --stop 50 --q .5 --s 100", 512)
    assert to_request_fields(params, 30, negative_prompt="blurry") == {
        "width": 680, "height": 384, "seed": 7, "negative_prompt": "blurry, text, frame", "steps": 15,
        "subseed": 8, "subseed_strength": 0.3, "cfg_scale": 7.0, "stop_at_fraction": 0.5}


def test_request_fields_only_for_given_parameters():
    assert to_request_fields(MidjourneyParams(), 20) == {}
    assert to_request_fields(MidjourneyParams(no=("x",)), 20) == {"negative_prompt": "x"}
    assert to_request_fields(MidjourneyParams(chaos=100), 20) == {"subseed": -1, "subseed_strength": 1.0}
    assert to_request_fields(MidjourneyParams(seed=4294967295, chaos=0), 20)["subseed"] == 0
    assert to_request_fields(MidjourneyParams(quality=0.25), 2) == {"steps": 1}
    assert to_request_fields(MidjourneyParams(quality=2.0), 20) == {"steps": 40}
