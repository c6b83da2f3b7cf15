"""Infotext: written in AUTOMATIC1111's format and parsed back as AUTOMATIC1111 parses it."""

import pytest

from modules.io.generation_request import Txt2ImgRequest
from modules.io.infotext import create_infotext, parse_generation_parameters, request_fields_from_infotext

REAL_A1111 = (
    "(beautiful landscape of a paradise island with mountains:1.2), cinematic film still, lush\n"
    "Negative prompt: (cinematic), anime,cartoon,graphic,text,painting\n"
    "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1535177732, Size: 512x512, "
    "Model hash: ec6a1ba636, Model: epicrealism_v10-inpainting, Denoising strength: 0.7, Conditional mask weight: 1, "
    "Hires upscale: 2, Hires steps: 25, Hires upscaler: R-ESRGAN 4x+, Version: v1.9.3"
)
REAL_WITH_QUOTES = (
    "masterpiece, 1girl\nNegative prompt: ng_deepnegative_v1_75t\n"
    'Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x768, Model hash: 1234567890, '
    'Model: AWPainting_v1.2, TI hashes: "ng_deepnegative_v1_75t: 54e7e4826d53", Pad conds: True, Version: v1.9.4'
)


def test_real_a1111_infotext_fields():
    p = parse_generation_parameters(REAL_A1111)
    assert p["Prompt"].startswith("(beautiful landscape") and p["Prompt"].endswith("lush")
    assert p["Negative prompt"] == "(cinematic), anime,cartoon,graphic,text,painting"
    assert (p["Steps"], p["Sampler"], p["Schedule type"], p["CFG scale"]) == ("25", "DPM++ 2M", "Karras", "7")
    assert (p["Seed"], p["Size-1"], p["Size-2"]) == ("1535177732", "512", "512")
    assert (p["Model hash"], p["Model"], p["Denoising strength"]) == ("ec6a1ba636", "epicrealism_v10-inpainting", "0.7")
    assert (p["Hires upscale"], p["Hires steps"], p["Hires upscaler"], p["Version"]) == \
        ("2", "25", "R-ESRGAN 4x+", "v1.9.3")
    # defaults for keys the text lacks
    assert (p["Clip skip"], p["RNG"], p["Hires sampler"], p["Mask mode"]) == \
        ("1", "GPU", "Use same sampler", "Inpaint masked")


def test_quoted_values_and_legacy_sampler_names():
    p = parse_generation_parameters(REAL_WITH_QUOTES)
    assert p["TI hashes"] == "ng_deepnegative_v1_75t: 54e7e4826d53"
    assert p["Pad conds"] == "True"
    legacy = parse_generation_parameters("a cat\nSteps: 30, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: 1, Size: 64x64")
    assert (legacy["Sampler"], legacy["Schedule type"]) == ("DPM++ 2M", "Karras")


def test_a_prompt_without_parameter_line():
    p = parse_generation_parameters("just a prompt\nover two lines")
    assert p["Prompt"] == "just a prompt\nover two lines" and p["Negative prompt"] == ""


@pytest.mark.parametrize("fields", [
    dict(prompt="a red circle", steps=20, sampler_name="Euler", cfg_scale=7.0, seed=1, width=512, height=512),
    dict(prompt="a, b: c\nsecond line", negative_prompt="ugly, blurry", steps=33, sampler_name="DPM++ 2M",
         scheduler="Karras", cfg_scale=6.5, seed=4294967295, width=768, height=512, clip_skip=2),
    dict(prompt="unicode ✓ äöü", steps=5, sampler_name="DPM++ SDE", scheduler="Exponential", seed=7, width=64,
         height=128, subseed=9, subseed_strength=0.25, randn_source="NV"),
])
def test_request_round_trip(fields):
    from modules.io.infotext import format_number

    request = Txt2ImgRequest(**fields)
    params = {"Steps": request.steps, "Sampler": request.sampler_name, "Schedule type": request.scheduler,
              "CFG scale": format_number(request.cfg_scale), "Seed": request.seed,
              "Size": f"{request.width}x{request.height}",
              "Variation seed": request.subseed if request.subseed_strength else None,
              "Variation seed strength": format_number(request.subseed_strength) if request.subseed_strength else None,
              "Clip skip": request.clip_skip if request.clip_skip > 1 else None, "RNG": request.randn_source}
    text = create_infotext(request.prompt, request.negative_prompt, params)
    back = Txt2ImgRequest(**request_fields_from_infotext(text))
    assert back.model_dump(exclude={"infotext"}) == request.model_dump(exclude={"infotext"})


def test_infotext_field_fills_unset_fields_only():
    request = Txt2ImgRequest(infotext=REAL_A1111, steps=10)
    assert request.steps == 10  # set explicitly: kept
    assert (request.sampler_name, request.scheduler, request.seed, request.width) == ("DPM++ 2M", "Karras", 1535177732, 512)
    assert request.prompt.startswith("(beautiful landscape")


def test_quoting_of_values_with_commas_colons_newlines():
    text = create_infotext("p", "", {"Steps": 1, "Lora hashes": "a: 1, b: 2", "Plain": "x"})
    assert text == 'p\nSteps: 1, Lora hashes: "a: 1, b: 2", Plain: x'
