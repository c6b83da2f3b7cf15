"""Image-model files (upscalers, face restorers) as spandrel sees them: what a file is, and loading it.

spandrel tells the architecture, purpose and scale from the weights themselves, so a file's name
never decides what it is. Files are read through the project's safe loader (safetensors, or a
pickle through the allow-list) before spandrel sees them. The registry is spandrel's plus
spandrel-extra-arches (CodeFormer lives there), in a private copy so spandrel's global registry is
left as it is.
"""

from __future__ import annotations

import functools
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from modules.models import safe_load

MODEL_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")


class UnsupportedModelError(safe_load.ModelFileError):
    pass


class UnsupportedFile(NamedTuple):
    """A file in a model folder that is skipped, and why (shown to users beside the list)."""

    path: Path
    reason: str


@dataclass(frozen=True)
class ModelFacts:
    architecture: str  # spandrel's id, e.g. "ESRGAN", "SwinIR", "GFPGAN", "CodeFormer"
    purpose: str  # "SR", "Restoration", "FaceSR", "Inpainting", ...
    scale: int
    supports_half: bool


def _import_extra_arches():
    # spandrel-extra-arches' CodeFormer module applies @torch.jit.script to a helper when it is
    # imported, and torch warns on every start that torch.jit.script is deprecated: the library's
    # code, nothing we can change, so that one warning is ignored for this import only.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        import spandrel_extra_arches
    return spandrel_extra_arches


@functools.lru_cache(maxsize=1)
def registry():
    import spandrel

    spandrel_extra_arches = _import_extra_arches()
    combined = spandrel.MAIN_REGISTRY.copy()
    combined.add(*spandrel_extra_arches.EXTRA_REGISTRY, ignore_duplicates=True)
    return combined


def read_state_dict(path: Path, meta: bool = False) -> dict[str, torch.Tensor]:
    """The file's tensors, canonicalised the way spandrel expects (`params_ema`, prefixes, ...).

    With `meta`, a pickle is read onto the meta device: names and shapes are all that telling the
    architecture needs, and it skips hundreds of megabytes of weights. Safetensors are memory-mapped.
    """
    import spandrel

    lazy = meta and safe_load.sniff_format(path) is not safe_load.FileFormat.SAFETENSORS
    state_dict = safe_load.load_state_dict_nested(path, device="meta" if lazy else "cpu")
    if meta:  # memory-mapped safetensors too, so that nothing is copied into the shapes-only network
        state_dict = {key: value.to("meta") if isinstance(value, torch.Tensor) else value
                      for key, value in state_dict.items()}
    return spandrel.canonicalize_state_dict(state_dict)


def _describe(state_dict: dict[str, torch.Tensor], device: str):
    import spandrel

    try:
        return spandrel.ModelLoader(device=device, registry=registry()).load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError:
        return None


def inspect(path: Path) -> ModelFacts:
    """What the file holds, without loading its weights. Raises UnsupportedModelError (naming the file)
    for weights spandrel knows no architecture for, and safe_load.ModelFileError for unreadable files."""
    state_dict = read_state_dict(path, meta=True)
    try:
        with torch.device("meta"):  # the network is built shapes-only, like the weights
            descriptor = _describe(state_dict, "meta")
    except (RuntimeError, NotImplementedError, TypeError):
        # An architecture whose constructor reads tensor values: build it for real.
        descriptor = _describe(read_state_dict(path), "cpu")
    if descriptor is None:
        raise UnsupportedModelError(f"{path.name}: not an image model architecture spandrel knows")
    return ModelFacts(str(descriptor.architecture.id), str(descriptor.purpose), int(descriptor.scale),
                      bool(descriptor.supports_half))


def load(path: Path, device: torch.device, half: bool = False):
    """The spandrel descriptor with the file's weights, in eval mode on `device`; fp16 only where the
    architecture supports it (spandrel knows which break)."""
    descriptor = _describe(read_state_dict(path), "cpu")
    if descriptor is None:
        raise UnsupportedModelError(f"{path.name}: not an image model architecture spandrel knows")
    descriptor = descriptor.to(device).eval()
    if half and device.type == "cuda" and descriptor.supports_half:
        descriptor = descriptor.half()
    return descriptor


class FactsCache:
    """inspect() results (or the error) per file, kept while the file's size and mtime stay the same."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[Path, int, int], ModelFacts | Exception] = {}

    def facts(self, path: Path) -> ModelFacts | Exception:
        try:
            stat = path.stat()
        except OSError as e:  # removed or unreadable since the folder was listed
            return e
        key = (path.resolve(), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._known:
                return self._known[key]
        try:
            result: ModelFacts | Exception = inspect(path)
        except safe_load.ModelFileError as e:
            result = e
        with self._lock:
            self._known[key] = result
        return result


def candidate_files(folders) -> list[Path]:
    """Model files under the folders, recursively, each once, in a stable order."""
    seen: set[Path] = set()
    files: list[Path] = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in MODEL_SUFFIXES and path.resolve() not in seen:
                seen.add(path.resolve())
                files.append(path)
    return files
