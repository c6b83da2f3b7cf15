"""Draw docs/embedded-model-grid.png: every shape in every colour from the shipped model, labelled.

Each picture goes through the application's normal txt2img path at default settings (Euler, 20 steps,
CFG 7, native size), with the prompt printed under it, so a person can check the model at a glance.

    python tools/render_embedded_grid.py [--out docs/embedded-model-grid.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from modules.app.cmd_args import parse_args  # noqa: E402
from modules.models.devices import DevicePolicy  # noqa: E402
from modules.io.generation_request import Txt2ImgRequest  # noqa: E402
from modules.service.model_manager import ModelManager  # noqa: E402
from modules.io.paths import Paths  # noqa: E402
from modules.pipeline.processing import txt2img  # noqa: E402
from tools.embedded_model.dataset import COLOUR_NAMES, SHAPES, with_article  # noqa: E402

CHECKPOINT = "embedded-shapes-v1.safetensors"
LABEL_HEIGHT = 28


def grid_prompts() -> list[list[tuple[str, int]]]:
    """One row per shape, one column per colour; backgrounds rotate through the other colours."""
    rows = []
    for row, shape in enumerate(SHAPES):
        cells = []
        for column, colour in enumerate(COLOUR_NAMES):
            background = COLOUR_NAMES[(column + 1 + (row * 5) % (len(COLOUR_NAMES) - 1)) % len(COLOUR_NAMES)]
            prompt = f"{with_article(colour)} {shape} on {with_article(background)} background"
            cells.append((prompt, 100 * row + column))
        rows.append(cells)
    return rows


def label(draw: ImageDraw.ImageDraw, prompt: str, x: int, y: int, font: ImageFont.ImageFont) -> None:
    words = prompt.split(" on ")
    for line, text in enumerate((words[0], "on " + words[1])):
        draw.text((x + 2, y + 2 + 12 * line), text, fill=(0, 0, 0), font=font)


def render(out: Path) -> Path:
    paths = Paths.from_args(parse_args(["--data-dir", str(ROOT)], environ={}))
    model = ModelManager(paths, DevicePolicy.cpu(), hash_files=False).get(CHECKPOINT)
    size = model.native_size
    rows = grid_prompts()
    sheet = Image.new("RGB", (size * len(rows[0]), (size + LABEL_HEIGHT) * len(rows)), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default(10)
    for r, cells in enumerate(rows):
        for c, (prompt, seed) in enumerate(cells):
            request = Txt2ImgRequest(prompt=prompt, width=size, height=size, seed=seed, save_images=False)
            image = txt2img(model, request, None).images[0]
            x, y = c * size, r * (size + LABEL_HEIGHT)
            sheet.paste(image, (x, y))
            label(draw, prompt, x, y + size, font)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "embedded-model-grid.png")
    print(render(parser.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
