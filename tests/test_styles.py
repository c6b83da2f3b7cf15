"""styles.csv in A1111's format: loading, atomic saving, applying and extracting styles."""

import pytest

from modules.io.styles import (PromptStyle, StyleNameError, UnknownStyleError, apply_styles,
                            extract_style_text_from_prompt, extract_styles_from_prompt, load_styles, merge_prompts,
                            save_styles, validate_style_name)

STYLES = [
    PromptStyle("Cinematic", "cinematic still of {prompt}, film grain", "cartoon, drawing"),
    PromptStyle("Sharp", "highly detailed, sharp focus", "blurry"),
    PromptStyle("Négatif only", "", "lowres, \"bad\" hands"),
    PromptStyle("Quoted, \"comma\" name", "multi\nline", ""),
]


def test_round_trip(tmp_path):
    path = tmp_path / "styles.csv"
    save_styles(path, STYLES)
    assert path.read_bytes().startswith(b"\xef\xbb\xbfname,prompt,negative_prompt\r\n")
    assert list(load_styles(path).values()) == STYLES


def test_save_keeps_backup_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "styles.csv"
    save_styles(path, STYLES[:1])
    first = path.read_bytes()
    save_styles(path, STYLES[1:2])
    assert (tmp_path / "styles.csv.bak").read_bytes() == first
    assert list(load_styles(path)) == ["Sharp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["styles.csv", "styles.csv.bak"]


def test_failed_save_leaves_file_untouched(tmp_path):
    path = tmp_path / "styles.csv"
    save_styles(path, STYLES[:1])
    before = path.read_bytes()
    with pytest.raises(StyleNameError):
        save_styles(path, [PromptStyle("../evil", "x", "")])
    assert path.read_bytes() == before


def test_load_a1111_files(tmp_path):
    path = tmp_path / "styles.csv"
    # the old two-column format, an A1111-written header with BOM, a comment row, spaces after commas
    path.write_text("name,text\nold style,\"masterpiece, best quality\"\n", encoding="utf-8")
    assert load_styles(path) == {"old style": PromptStyle("old style", "masterpiece, best quality", "")}
    path.write_text('name,prompt,negative_prompt\n#comment,x,y\nA, "a, b", c\n,nameless,\nA,again,\n',
                    encoding="utf-8-sig")
    assert load_styles(path) == {"A": PromptStyle("A", "again", "")}
    assert load_styles(tmp_path / "missing.csv") == {}


@pytest.mark.parametrize("name", ["Cinematic", "Photo (35mm) v2", "日本画 風", "a-b_c.d, e!", "hash#inside"])
def test_valid_style_names(name):
    assert validate_style_name(name) == name


@pytest.mark.parametrize("name", ["", " lead", "trail ", "a/b", "a\\b", "tab\there", "new\nline", "nul\x00",
                                  "#comment", "x" * 201, "bell\x07"])
def test_invalid_style_names(name):
    with pytest.raises(StyleNameError):
        validate_style_name(name)


@pytest.mark.parametrize("style,prompt,expected", [
    ("cinematic still of {prompt}, film grain", "a cat", "cinematic still of a cat, film grain"),
    ("{prompt} {prompt}", "x", "x x"),
    ("detailed", "a cat", "a cat, detailed"),
    ("  detailed ", " a cat  ", "a cat, detailed"),
    ("detailed", "", "detailed"),
    ("detailed", "   ", "detailed"),
    ("", "a cat", "a cat"),
    ("{prompt}, detailed", "", ", detailed"),
])
def test_merge_prompts_like_a1111(style, prompt, expected):
    assert merge_prompts(style, prompt) == expected


def test_apply_styles_in_order():
    styles = {style.name: style for style in STYLES}
    prompt, negative = apply_styles("a cat", "ugly", ["Cinematic", "Sharp"], styles)
    assert prompt == "cinematic still of a cat, film grain, highly detailed, sharp focus"
    assert negative == "ugly, cartoon, drawing, blurry"
    assert apply_styles("a", "", [], styles) == ("a", "")
    with pytest.raises(UnknownStyleError):
        apply_styles("a", "", ["Nope"], styles)


@pytest.mark.parametrize("style,prompt,expected", [
    ("masterpiece", "1girl, art by greg, masterpiece", (True, "1girl, art by greg")),
    ("masterpiece, {prompt}", "masterpiece, 1girl, art by greg", (True, "1girl, art by greg")),
    ("masterpiece, {prompt}", "exquisite, 1girl, art by greg", (False, "exquisite, 1girl, art by greg")),
    ("a {prompt} a", "a a", (False, "a a")),  # left and right would overlap
])
def test_extract_style_text_from_prompt(style, prompt, expected):
    assert extract_style_text_from_prompt(style, prompt) == expected


def test_extract_styles_reverses_apply():
    styles = {style.name: style for style in STYLES}
    prompt, negative = apply_styles("a cat", "ugly", ["Cinematic", "Sharp"], styles)
    assert extract_styles_from_prompt(prompt, negative, styles) == (["Cinematic", "Sharp"], "a cat", "ugly")
    assert extract_styles_from_prompt("a dog", "ugly", styles) == ([], "a dog", "ugly")
