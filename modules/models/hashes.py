"""sha256 of model files, cached by (path, size, mtime) so a multi-GB file is hashed once.

AUTOMATIC1111's "Model hash" is the first 10 hex digits of the whole file's sha256; LoRA and
embedding short hashes are 12 digits. The cache is a small JSON file written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

_BLOCK = 1 << 20


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """Maps a file to its sha256, remembering results in `cache_file` across runs."""

    def __init__(self, cache_file: Path | None):
        self._cache_file = cache_file
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = self._read()

    def sha256(self, path: Path) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        key = str(path)
        with self._lock:
            entry = self._entries.get(key)
            if entry and entry["size"] == stat.st_size and entry["mtime"] == stat.st_mtime_ns:
                return entry["sha256"]
        digest = sha256_of_file(path)
        with self._lock:
            self._entries[key] = {"size": stat.st_size, "mtime": stat.st_mtime_ns, "sha256": digest}
            self._write()
        return digest

    def _read(self) -> dict[str, dict]:
        if self._cache_file is None or not self._cache_file.is_file():
            return {}
        try:
            data = json.loads(self._cache_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # a damaged cache only costs re-hashing
        return data if isinstance(data, dict) else {}

    def _write(self) -> None:
        if self._cache_file is None:
            return
        self._cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._cache_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self._entries, indent=1), encoding="utf-8")
        os.replace(tmp, self._cache_file)
