"""Reading model files without running code from them.

The format is decided by the file's first bytes, never by its extension: a `.ckpt` renamed to
`.safetensors` (or the reverse) loads by what it is. Safetensors goes through the safetensors
library. Pickled files (torch `.ckpt`/`.pt`/`.bin`) go only through torch's weights-only
unpickler, an allow-list of tensors, plain containers and numbers; a pickle that asks for anything
else is refused before any of it runs. There is deliberately no switch that turns this off.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from collections.abc import Mapping
from enum import Enum
from pathlib import Path

import torch

# safetensors' own reader caps the header at 100 MB; a larger declared header means a damaged file.
_MAX_SAFETENSORS_HEADER = 100_000_000
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80


class ModelFileError(Exception):
    """A model file could not be used. The message names the file and the problem."""


class UnsafeModelFileError(ModelFileError):
    """The file's pickle asks to import or call something outside the allow-list."""


class FileFormat(str, Enum):
    SAFETENSORS = "safetensors"
    TORCH_ZIP = "torch-zip"
    TORCH_LEGACY = "torch-legacy-pickle"


class _LightningModelCheckpoint:
    """Inert stand-in for `pytorch_lightning...ModelCheckpoint`.

    Training checkpoints (SD 1.x `.ckpt` among them) pickle this callback beside the weights. The
    stand-in only stores the attributes the pickle sets, so such files load without Lightning and
    without running any of its code.
    """

    def __setstate__(self, state):
        self.__dict__["_state"] = state


# Extra names a real checkpoint may reference, each mapped to something that cannot run code.
_EXTRA_SAFE_GLOBALS = [
    (_LightningModelCheckpoint, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
]


def sniff_format(path: Path) -> FileFormat:
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the file ({e.strerror or e})") from e
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 8 + header_len <= size and header_len <= _MAX_SAFETENSORS_HEADER:
            return FileFormat.SAFETENSORS
    if head.startswith(_ZIP_MAGIC):
        return FileFormat.TORCH_ZIP
    if head[:1] and head[0] == _PICKLE_PROTO:
        return FileFormat.TORCH_LEGACY
    if size == 0:
        raise ModelFileError(f"{path}: the file is empty")
    raise ModelFileError(f"{path}: not a safetensors or PyTorch file (unrecognised first bytes {head[:8]!r})")


def read_tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape, cheaply: from the header alone for safetensors, by a full safe load otherwise."""
    path = Path(path)
    if sniff_format(path) is FileFormat.SAFETENSORS:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ModelFileError(f"{path}: damaged safetensors header ({e})") from e
        return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    return {k: tuple(v.shape) for k, v in load_state_dict(path).items()}


def load_state_dict(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a model file, flattened out of a `state_dict` wrapper when there is one."""
    path = Path(path)
    fmt = sniff_format(path)
    if fmt is FileFormat.SAFETENSORS:
        return _load_safetensors(path, device)
    return _flatten_checkpoint(_load_pickled(path, device), path)


def load_state_dict_nested(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a model file, unwrapping the containers upscaler and face-restorer files use
    (`params_ema`, `params`, `state_dict`, `model`); always through the same safe readers."""
    path = Path(path)
    if sniff_format(path) is FileFormat.SAFETENSORS:
        return _load_safetensors(path, device)
    obj = _load_pickled(path, device)
    for key in ("params_ema", "params", "state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    return _flatten_checkpoint(obj, path)


def _load_safetensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    import safetensors.torch
    from safetensors import SafetensorError

    try:
        return safetensors.torch.load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path}: damaged or truncated safetensors file ({e})") from e


def _load_pickled(path: Path, device: str) -> object:
    try:
        # A file object, not the path: torch.load would hand any path ending in ".safetensors"
        # to safetensors by its name, and the content decides here.
        with open(path, "rb") as f, torch.serialization.safe_globals(_EXTRA_SAFE_GLOBALS):
            return torch.load(f, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _first_sentence(e)
        if _is_forbidden_global(e):
            raise UnsafeModelFileError(
                f"{path}: refused to load: its pickle asks for code outside the allow-list "
                f"({_forbidden_name(e) or reason}). Nothing in it was run. Convert it to .safetensors "
                f"with a tool you trust, or use a safetensors release of the model."
            ) from None
        raise ModelFileError(f"{path}: damaged or unsupported PyTorch file ({reason})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, struct.error) as e:
        raise ModelFileError(f"{path}: damaged or truncated PyTorch file ({_first_sentence(e)})") from None


def _first_sentence(error: Exception) -> str:
    return str(error).splitlines()[0].split(". ")[0]


def _is_forbidden_global(error: Exception) -> bool:
    text = str(error)
    return "Unsupported global" in text or "not an allowed global" in text or "Unsupported operand" in text \
        or "GLOBAL" in text


def _forbidden_name(error: Exception) -> str | None:
    import re

    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    return f"it wants {match.group(1)}" if match else None


def _flatten_checkpoint(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ModelFileError(f"{path}: holds a {type(obj).__name__}, not a dictionary of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFileError(f"{path}: holds no tensors")
    return tensors
