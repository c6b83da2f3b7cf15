"""The prompt language on the text side, as AUTOMATIC1111 encodes it: emphasis weights, BREAK, long prompts
in 77-token chunks with comma backtracking, clip skip, SDXL's two encoders and pooled output; on real
tiny models of each family."""


import pytest
import torch
from transformers import CLIPTokenizer

from modules.models.checkpoints import CheckpointInfo
from modules.models.devices import DevicePolicy
from modules.io.paths import CONFIGS_DIR
from modules.models.sd_loader import load_checkpoint
from modules.models.sd_model import TextEncoder
from modules.pipeline.prompts.conditioning import build_prompt_conditioning, conditioning_dict
from modules.pipeline.prompts.text_encoding import (CHUNK_LENGTH, Vocabulary, chunk_input_ids, count_tokens,
                                                    emphasis_infotext, encode_model_texts, pad_to_same_length,
                                                    parse_prompt_attention, text_model, tokenize_prompt)
from tiny_models import save_checkpoint, tiny_ldm_yaml, tiny_original_state_dict

BOS, EOS, COMMA, CAT, DOG, A = 49406, 49407, 267, 2368, 1929, 320
PAREN = 263  # "(" as a token of its own


# ------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("text, expected", [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
      [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
    ("[unbalanced", [["unbalanced", 0.9090909090909091]]),
    ("[less] ((more))", [["less", 0.9090909090909091], [" ", 1.0], ["more", 1.2100000000000002]]),
    ("((a:2))", [["a", 2.2]]),
    ("a:b (c:-0.5)", [["a:b ", 1.0], ["c", -0.5]]),
    ("", [["", 1.0]]),
    ("a BREAK b", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
    ("a BREAKb break c", [["a BREAKb break c", 1.0]]),
    ("(x BREAK y)", [["x", 1.1], ["BREAK", -1.1], ["y", 1.1]]),
])
def test_parse_prompt_attention_matches_upstream(text, expected):
    assert parse_prompt_attention(text) == expected


def test_parse_house_example_weights():
    runs = dict((text, weight) for text, weight in parse_prompt_attention(
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).") if text.strip())
    assert runs["house"] == pytest.approx(1.3 * 1.1 * 1.1)
    assert runs["on"] == pytest.approx(1.0)  # [on] sits inside the one "(" that is closed at the end
    assert runs["hill"] == pytest.approx(0.55)
    assert runs["sky"] == pytest.approx(1.1 ** 4)


# ---------------------------------------------------------------------------------------- chunking


@pytest.fixture(scope="module")
def clip_vocab():
    tokenizer = CLIPTokenizer.from_pretrained(str(CONFIGS_DIR / "tokenizers" / "clip"), local_files_only=True)
    return Vocabulary.of(TextEncoder("clip_l", torch.nn.Identity(), tokenizer))


@pytest.fixture(scope="module")
def open_clip_vocab():
    tokenizer = CLIPTokenizer.from_pretrained(str(CONFIGS_DIR / "tokenizers" / "open_clip"), local_files_only=True)
    return Vocabulary.of(TextEncoder("open_clip", torch.nn.Identity(), tokenizer))


def test_empty_prompt_is_one_padded_chunk(clip_vocab):
    chunks, used = tokenize_prompt("", clip_vocab)
    assert used == 0
    assert len(chunks) == 1
    assert chunks[0].tokens == [BOS] + [EOS] * 76
    assert chunks[0].multipliers == [1.0] * 77


def test_short_prompt_tokens_and_weights(clip_vocab):
    chunks, used = tokenize_prompt("a (cat:1.5) [dog]", clip_vocab)
    (chunk,) = chunks
    assert used == 3
    assert chunk.tokens[:5] == [BOS, A, CAT, DOG, EOS] and chunk.tokens[5:] == [EOS] * 72
    assert chunk.multipliers[:5] == pytest.approx([1.0, 1.0, 1.5, 1 / 1.1, 1.0])
    assert chunk.multipliers[5:] == [1.0] * 72


def test_long_prompt_makes_chunks_of_77(clip_vocab):
    chunks, used = tokenize_prompt("cat " * 100, clip_vocab)
    assert used == 100
    assert [len(c.tokens) for c in chunks] == [77, 77]
    assert chunks[0].tokens == [BOS] + [CAT] * 75 + [EOS]
    assert chunks[1].tokens == [BOS] + [CAT] * 25 + [EOS] * 51


def test_exactly_75_tokens_is_one_chunk(clip_vocab):
    chunks, used = tokenize_prompt("cat " * 75, clip_vocab)
    assert (len(chunks), used) == (1, 75)


def test_break_ends_the_chunk(clip_vocab):
    chunks, used = tokenize_prompt("a cat BREAK a dog", clip_vocab)
    assert len(chunks) == 2
    assert chunks[0].tokens[:4] == [BOS, A, CAT, EOS]
    assert chunks[1].tokens[:4] == [BOS, A, DOG, EOS]
    assert used == 75 + 2  # a chunk ended by BREAK counts in full


def test_break_inside_brackets_still_breaks(clip_vocab):
    # Upstream's parser gives such a BREAK run a weight of -1.1 and then encodes the word "break"; it is
    # taken as the chunk break it was meant to be.
    chunks, _ = tokenize_prompt("(a cat BREAK a dog)", clip_vocab)
    assert len(chunks) == 2
    assert chunks[1].tokens[:4] == [BOS, A, DOG, EOS]
    assert chunks[1].multipliers[:4] == pytest.approx([1.0, 1.1, 1.1, 1.0])


def test_break_is_literal_text_without_parsing(clip_vocab):
    chunks, _ = tokenize_prompt("a cat BREAK (dog:1.5)", clip_vocab, emphasis="None")
    assert len(chunks) == 1
    assert PAREN in chunks[0].tokens
    assert set(chunks[0].multipliers) == {1.0}


def test_comma_backtrack_moves_text_after_the_last_comma(clip_vocab):
    prompt = "cat " * 70 + ", " + "dog " * 10
    chunks, used = tokenize_prompt(prompt, clip_vocab)
    assert chunks[0].tokens == [BOS] + [CAT] * 70 + [COMMA] + [EOS] * 5
    assert chunks[1].tokens[:12] == [BOS] + [DOG] * 10 + [EOS]
    assert used == 75 + 10

    unmoved, _ = tokenize_prompt(prompt, clip_vocab, comma_backtrack=0)
    assert unmoved[0].tokens == [BOS] + [CAT] * 70 + [COMMA] + [DOG] * 4 + [EOS]
    assert unmoved[1].tokens[:8] == [BOS] + [DOG] * 6 + [EOS]


def test_comma_too_far_back_does_not_move_text(clip_vocab):
    chunks, _ = tokenize_prompt("cat " * 50 + ", " + "dog " * 30, clip_vocab)
    assert chunks[0].tokens == [BOS] + [CAT] * 50 + [COMMA] + [DOG] * 24 + [EOS]


def test_open_clip_pads_with_zero_after_the_first_end_token(clip_vocab, open_clip_vocab):
    (chunk,) = tokenize_prompt("a cat", open_clip_vocab)[0]
    assert chunk_input_ids([chunk], open_clip_vocab)[0].tolist() == [BOS, A, CAT, EOS] + [0] * 73
    (chunk,) = tokenize_prompt("a cat", clip_vocab)[0]
    assert chunk_input_ids([chunk], clip_vocab)[0].tolist() == [BOS, A, CAT] + [EOS] * 74


# ------------------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = {}

    def load(family: str):
        if family not in cache:
            folder = tmp_path_factory.mktemp(family)
            path = save_checkpoint(tiny_original_state_dict(family), folder / f"{family}.safetensors")
            (folder / f"{family}.yaml").write_text(tiny_ldm_yaml(family))
            cache[family] = load_checkpoint(CheckpointInfo(path, path.name, None), DevicePolicy.cpu())
        return cache[family]
    return load


FAMILY_WIDTH = {"sd1": 32, "sd2_v": 64, "sdxl": 32 + 64}


def _ids(*tokens, pad=EOS):
    return torch.tensor([[BOS, *tokens, EOS] + [pad] * (75 - len(tokens))])


def encode_prompt(model, prompt: str, clip_skip: int = 1) -> dict[str, torch.Tensor]:
    """The UNet's conditioning of one prompt for a 64x64 image."""
    return conditioning_dict(model, encode_model_texts(model, [prompt], clip_skip), 1, 64, 64)


def _hidden_states(encoder, ids):
    with torch.no_grad():
        return encoder.model(input_ids=ids, output_hidden_states=True)


@pytest.mark.parametrize("family", ["sd1", "sd2_v", "sdxl"])
def test_long_prompt_context_is_77_per_chunk(tiny, family):
    model = tiny(family)
    short = encode_prompt(model, "a cat")
    long = encode_prompt(model, "cat, " * 60)  # 120 tokens
    assert short["context"].shape == (1, 77, FAMILY_WIDTH[family])
    assert long["context"].shape == (1, 154, FAMILY_WIDTH[family])
    if family == "sdxl":
        assert long["pooled"].shape == (1, 40) and long["time_ids"].shape == (1, 6)
    assert count_tokens(model, "a cat") == (2, 75)
    assert count_tokens(model, "cat, " * 40) == (80, 150)


@pytest.mark.parametrize("family", ["sd1", "sd2_v", "sdxl"])
def test_break_encodes_each_chunk_on_its_own(tiny, family):
    model = tiny(family)
    joined = encode_model_texts(model, ["a red cat BREAK a blue dog"])
    first = encode_model_texts(model, ["a red cat"])
    second = encode_model_texts(model, ["a blue dog"])
    assert joined.context.shape[1] == 154
    torch.testing.assert_close(joined.context, torch.cat([first.context, second.context], dim=1), rtol=0, atol=0)
    if family == "sdxl":  # SDXL's pooled output comes from the first chunk
        torch.testing.assert_close(joined.pooled, first.pooled, rtol=0, atol=0)
        assert not torch.allclose(joined.pooled, second.pooled)


def test_batch_prompts_of_different_lengths_pad_with_empty_chunks(tiny):
    model = tiny("sd1")
    both = encode_model_texts(model, ["a cat", "dog " * 80])
    assert both.context.shape == (2, 154, 32)
    empty = encode_model_texts(model, [""]).context
    torch.testing.assert_close(both.context[0, :77], encode_model_texts(model, ["a cat"]).context[0])
    torch.testing.assert_close(both.context[0, 77:], empty[0])


@pytest.mark.parametrize("family", ["sd1", "sd2_v", "sdxl"])
def test_no_norm_scales_exactly_the_weighted_rows(tiny, family):
    model = tiny(family)
    plain = encode_model_texts(model, ["a (cat:1.5) sits"], emphasis="Ignore").context
    weighted = encode_model_texts(model, ["a (cat:1.5) sits"], emphasis="No norm").context
    cat_row = 2  # start token, "a", "cat"
    assert torch.equal(weighted[0, cat_row], plain[0, cat_row] * 1.5)
    others = [i for i in range(77) if i != cat_row]
    assert torch.equal(weighted[0, others], plain[0, others])


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_original_emphasis_restores_the_mean(tiny, family):
    model = tiny(family)
    prompt = ["a (cat:1.5) [sits] on a ((mat))"]
    plain = encode_model_texts(model, prompt, emphasis="Ignore").context
    no_norm = encode_model_texts(model, prompt, emphasis="No norm").context
    original = encode_model_texts(model, prompt, emphasis="Original").context
    assert not torch.allclose(original, plain) and not torch.allclose(original, no_norm)
    if family == "sdxl":  # each encoder restores its own mean
        widths = [(0, 32), (32, 96)]
    else:
        widths = [(0, 32)]
    for lo, hi in widths:
        p, n, o = plain[..., lo:hi], no_norm[..., lo:hi], original[..., lo:hi]
        torch.testing.assert_close(o, n * (p.mean() / n.mean()))
        torch.testing.assert_close(o.mean(), p.mean())


def test_ignore_equals_the_plain_prompt_and_none_keeps_brackets(tiny):
    model = tiny("sd1")
    ignored = encode_model_texts(model, ["a (cat:1.5) [sits]"], emphasis="Ignore").context
    plain = encode_model_texts(model, ["a cat sits"], emphasis="Original").context
    assert torch.equal(ignored, plain)
    literal = encode_model_texts(model, ["a (cat:1.5) [sits]"], emphasis="None").context
    assert not torch.allclose(literal, plain)
    (chunk,) = tokenize_prompt("a (cat:1.5)", Vocabulary.of(model.text_encoders[0]), emphasis="None")[0]
    assert chunk.tokens[:4] == [BOS, A, PAREN, CAT]


def test_emphasis_mode_is_checked_and_reported():
    assert emphasis_infotext(["a (cat)"], "No norm") == "No norm"
    assert emphasis_infotext(["a cat"], "No norm") is None
    assert emphasis_infotext(["a (cat)"], "Original") is None
    with pytest.raises(ValueError, match="emphasis"):
        tokenize_prompt("a", None, emphasis="Strong")


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_sd1_clip_skip_selects_the_layer(tiny, clip_skip):
    model = tiny("sd1")
    (encoder,) = model.text_encoders
    out = _hidden_states(encoder, _ids(A, CAT))
    expected = text_model(encoder.model).final_layer_norm(out.hidden_states[-clip_skip])
    context = encode_prompt(model, "a cat", clip_skip)["context"]
    torch.testing.assert_close(context, expected)


def test_sd2_uses_the_normed_penultimate_layer_with_zero_padding(tiny):
    model = tiny("sd2_v")
    (encoder,) = model.text_encoders
    out = _hidden_states(encoder, _ids(A, CAT, pad=0))
    inner = text_model(encoder.model)
    torch.testing.assert_close(encode_prompt(model, "a cat")["context"],
                               inner.final_layer_norm(out.hidden_states[-2]))
    torch.testing.assert_close(encode_prompt(model, "a cat", clip_skip=2)["context"],
                               inner.final_layer_norm(out.hidden_states[-3]))


def test_sdxl_joins_both_raw_penultimate_layers_and_pools_from_open_clip(tiny):
    model = tiny("sdxl")
    clip_l, open_clip = model.text_encoders
    out_l = _hidden_states(clip_l, _ids(A, CAT))
    out_g = _hidden_states(open_clip, _ids(A, CAT, pad=0))
    cond = encode_prompt(model, "a cat")
    torch.testing.assert_close(cond["context"], torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], -1))
    torch.testing.assert_close(cond["pooled"], out_g.text_embeds)


def test_sdxl_empty_negative_prompt_is_zeros(tiny):
    def negative(model, prompt, negative_prompt):
        _, uncond = build_prompt_conditioning(model, prompt, negative_prompt, 1, 64, 64).at_step(1)
        return uncond

    model = tiny("sdxl")
    zeros = negative(model, "x", "")
    assert not zeros["context"].any() and not zeros["pooled"].any()
    assert zeros["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]]
    assert encode_prompt(model, "")["context"].any()  # an empty positive prompt is encoded
    assert negative(model, "x", "x")["context"].any()
    assert negative(tiny("sd1"), "x", "")["context"].any()


def test_pad_to_same_length_appends_encoded_empty_chunks(tiny):
    model = tiny("sdxl")
    cond = encode_prompt(model, "cat " * 160)  # 3 chunks
    uncond = encode_prompt(model, "blurry")
    empty = encode_prompt(model, "")["context"]
    padded_cond, padded_uncond = pad_to_same_length(cond, uncond, empty)
    assert padded_cond["context"].shape == padded_uncond["context"].shape == (1, 231, 96)
    assert padded_cond["context"] is cond["context"]
    torch.testing.assert_close(padded_uncond["context"][:, :77], uncond["context"])
    torch.testing.assert_close(padded_uncond["context"][:, 77:154], empty)
    torch.testing.assert_close(padded_uncond["context"][:, 154:], empty)
    assert padded_uncond["pooled"] is uncond["pooled"]
    again_uncond, again_cond = pad_to_same_length(uncond, cond, empty)  # either side may be the shorter
    torch.testing.assert_close(again_uncond["context"], padded_uncond["context"])
    assert CHUNK_LENGTH == 75
