"""Model upscalers (ESRGAN, Real-ESRGAN, SwinIR, ... through spandrel) from AUTOMATIC1111's folders.

What a file is (architecture, scale) comes from its weights through modules.postprocess.spandrel_models, never
from its name; files that are not upscalers are listed with the reason and skipped.

Upscaling is tiled with overlap and linear blending, so memory stays bounded whatever the image
size, and repeated when the target scale is larger than the model's, ending with a Lanczos resize
to the exact size.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modules.postprocess import spandrel_models
from modules.postprocess.spandrel_models import ModelFacts, UnsupportedFile

MAX_PASSES = 3
# Purposes spandrel gives image-to-image networks that enlarge or clean up a whole picture (1x
# "Restoration" models such as de-JPEG ones are upscalers in AUTOMATIC1111's list too).
UPSCALER_PURPOSES = ("SR", "Restoration")
# The names AUTOMATIC1111 shows for the official Real-ESRGAN files.
REALESRGAN_TITLES = {
    "RealESRGAN_x4plus": "R-ESRGAN 4x+",
    "RealESRGAN_x4plus_anime_6B": "R-ESRGAN 4x+ Anime6B",
    "RealESRGAN_x2plus": "R-ESRGAN 2x+",
    "realesr-general-x4v3": "R-ESRGAN General 4xV3",
    "realesr-general-wdn-x4v3": "R-ESRGAN General WDN 4xV3",
    "realesr-animevideov3": "R-ESRGAN AnimeVideo",
}


@dataclass(frozen=True)
class UpscalerFile:
    name: str  # what users pick: the file stem, or AUTOMATIC1111's Real-ESRGAN title
    path: Path
    kind: str  # folder kind: ESRGAN, RealESRGAN, SwinIR, DAT, HAT
    architecture: str  # from the weights, e.g. ESRGAN, RealCUGAN, SwinIR
    scale: int


@dataclass(frozen=True)
class TileSettings:
    tile: int = 192  # AUTOMATIC1111's ESRGAN_tile
    overlap: int = 8  # ESRGAN_tile_overlap


def why_not_an_upscaler(facts: ModelFacts) -> str | None:
    if facts.purpose in UPSCALER_PURPOSES:
        return None
    if facts.purpose == "FaceSR":
        return f"a {facts.architecture} face restorer: it belongs in models/GFPGAN or models/Codeformer"
    return f"a {facts.architecture} model for {facts.purpose}, not an upscaler"


def _candidate_files(entries) -> list[Path]:
    """The model files under the folders among `entries`, then the entries that are files themselves
    (the models that ship with the product), each once."""
    entries = list(map(Path, entries))
    files = spandrel_models.candidate_files([e for e in entries if e.is_dir()])
    seen = {f.resolve() for f in files}
    return files + [e for e in entries if e.is_file() and e.resolve() not in seen]


def discover(folders: dict[str, list[Path]], cache: spandrel_models.FactsCache | None = None,
             ) -> tuple[list[UpscalerFile], list[UnsupportedFile]]:
    """The upscalers in the folders (one per name, the first found), and the files skipped with why.

    A kind's list may name files as well as folders; they count after its folders' files."""
    cache = cache or spandrel_models.FactsCache()
    found: dict[str, UpscalerFile] = {}
    unsupported: list[UnsupportedFile] = []
    for kind, paths in folders.items():
        for path in _candidate_files(paths):
            facts = cache.facts(path)
            reason = str(facts) if isinstance(facts, Exception) else why_not_an_upscaler(facts)
            if reason is not None:
                unsupported.append(UnsupportedFile(path, reason))
                continue
            title = REALESRGAN_TITLES.get(path.stem, path.stem)
            found.setdefault(title, UpscalerFile(title, path, kind, facts.architecture, facts.scale))
    return sorted(found.values(), key=lambda u: u.name.lower()), unsupported


def load_model(path: Path, device: torch.device = torch.device("cpu"), half: bool = False):
    """The spandrel descriptor of an upscaler file; safe_load.ModelFileError naming the problem otherwise."""
    reason = why_not_an_upscaler(spandrel_models.inspect(path))
    if reason is not None:
        raise spandrel_models.UnsupportedModelError(f"{path.name}: {reason}")
    return spandrel_models.load(path, device, half)


def _blend_ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    weights = torch.ones(length)
    if overlap > 0:
        ramp = torch.linspace(0, 1, overlap + 2)[1:-1]
        if not at_start:
            weights[:overlap] = ramp
        if not at_end:
            weights[-overlap:] = ramp.flip(0)
    return weights


@torch.no_grad()
def upscale_tensor_tiled(model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, scale: int,
                         tiles: TileSettings, check_interrupt: Callable[[], None] | None = None) -> torch.Tensor:
    """[1, C, H, W] in [0, 1] -> [1, C, H*scale, W*scale], one tile at a time, overlaps blended linearly."""
    _, channels, height, width = image.shape
    if tiles.tile <= 0 or (height <= tiles.tile and width <= tiles.tile):
        return model(image).float().cpu().clamp(0, 1)
    step = tiles.tile - tiles.overlap
    output = torch.zeros(1, channels, height * scale, width * scale, dtype=torch.float32)
    weight = torch.zeros(1, 1, height * scale, width * scale, dtype=torch.float32)
    ys = list(range(0, max(height - tiles.overlap, 1), step))
    xs = list(range(0, max(width - tiles.overlap, 1), step))
    for y in ys:
        for x in xs:
            if check_interrupt is not None:
                check_interrupt()
            y1, x1 = min(y + tiles.tile, height), min(x + tiles.tile, width)
            y0, x0 = max(y1 - tiles.tile, 0), max(x1 - tiles.tile, 0)
            result = model(image[:, :, y0:y1, x0:x1]).float().cpu()
            wy = _blend_ramp((y1 - y0) * scale, tiles.overlap * scale, y0 == 0, y1 == height)
            wx = _blend_ramp((x1 - x0) * scale, tiles.overlap * scale, x0 == 0, x1 == width)
            w = (wy[:, None] * wx[None, :])[None, None]
            output[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] += result * w
            weight[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] += w
    return (output / weight.clamp(min=1e-8)).clamp(0, 1)


class UpscalerRegistry:
    """Lists the upscaler files and keeps the last used model loaded."""

    def __init__(self, folders: dict[str, list[Path]], device: torch.device = torch.device("cpu"),
                 half: bool = False, tiles: TileSettings = TileSettings()):
        self.folders = folders
        self.device = device
        self.half = half and device.type == "cuda"
        self.tiles = tiles
        self._lock = threading.Lock()
        self._loaded: tuple[Path, object] | None = None
        self._facts = spandrel_models.FactsCache()
        self.files, self.unsupported = discover(folders, self._facts)

    def refresh(self) -> list[UpscalerFile]:
        self.files, self.unsupported = discover(self.folders, self._facts)
        return self.files

    def names(self) -> list[str]:
        return [f.name for f in self.files]

    def find(self, name: str) -> UpscalerFile | None:
        return next((f for f in self.files if f.name == name or f.path.stem == name), None)

    def _model(self, file: UpscalerFile):
        with self._lock:
            if self._loaded is None or self._loaded[0] != file.path:
                self._loaded = None  # free the previous model first: one in memory at a time
                self._loaded = (file.path, load_model(file.path, self.device, self.half))
            return self._loaded[1]

    def upscale(self, image: Image.Image, name: str, width: int, height: int,
                check_interrupt: Callable[[], None] | None = None) -> Image.Image:
        """Upscale with the model, repeating up to 3 passes until the target is reached, then Lanczos."""
        file = self.find(name)
        if file is None:
            raise ValueError(f"unknown upscaler {name!r}")
        descriptor = self._model(file)
        current = image.convert("RGB")
        for _ in range(MAX_PASSES):
            if current.width >= width and current.height >= height:
                break
            pixels = torch.from_numpy(np.asarray(current, dtype=np.float32) / 255).permute(2, 0, 1)[None]
            pixels = pixels.to(self.device, descriptor.dtype)
            out = upscale_tensor_tiled(descriptor, pixels, descriptor.scale, self.tiles, check_interrupt)
            array = (out[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            current = Image.fromarray(array)
        if current.size != (width, height):
            current = current.resize((width, height), Image.Resampling.LANCZOS)
        return current
