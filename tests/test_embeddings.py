"""Textual inversion: embedding files of AUTOMATIC1111's, kohya's, diffusers' and SDXL's layouts are found by
name, read without running pickled code, checked against the model's encoder widths, and their vectors
replace the trigger word's tokens in the encoder's input."""

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from modules.models.checkpoints import CheckpointInfo
from modules.models.devices import DevicePolicy
from modules.models.embeddings import (Embedding, EmbeddingDatabase, discover_embedding_files, encoder_widths,
                                injected_vectors, load_embeddings, ti_hashes)
from modules.models.sd_loader import load_checkpoint
from modules.pipeline.prompts.text_encoding import Vocabulary, encode_model_texts, text_model, tokenize_prompt
from tiny_models import save_checkpoint, tiny_ldm_yaml, tiny_original_state_dict

TRIGGER = "zqxembed"  # several BPE tokens, none of them a real word
BOS, EOS, CAT, DOG, RED, COMMA = 49406, 49407, 2368, 1929, 736, 267


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


def _token_vectors(encoder, *ids):
    """Rows of the encoder's own token embedding: an embedding of these equals writing the words."""
    return text_model(encoder.model).embeddings.token_embedding.weight[list(ids)].detach().clone()


def _save_a1111_pt(path, vectors, name="something else"):
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.nn.Parameter(vectors)},
                "name": name, "step": 1500, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "model"}, path)
    return path


def test_a1111_pt_embedding_replaces_the_trigger_tokens(tiny, tmp_path):
    model = tiny("sd1")
    (encoder,) = model.text_encoders
    path = _save_a1111_pt(tmp_path / f"{TRIGGER}.pt", _token_vectors(encoder, RED, DOG))
    database = load_embeddings(tmp_path, model)
    assert list(database.loaded) == [TRIGGER] and database.skipped == {}
    embedding = database.loaded[TRIGGER]
    assert (embedding.vector_count, embedding.step, embedding.widths) == (2, 1500, 32)

    with_embedding = encode_model_texts(model, [f"a photo of {TRIGGER}"], embeddings=database)
    without = encode_model_texts(model, [f"a photo of {TRIGGER}"])
    as_words = encode_model_texts(model, ["a photo of red dog"])
    torch.testing.assert_close(with_embedding.context, as_words.context, rtol=0, atol=0)
    # The text encoder is causal: rows before the trigger stay, rows from it on change.
    assert torch.equal(with_embedding.context[:, :4], without.context[:, :4])
    assert not torch.allclose(with_embedding.context[:, 4], without.context[:, 4])

    assert with_embedding.used_embeddings == {TRIGGER: embedding}
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert embedding.shorthash == sha[:12]
    assert ti_hashes(with_embedding.used_embeddings) == f"{TRIGGER}: {sha[:12]}"
    assert without.used_embeddings == {}


def test_weight_applies_to_embedding_vectors(tiny, tmp_path):
    model = tiny("sd1")
    _save_a1111_pt(tmp_path / f"{TRIGGER}.pt", _token_vectors(model.text_encoders[0], RED, DOG))
    database = load_embeddings(tmp_path, model)
    vocab = Vocabulary.of(model.text_encoders[0])
    (chunk,) = tokenize_prompt(f"a ({TRIGGER}:1.4) cat", vocab, embeddings=database)[0]
    assert chunk.tokens[:6] == [BOS, 320, 0, 0, CAT, EOS]
    assert chunk.multipliers[:6] == pytest.approx([1.0, 1.0, 1.4, 1.4, 1.0, 1.0])
    assert [(fix.position, fix.embedding.name) for fix in chunk.fixes] == [(2, TRIGGER)]


@pytest.mark.parametrize("family", ["sd2_v", "sdxl"])
def test_safetensors_embeddings_for_sd2_and_sdxl(tiny, tmp_path, family):
    model = tiny(family)
    if family == "sdxl":
        clip_l, open_clip = model.text_encoders
        tensors = {"clip_l": _token_vectors(clip_l, DOG), "clip_g": _token_vectors(open_clip, DOG)}
    else:
        tensors = {"emb_params": _token_vectors(model.text_encoders[0], DOG)}  # kohya's layout
    save_file(tensors, str(tmp_path / f"{TRIGGER}.safetensors"))
    database = load_embeddings(tmp_path, model)
    assert list(database.loaded) == [TRIGGER], database.skipped
    with_embedding = encode_model_texts(model, [f"a photo of {TRIGGER}"], embeddings=database)
    as_word = encode_model_texts(model, ["a photo of dog"])
    torch.testing.assert_close(with_embedding.context, as_word.context, rtol=0, atol=0)
    if family == "sdxl":
        torch.testing.assert_close(with_embedding.pooled, as_word.pooled, rtol=0, atol=0)


def test_embeddings_of_the_wrong_width_are_skipped_with_a_note(tiny, tmp_path):
    sd1, sdxl = tiny("sd1"), tiny("sdxl")
    save_file({"emb_params": torch.randn(2, 999)}, str(tmp_path / "wide.safetensors"))
    save_file({"clip_l": torch.randn(1, 32), "clip_g": torch.randn(1, 64)}, str(tmp_path / "xl.safetensors"))
    _save_a1111_pt(tmp_path / "sd1.pt", torch.randn(3, 32))

    for_sd1 = load_embeddings(tmp_path, sd1)
    assert list(for_sd1.loaded) == ["sd1"]
    assert set(for_sd1.skipped) == {"wide", "xl"}
    assert "999" in for_sd1.skipped["wide"] and "{'clip_l': 32}" in for_sd1.skipped["wide"]

    for_sdxl = load_embeddings(tmp_path, sdxl)
    assert encoder_widths(sdxl) == {"clip_l": 32, "clip_g": 64}
    assert list(for_sdxl.loaded) == ["xl"]
    assert set(for_sdxl.skipped) == {"wide", "sd1"}

    # A skipped embedding's trigger is plain text.
    assert encode_model_texts(sd1, ["a wide cat"], embeddings=for_sd1).used_embeddings == {}


def test_pickles_that_want_code_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            import os
            return os.makedirs, (str(marker),)

    torch.save({"string_to_param": {"*": Payload()}}, tmp_path / "evil.pt")
    database = EmbeddingDatabase.load(tmp_path, {"clip_l": 32}, lambda name: [1, 2])
    assert not marker.exists()
    assert database.loaded == {}
    assert "refused" in database.skipped["evil"]


def test_file_layouts_and_discovery(tmp_path):
    (tmp_path / "sub").mkdir()
    torch.save({"<cat-toy>": torch.randn(32)}, tmp_path / "sub" / "Toy.BIN")  # diffusers' learned_embeds.bin
    _save_a1111_pt(tmp_path / "multi.pt", torch.randn(4, 32))
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an embedding")
    (tmp_path / "renamed.pt").write_bytes(b"garbage that is no model file")

    assert [p.name for p in discover_embedding_files(tmp_path)] == ["multi.pt", "renamed.pt", "Toy.BIN"]
    database = EmbeddingDatabase.load(tmp_path, {"clip_l": 32}, lambda name: [len(name)])
    assert sorted(database.loaded) == ["Toy", "multi"]
    assert database.loaded["Toy"].vector_count == 1 and database.loaded["multi"].vector_count == 4
    assert list(database.skipped) == ["renamed"]
    assert discover_embedding_files(tmp_path / "missing") == []


def _embedding(name, count, width=32):
    return Embedding(name=name, vectors=torch.randn(count, width), vector_count=count)


def test_longest_trigger_wins():
    database = EmbeddingDatabase()
    short, long = _embedding("short", 1), _embedding("long", 1)
    database.register(short, [5, 6])
    database.register(long, [5, 6, 7])
    assert database.find_at([9, 5, 6, 7], 1) == (long, 3)
    assert database.find_at([9, 5, 6, 8], 1) == (short, 2)
    assert database.find_at([9, 5, 8], 1) == (None, 0)


def test_embedding_vectors_never_straddle_chunks(tiny):
    vocab = Vocabulary.of(tiny("sd1").text_encoders[0])
    database = EmbeddingDatabase()
    trigger_ids = vocab.ids([TRIGGER])[0]
    database.register(_embedding(TRIGGER, 3), trigger_ids)

    chunks, _ = tokenize_prompt("cat " * 73 + TRIGGER, vocab, embeddings=database)
    assert chunks[0].tokens == [BOS] + [CAT] * 73 + [EOS] * 3 and chunks[0].fixes == []
    assert chunks[1].tokens[:5] == [BOS, 0, 0, 0, EOS]
    assert [f.position for f in chunks[1].fixes] == [1]

    # Text after a comma moves to the next chunk together with its embedding.
    chunks, _ = tokenize_prompt("cat " * 70 + ", " + TRIGGER + " dog dog", vocab, embeddings=database)
    assert chunks[0].tokens == [BOS] + [CAT] * 70 + [COMMA] + [EOS] * 5 and chunks[0].fixes == []
    assert chunks[1].tokens[:7] == [BOS, 0, 0, 0, DOG, DOG, EOS]
    assert [f.position for f in chunks[1].fixes] == [1]


def test_injection_hook_is_removed(tiny):
    encoder = tiny("sd1").text_encoders[0]
    module = text_model(encoder.model).embeddings.token_embedding
    ids = torch.tensor([[BOS, CAT, EOS]])
    before = module(ids)
    with injected_vectors(module, [[(1, torch.ones(1, 32))]]):
        inside = module(ids)
    assert torch.equal(inside[0, 1], torch.ones(32)) and torch.equal(inside[0, [0, 2]], before[0, [0, 2]])
    assert len(module._forward_hooks) == 0
    assert torch.equal(module(ids), before)
