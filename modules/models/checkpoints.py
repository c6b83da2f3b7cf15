"""Finding checkpoints on disk and naming them as AUTOMATIC1111 does.

A checkpoint's title is `relative/path.safetensors [abcdef0123]`: its path below the folder it was
found in, and the first 10 hex digits of the file's sha256.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modules.models.hashes import HashCache

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    name: str  # path relative to its folder, with forward slashes: "sub/model.safetensors"
    sha256: str | None

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def model_name(self) -> str:
        """The infotext `Model:` value: the file name without folders or extension."""
        return Path(self.name).stem

    def matches(self, query: str) -> bool:
        """True for the title, the name, the name without extension, the file stem or a hash prefix."""
        query = query.strip()
        if not query:
            return False
        candidates = {self.title, self.name, self.name.rsplit(".", 1)[0], self.model_name}
        if query in candidates:
            return True
        return bool(self.sha256) and len(query) >= 8 and self.sha256.startswith(query.lower())


def _is_checkpoint_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(CHECKPOINT_SUFFIXES) and ".vae." not in name


def find_checkpoint_files(folders: tuple[Path, ...] | list[Path]) -> list[tuple[Path, Path]]:
    """(folder, file) pairs, recursive, sorted by relative name; missing folders are skipped."""
    found: dict[Path, tuple[Path, Path]] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if _is_checkpoint_file(path):
                found.setdefault(path.resolve(), (folder, path))
    return sorted(found.values(), key=lambda pair: pair[1].relative_to(pair[0]).as_posix().lower())


def _fallback_pairs(fallback_files, listed: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """(folder, file) pairs of the fallback files whose name no listed file has: a user's copy of a
    shipped model (same name) stands for it instead of appearing twice."""
    names = {path.relative_to(folder).as_posix() for folder, path in listed}
    return [(p.parent, p) for p in map(Path, fallback_files) if p.is_file() and p.name not in names]


def list_checkpoints(folders, hash_cache: HashCache | None, extra_files: tuple[Path, ...] = (),
                     fallback_files: tuple[Path, ...] = ()) -> list[CheckpointInfo]:
    """`extra_files` are listed first, then the folders' files, then `fallback_files` (the models that
    ship with the product) unless already listed; each file once, however it was reached."""
    pairs = [(p.parent, p) for p in map(Path, extra_files) if p.is_file()]
    pairs += find_checkpoint_files(folders)
    pairs += _fallback_pairs(fallback_files, pairs)
    infos, seen = [], set()
    for folder, path in pairs:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        sha = hash_cache.sha256(path) if hash_cache is not None else None
        infos.append(CheckpointInfo(path=path, name=path.relative_to(folder).as_posix(), sha256=sha))
    return infos


def find_checkpoint(checkpoints: list[CheckpointInfo], query: str) -> CheckpointInfo | None:
    for info in checkpoints:
        if info.matches(query):
            return info
    return None
