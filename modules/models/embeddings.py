"""Textual inversion embeddings: files of learned token vectors that a trigger word in the prompt stands for.

Files come from the embeddings folder (searched recursively): `.pt`/`.bin` (pickles, read only through
torch's weights-only unpickler) and `.safetensors`. The trigger word is the file's stem, as in
AUTOMATIC1111. Layouts understood:

- AUTOMATIC1111 `.pt`: {"string_to_param": {"*": (n, width)}, "name", "step", ...}
- one tensor under any key: kohya's {"emb_params": (n, width)}, diffusers' {"<token>": (width,)}
- SDXL: {"clip_l": (n, 768), "clip_g": (n, 1280)}

An embedding whose vectors do not fit the loaded model's text encoders is skipped with a reason, so the
UI can list it. Prompts find triggers by token ids, not text: the trigger word is tokenized once and
matched against the prompt's token sequence (longest first), as AUTOMATIC1111's `ids_lookup` does.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modules.models import safe_load
from modules.models.hashes import sha256_of_file
from modules.models.sd_model import StableDiffusionModel, TextEncoder

EMBEDDING_EXTENSIONS = (".pt", ".bin", ".safetensors")
# A chunk holds 75 tokens between its start and end tokens; an embedding must fit in one chunk.
MAX_VECTORS = 75

# Which vectors of an SDXL embedding each text encoder takes.
SDXL_KEYS = {"clip_l": "clip_l", "open_clip": "clip_g"}


class EmbeddingFormatError(safe_load.ModelFileError):
    """The file is readable but holds no embedding layout we know."""


@dataclass(frozen=True)
class Embedding:
    name: str
    vectors: torch.Tensor | dict[str, torch.Tensor]  # (n, width), or per-encoder {"clip_l": ..., "clip_g": ...}
    vector_count: int
    step: int | None = None
    path: Path | None = None
    sha256: str | None = None

    @property
    def widths(self) -> dict[str, int] | int:
        if isinstance(self.vectors, dict):
            return {key: int(v.shape[-1]) for key, v in self.vectors.items()}
        return int(self.vectors.shape[-1])

    @property
    def shorthash(self) -> str | None:
        """The 12-digit hash AUTOMATIC1111 writes as `TI hashes: name: hash`."""
        return self.sha256[:12] if self.sha256 else None

    def vectors_for(self, encoder_key: str) -> torch.Tensor:
        """This embedding's (n, width) vectors for one text encoder (key "clip_l" or "clip_g")."""
        if isinstance(self.vectors, dict):
            return self.vectors[encoder_key]
        return self.vectors


def encoder_key(encoder: TextEncoder) -> str:
    return SDXL_KEYS.get(encoder.kind, encoder.kind)


def encoder_widths(model: StableDiffusionModel) -> dict[str, int]:
    """Vector width each text encoder needs, by embedding key ("clip_l" / "clip_g")."""
    return {encoder_key(e): int(e.model.config.hidden_size) for e in model.text_encoders}


# ------------------------------------------------------------------------------------------------ reading files


def discover_embedding_files(directory: Path) -> list[Path]:
    """Embedding files under `directory` (recursively, in name order); empty files are left out."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.rglob("*")
             if p.is_file() and p.suffix.lower() in EMBEDDING_EXTENSIONS and p.stat().st_size > 0]
    return sorted(found, key=lambda p: (p.relative_to(directory).as_posix().lower(), p.as_posix()))


def read_embedding_data(path: Path) -> Mapping:
    """The file's top-level mapping, read without running code from it.

    safe_load.load_state_dict flattens to top-level tensors, which would drop AUTOMATIC1111's nested
    `string_to_param`; pickles are therefore read here with the same weights-only unpickler and the
    same rule that the content, not the extension, decides the format.
    """
    path = Path(path)
    if safe_load.sniff_format(path) is safe_load.FileFormat.SAFETENSORS:
        return safe_load.load_state_dict(path)
    try:
        with open(path, "rb") as f:
            data = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise safe_load.UnsafeModelFileError(
            f"{path}: refused to load: its pickle asks for something outside the allow-list "
            f"({str(e).splitlines()[0][:200]}). Nothing in it was run.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, struct.error) as e:
        raise safe_load.ModelFileError(f"{path}: damaged or truncated PyTorch file ({str(e).splitlines()[0]})") \
            from None
    if not isinstance(data, Mapping):
        raise EmbeddingFormatError(f"{path}: holds a {type(data).__name__}, not a dictionary")
    return data


def _single_tensor(mapping: Mapping, path: Path | None) -> torch.Tensor:
    tensors = [v for v in mapping.values() if isinstance(v, torch.Tensor)]
    if len(tensors) != 1:
        raise EmbeddingFormatError(f"{path}: expected one tensor of vectors, found {len(tensors)}")
    return tensors[0]


def embedding_from_data(data: Mapping, name: str, path: Path | None = None,
                        sha256: str | None = None) -> Embedding:
    """An Embedding from a file's mapping, following AUTOMATIC1111's `create_embedding_from_data`."""
    vectors: torch.Tensor | dict[str, torch.Tensor]
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, Mapping) or len(params) != 1:
            raise EmbeddingFormatError(f"{path}: string_to_param must hold exactly one term")
        vectors = _as_matrix(_single_tensor(params, path))
        count = vectors.shape[0]
    elif isinstance(data.get("clip_g"), torch.Tensor) and isinstance(data.get("clip_l"), torch.Tensor):
        vectors = {key: _as_matrix(data[key]) for key in ("clip_l", "clip_g")}
        if vectors["clip_l"].shape[0] != vectors["clip_g"].shape[0]:
            raise EmbeddingFormatError(f"{path}: clip_l and clip_g hold different numbers of vectors")
        count = vectors["clip_g"].shape[0]
    else:
        # kohya's {"emb_params": ...} and diffusers' {"<token>": ...}: one tensor, whatever its key.
        vectors = _as_matrix(_single_tensor(data, path))
        count = vectors.shape[0]
    step = data.get("step")
    return Embedding(name=name, vectors=vectors, vector_count=int(count),
                     step=int(step) if isinstance(step, (int, float)) else None,
                     path=Path(path) if path else None, sha256=sha256)


def _as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    vectors = tensor.detach().to("cpu", torch.float32)
    return vectors.unsqueeze(0) if vectors.ndim == 1 else vectors


def misfit_reason(embedding: Embedding, widths: Mapping[str, int]) -> str | None:
    """Why the embedding cannot be used with text encoders of these widths, or None when it fits."""
    if embedding.vector_count == 0:
        return "it holds no vectors"
    if embedding.vector_count > MAX_VECTORS:
        return f"it has {embedding.vector_count} vectors, more than the {MAX_VECTORS} one chunk holds"
    have = embedding.widths
    if isinstance(have, dict):
        if set(have) != set(widths) or any(have[k] != widths[k] for k in widths):
            return f"vectors {have} do not fit this model's text encoders {dict(widths)}"
        return None
    if len(widths) != 1 or have != next(iter(widths.values())):
        return f"vectors are {have} wide; this model's text encoders need {dict(widths)}"
    return None


# --------------------------------------------------------------------------------------------------- database


@dataclass
class EmbeddingDatabase:
    """The embeddings usable with one model, and the trigger-word lookup by token ids."""

    loaded: dict[str, Embedding] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it is not usable
    # first token id of a trigger -> (trigger ids, embedding), longest trigger first
    _ids_lookup: dict[int, list[tuple[tuple[int, ...], Embedding]]] = field(default_factory=dict)

    def register(self, embedding: Embedding, trigger_ids: Sequence[int]) -> None:
        ids = tuple(trigger_ids)
        if not ids:
            self.skipped[embedding.name] = "its name gives no tokens"
            return
        if embedding.name in self.loaded:  # a later file of the same name replaces the earlier one
            for key, entries in self._ids_lookup.items():
                self._ids_lookup[key] = [e for e in entries if e[1].name != embedding.name]
        self.loaded[embedding.name] = embedding
        self.skipped.pop(embedding.name, None)
        entries = self._ids_lookup.setdefault(ids[0], []) + [(ids, embedding)]
        self._ids_lookup[ids[0]] = sorted(entries, key=lambda e: len(e[0]), reverse=True)

    def find_at(self, tokens: Sequence[int], offset: int) -> tuple[Embedding | None, int]:
        """(embedding whose trigger starts at tokens[offset], number of prompt tokens it covers)."""
        for ids, embedding in self._ids_lookup.get(tokens[offset], ()):
            if tuple(tokens[offset:offset + len(ids)]) == ids:
                return embedding, len(ids)
        return None, 0

    @classmethod
    def load(cls, directory: Path, widths: Mapping[str, int], tokenize: Callable[[str], list[int]],
             sha256: Callable[[Path], str] = sha256_of_file) -> EmbeddingDatabase:
        """Every embedding file under `directory` that fits text encoders of `widths`; the rest in `skipped`.

        `tokenize` turns a trigger word into token ids without start/end tokens; `sha256` may be a
        cached hasher.
        """
        database = cls()
        for path in discover_embedding_files(directory):
            name = path.stem
            try:
                embedding = embedding_from_data(read_embedding_data(path), name, path, sha256(path))
            except safe_load.ModelFileError as e:
                database.skipped[name] = str(e)
                continue
            reason = misfit_reason(embedding, widths)
            if reason is not None:
                database.skipped[name] = f"{path.name}: {reason}"
                continue
            database.register(embedding, tokenize(name))
        return database


def trigger_tokenizer(encoder: TextEncoder) -> Callable[[str], list[int]]:
    """Token ids of a word without start/end tokens (CLIP-L and OpenCLIP share the BPE vocabulary)."""
    def tokenize(text: str) -> list[int]:
        return list(encoder.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)
    return tokenize


def load_embeddings(directory: Path, model: StableDiffusionModel,
                    sha256: Callable[[Path], str] = sha256_of_file) -> EmbeddingDatabase:
    """The embeddings of `directory` that fit `model`."""
    return EmbeddingDatabase.load(directory, encoder_widths(model), trigger_tokenizer(model.text_encoders[0]),
                                  sha256)


def ti_hashes(used: Mapping[str, Embedding]) -> str | None:
    """Infotext value of `TI hashes` ("name: hash, ..."), or None when no used embedding has a hash."""
    parts = [f"{name.replace(':', '').replace(',', '')}: {e.shorthash}" for name, e in used.items() if e.shorthash]
    return ", ".join(parts) if parts else None


# ------------------------------------------------------------------------------------------------- injection


@contextmanager
def injected_vectors(token_embedding: torch.nn.Module,
                     rows: Sequence[Sequence[tuple[int, torch.Tensor]]]) -> Iterator[None]:
    """While active, the token embedding's output for batch row b has vectors placed at the given positions.

    transformers' CLIPTextModel takes no `inputs_embeds`, and the pooled output needs `input_ids` (it finds
    the end token), so the vectors go in through a forward hook on the token embedding, removed on exit.
    `rows[b]` lists (position in the sequence, (n, width) vectors).
    """
    def replace(_module: torch.nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for row, fixes in enumerate(rows):
            for position, vectors in fixes:
                count = min(output.shape[1] - position, vectors.shape[0])
                output[row, position:position + count] = vectors[:count].to(output.device, output.dtype)
        return output

    if not any(rows):
        yield
        return
    handle = token_embedding.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()
