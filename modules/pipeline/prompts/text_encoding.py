"""Prompt text -> text-encoder hidden states, as AUTOMATIC1111 does it (`prompt_parser.parse_prompt_attention`,
`sd_hijack_clip`, `sd_emphasis`).

1. Emphasis: `(a)` x1.1, `[a]` /1.1, `(a:1.5)` x1.5, nested brackets multiply; uppercase BREAK starts a chunk.
2. Chunks: the tokens are cut into chunks of 75, each encoded as [start] + 75 + [end] = 77 tokens. A chunk
   that fills up moves the text after its last comma (if within 20 tokens) to the next chunk; BREAK ends
   a chunk early; a textual-inversion embedding never straddles two chunks. Short chunks are padded with
   the end token; OpenCLIP encoders put their pad token (0) after the first end token.
3. Each chunk is encoded on its own, its rows scaled by the token weights (emphasis mode), and the chunks
   are joined along the token axis: (batch, 77 * chunks, width).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from modules.accel.runner import ModelRunner
from modules.models.embeddings import Embedding, EmbeddingDatabase, encoder_key, injected_vectors
from modules.models.sd_model import StableDiffusionModel, TextEncoder

CHUNK_LENGTH = 75  # tokens per chunk between the start and end tokens
COMMA_PADDING_BACKTRACK = 20  # AUTOMATIC1111's default for "comma_padding_backtrack"
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
DEFAULT_EMPHASIS = "Original"

# ------------------------------------------------------------------------------------------ emphasis parsing

_RE_ATTENTION = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_ROUND_MULTIPLIER = 1.1
_SQUARE_MULTIPLIER = 1 / 1.1
BREAK_RUN = ["BREAK", -1]


def parse_prompt_attention(text: str) -> list[list]:
    """[text, weight] runs of a prompt, AUTOMATIC1111's algorithm exactly (same float results).

    Unbalanced opening brackets are closed at the end; `\\(` etc. are literal; adjacent runs of equal
    weight merge; BREAK becomes its own ["BREAK", -1] run.
    """
    res: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for match in _RE_ATTENTION.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_brackets.append(len(res))
        elif piece == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif piece == ")" and round_brackets:
            multiply_range(round_brackets.pop(), _ROUND_MULTIPLIER)
        elif piece == "]" and square_brackets:
            multiply_range(square_brackets.pop(), _SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_RE_BREAK.split(piece)):
                if i > 0:
                    res.append(list(BREAK_RUN))
                res.append([part, 1.0])

    for pos in round_brackets:
        multiply_range(pos, _ROUND_MULTIPLIER)
    for pos in square_brackets:
        multiply_range(pos, _SQUARE_MULTIPLIER)

    if not res:
        res = [["", 1.0]]

    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


# ------------------------------------------------------------------------------------------------- chunking


@dataclass(frozen=True)
class ChunkFix:
    """Embedding vectors to place at `position` of the chunk's 77-token sequence (the start token is 0)."""

    position: int
    embedding: Embedding


@dataclass
class PromptChunk:
    tokens: list[int] = field(default_factory=list)  # 77 ids once finished
    multipliers: list[float] = field(default_factory=list)
    fixes: list[ChunkFix] = field(default_factory=list)


@dataclass(frozen=True)
class Vocabulary:
    """The token ids chunking needs, and the tokenizer that makes the rest."""

    tokenizer: object
    id_start: int
    id_end: int
    id_pad: int
    comma: int | None

    @classmethod
    def of(cls, encoder: TextEncoder) -> Vocabulary:
        tok = encoder.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        # One lookup, not get_vocab(): that copies the whole vocabulary, twice per image.
        comma = tok.convert_tokens_to_ids(",</w>")
        return cls(tok, tok.bos_token_id, tok.eos_token_id, pad, None if comma == tok.unk_token_id else comma)

    def ids(self, texts: list[str]) -> list[list[int]]:
        # verbose=False: prompts longer than 77 tokens are expected here; chunking handles them.
        encoded = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)
        return [list(ids) for ids in encoded.input_ids]

    def empty_chunk(self) -> PromptChunk:
        return PromptChunk([self.id_start] + [self.id_end] * (CHUNK_LENGTH + 1), [1.0] * (CHUNK_LENGTH + 2))


def _check_emphasis(emphasis: str) -> None:
    if emphasis not in EMPHASIS_MODES:
        raise ValueError(f"unknown emphasis mode {emphasis!r}; expected one of {EMPHASIS_MODES}")


def tokenize_prompt(text: str, vocab: Vocabulary, emphasis: str = DEFAULT_EMPHASIS,
                    embeddings: EmbeddingDatabase | None = None,
                    comma_backtrack: int = COMMA_PADDING_BACKTRACK) -> tuple[list[PromptChunk], int]:
    """(77-token chunks of one prompt, tokens used as the UI counter counts them).

    AUTOMATIC1111's `tokenize_line`, with two fixes: embeddings moved by the comma backtrack take their
    vectors with them (upstream leaves them behind in the previous chunk), and a BREAK inside brackets
    still breaks.
    """
    _check_emphasis(emphasis)
    parsed = parse_prompt_attention(text) if emphasis != "None" else [[text, 1.0]]
    tokenized = vocab.ids([run_text for run_text, _ in parsed])

    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    token_count = 0
    last_comma = -1

    def next_chunk(is_last: bool = False) -> None:
        nonlocal chunk, token_count, last_comma
        token_count += len(chunk.tokens) if is_last else CHUNK_LENGTH
        to_add = CHUNK_LENGTH - len(chunk.tokens)
        if to_add > 0:
            chunk.tokens += [vocab.id_end] * to_add
            chunk.multipliers += [1.0] * to_add
        chunk.tokens = [vocab.id_start] + chunk.tokens + [vocab.id_end]
        chunk.multipliers = [1.0] + chunk.multipliers + [1.0]
        chunk.fixes = [ChunkFix(f.position + 1, f.embedding) for f in chunk.fixes]
        last_comma = -1
        chunks.append(chunk)
        chunk = PromptChunk()

    for tokens, (run_text, weight) in zip(tokenized, parsed, strict=True):
        # A BREAK inside brackets has its -1 multiplied too; upstream then encodes the word "BREAK"
        # with a negative weight, so any negative weight marks the break here.
        if run_text == BREAK_RUN[0] and weight < 0:
            next_chunk()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == vocab.comma:
                last_comma = len(chunk.tokens)
            elif (comma_backtrack != 0 and len(chunk.tokens) == CHUNK_LENGTH and last_comma != -1
                  and len(chunk.tokens) - last_comma <= comma_backtrack):
                # The chunk is full: the text after its last comma moves on, so a phrase is not cut in two.
                cut = last_comma + 1
                moved_tokens, moved_mults = chunk.tokens[cut:], chunk.multipliers[cut:]
                moved_fixes = [ChunkFix(f.position - cut, f.embedding) for f in chunk.fixes if f.position >= cut]
                chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                chunk.fixes = [f for f in chunk.fixes if f.position < cut]
                next_chunk()
                chunk.tokens, chunk.multipliers, chunk.fixes = moved_tokens, moved_mults, moved_fixes

            if len(chunk.tokens) == CHUNK_LENGTH:
                next_chunk()

            embedding, covered = embeddings.find_at(tokens, position) if embeddings else (None, 0)
            if embedding is None:
                chunk.tokens.append(token)
                chunk.multipliers.append(weight)
                position += 1
                continue

            if len(chunk.tokens) + embedding.vector_count > CHUNK_LENGTH:
                next_chunk()
            chunk.fixes.append(ChunkFix(len(chunk.tokens), embedding))
            chunk.tokens += [0] * embedding.vector_count
            chunk.multipliers += [weight] * embedding.vector_count
            position += covered

    if chunk.tokens or not chunks:
        next_chunk(is_last=True)
    return chunks, token_count


def target_token_count(token_count: int) -> int:
    """The counter's limit: 75 per chunk the prompt needs (at least one)."""
    return math.ceil(max(token_count, 1) / CHUNK_LENGTH) * CHUNK_LENGTH


def count_tokens(model: StableDiffusionModel, text: str, embeddings: EmbeddingDatabase | None = None,
                 emphasis: str = DEFAULT_EMPHASIS) -> tuple[int, int]:
    """(tokens used, token limit) for the UI's counter, e.g. (12, 75) or (80, 150)."""
    _, used = tokenize_prompt(text, Vocabulary.of(model.text_encoders[0]), emphasis, embeddings)
    return used, target_token_count(used)


# ------------------------------------------------------------------------------------------------- encoding


def text_model(encoder_model: torch.nn.Module) -> torch.nn.Module:
    # transformers >= 5.6 flattened CLIPTextModel; CLIPTextModelWithProjection still nests .text_model
    return getattr(encoder_model, "text_model", encoder_model)


def layer_depth(encoder: TextEncoder, clip_skip: int) -> int:
    """How far from the end of hidden_states the conditioning layer is (1 = the last layer's output).

    The encoder's own layer (last or penultimate), moved clip_skip - 1 layers further back.
    """
    return (1 if encoder.output_layer == "last" else 2) + max(clip_skip, 1) - 1


def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor, emphasis: str) -> torch.Tensor:
    """Token weights applied to one chunk's hidden states (batch, 77, width); multipliers (batch, 77).

    "Original" scales each row, then restores the mean of the whole batch tensor, as upstream does;
    "No norm" only scales; "Ignore" and "None" leave the states as they are.
    """
    _check_emphasis(emphasis)
    if emphasis in ("Ignore", "None"):
        return z
    original_mean = z.mean()
    z = z * multipliers.to(z.device, z.dtype).unsqueeze(-1)
    if emphasis == "No norm":
        return z
    return z * (original_mean / z.mean())


def chunk_input_ids(chunks: Sequence[PromptChunk], vocab: Vocabulary) -> torch.Tensor:
    """(batch, 77) ids; encoders whose pad differs from the end token get it after the first end token."""
    ids = torch.tensor([chunk.tokens for chunk in chunks], dtype=torch.long)
    if vocab.id_pad != vocab.id_end:
        for row, chunk in enumerate(chunks):
            ids[row, chunk.tokens.index(vocab.id_end) + 1:] = vocab.id_pad
    return ids


@torch.no_grad()
def encode_chunk_batch(encoder: TextEncoder, chunks: Sequence[PromptChunk], clip_skip: int = 1,
                       emphasis: str = DEFAULT_EMPHASIS, vocab: Vocabulary | None = None,
                       runner: ModelRunner | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weighted hidden states (batch, 77, width) float32, pooled projection or None) of one chunk per row;
    through `runner` (CUDA graphs) when given."""
    vocab = vocab or Vocabulary.of(encoder)
    device = encoder.device or next(encoder.model.parameters()).device
    ids = chunk_input_ids(chunks, vocab).to(device)
    key = encoder_key(encoder)
    fixes = [[(fix.position, fix.embedding.vectors_for(key)) for fix in chunk.fixes] for chunk in chunks]
    inner = text_model(encoder.model)
    depth = layer_depth(encoder, clip_skip)
    with injected_vectors(inner.embeddings.token_embedding, fixes):
        if runner is None:
            hidden, pooled = encoder.hidden_states(ids, depth)
        else:  # a graph would bake in one prompt's embedding vectors: prompts with embeddings run eagerly
            hidden, pooled = runner.text_hidden_states(encoder, ids, depth, replay=not any(fixes))
    if encoder.final_layer_norm:
        hidden = inner.final_layer_norm(hidden)
    multipliers = torch.tensor([chunk.multipliers for chunk in chunks], dtype=torch.float32)
    z = apply_emphasis(hidden.float(), multipliers, emphasis)
    return z, (pooled.float() if pooled is not None else None)



@dataclass
class TextConditioning:
    context: torch.Tensor  # (batch, 77 * chunks, total width)
    pooled: torch.Tensor | None  # (batch, projection) from the first chunk, SDXL's OpenCLIP-G only
    used_embeddings: dict[str, Embedding]
    token_count: int  # the largest count among the prompts, as the counter counts


@torch.no_grad()
def encode_texts(encoders: Sequence[TextEncoder], prompts: list[str], clip_skip: int = 1,
                 emphasis: str = DEFAULT_EMPHASIS, embeddings: EmbeddingDatabase | None = None,
                 comma_backtrack: int = COMMA_PADDING_BACKTRACK, runner: ModelRunner | None = None) -> TextConditioning:
    """Conditioning of a batch of prompts by every text encoder, joined on the channel axis.

    Prompts with fewer chunks than the longest get empty chunks (start, end, padding), as upstream.
    """
    contexts, pooled, used, token_count = [], None, {}, 0
    for encoder in encoders:
        vocab = Vocabulary.of(encoder)
        tokenized = [tokenize_prompt(p, vocab, emphasis, embeddings, comma_backtrack) for p in prompts]
        batch_chunks = [chunks for chunks, _ in tokenized]
        token_count = max(count for _, count in tokenized)
        chunk_count = max(len(chunks) for chunks in batch_chunks)
        zs = []
        for index in range(chunk_count):
            column = [chunks[index] if index < len(chunks) else vocab.empty_chunk() for chunks in batch_chunks]
            used.update({fix.embedding.name: fix.embedding for chunk in column for fix in chunk.fixes})
            z, chunk_pooled = encode_chunk_batch(encoder, column, clip_skip, emphasis, vocab, runner)
            zs.append(z)
            if index == 0 and chunk_pooled is not None:
                pooled = chunk_pooled
        contexts.append(torch.hstack(zs))
    return TextConditioning(torch.cat(contexts, dim=-1), pooled, used, token_count)


def encode_model_texts(model: StableDiffusionModel, prompts: list[str], clip_skip: int = 1,
                       emphasis: str = DEFAULT_EMPHASIS, embeddings: EmbeddingDatabase | None = None,
                       comma_backtrack: int = COMMA_PADDING_BACKTRACK,
                       runner: ModelRunner | None = None) -> TextConditioning:
    return encode_texts(model.text_encoders, prompts, clip_skip, emphasis, embeddings, comma_backtrack, runner)


def emphasis_infotext(prompts: Sequence[str], emphasis: str) -> str | None:
    """The `Emphasis` infotext value: written when a prompt has brackets and the mode is not the default."""
    if emphasis != DEFAULT_EMPHASIS and any("(" in p or "[" in p for p in prompts):
        return emphasis
    return None


# ----------------------------------------------------------------------------------- cond/uncond lengths


def pad_to_same_length(cond: Mapping[str, torch.Tensor], uncond: Mapping[str, torch.Tensor],
                       empty_context: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """cond and uncond with equal token lengths: the shorter `context` gets encoded empty chunks appended
    (AUTOMATIC1111's `pad_cond_uncond`). `empty_context` is the (1, 77, width) encoding of the prompt "".
    """
    cond, uncond = dict(cond), dict(uncond)
    repeats = (cond["context"].shape[1] - uncond["context"].shape[1]) // empty_context.shape[1]
    if repeats < 0:
        cond["context"] = _append_empty(cond["context"], -repeats, empty_context)
    elif repeats > 0:
        uncond["context"] = _append_empty(uncond["context"], repeats, empty_context)
    return cond, uncond


def _append_empty(context: torch.Tensor, repeats: int, empty_context: torch.Tensor) -> torch.Tensor:
    padding = empty_context.to(context.device, context.dtype).repeat(context.shape[0], repeats, 1)
    return torch.cat([context, padding], dim=1)
