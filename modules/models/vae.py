"""Finding VAE files and deciding which one a checkpoint uses.

`Automatic`: a VAE file named like the checkpoint (`model.vae.safetensors`, `model.vae.pt`, or
`model.safetensors` in a VAE folder), else the checkpoint's own. `None`: always the checkpoint's
own. Anything else names a VAE file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt")
AUTOMATIC = "Automatic"
NONE = "None"


@dataclass(frozen=True)
class VaeInfo:
    path: Path
    name: str  # relative to its folder


def list_vaes(vae_dirs, checkpoint_dirs) -> list[VaeInfo]:
    found: dict[Path, VaeInfo] = {}
    for folder in map(Path, vae_dirs):
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.is_file() and path.suffix.lower() in VAE_SUFFIXES:
                    found.setdefault(path.resolve(), VaeInfo(path, path.relative_to(folder).as_posix()))
    for folder in map(Path, checkpoint_dirs):
        if folder.is_dir():
            for path in sorted(folder.rglob("*.vae.*")):
                if path.is_file() and path.suffix.lower() in VAE_SUFFIXES:
                    found.setdefault(path.resolve(), VaeInfo(path, path.relative_to(folder).as_posix()))
    return sorted(found.values(), key=lambda v: v.name.lower())


def _stem(name: str) -> str:
    base = Path(name).name
    for suffix in VAE_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
    return base.removesuffix(".vae")


def resolve_vae(choice: str, checkpoint_path: Path, vaes: list[VaeInfo]) -> VaeInfo | None:
    """The VAE file to use, or None for the checkpoint's own. Raises ValueError for an unknown name."""
    if choice == NONE:
        return None
    if choice == AUTOMATIC:
        stem = Path(checkpoint_path).name
        for suffix in (".safetensors", ".ckpt"):
            stem = stem.removesuffix(suffix)
        return next((v for v in vaes if _stem(v.name) == stem), None)
    for vae in vaes:
        if choice in (vae.name, Path(vae.name).name, _stem(vae.name)):
            return vae
    raise ValueError(f"unknown VAE {choice!r}; choose Automatic, None or one of: "
                     f"{', '.join(v.name for v in vaes) or '(no VAE files found)'}")
