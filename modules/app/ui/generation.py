"""What txt2img and img2img share: from a finished job to what the results area shows."""

from __future__ import annotations

from modules.service.generation_service import Generated
from modules.app.ui.results import ResultItem, Results


def results_of(generated: Generated) -> Results:
    result = generated.result
    paths = list(result.paths) + [None] * (len(result.images) - len(result.paths))
    items = [ResultItem(image, infotext, path, seed)
             for image, infotext, path, seed in zip(result.images, result.infotexts, paths, result.seeds)]
    folder = result.paths[0].parent if result.paths else None
    return Results(items=items, request=generated.request, folder=folder)


def notes_of(generated: Generated) -> str:
    return " · ".join(generated.result.warnings)
