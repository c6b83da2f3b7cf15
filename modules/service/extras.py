"""Extras as a queue job: what the Extras tab, the API's extras routes and the Midjourney grid's U1-U4
submit (through GenerationService.submit_extras), checked before queueing and run on the worker
with the model manager's upscalers and face restorers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from modules.io import image_saving
from modules.io.extras_request import ExtrasRequest, ExtrasSource
from modules.io.image_saving import ImageFacts, SaveOptions
from modules.postprocess.extras import run_extras
from modules.service.job_queue import Job
from modules.service.model_manager import ModelManager


@dataclass
class ExtrasOutput:
    image: Image.Image
    info: str  # what extras did, as AUTOMATIC1111's html_info words it ("Postprocess upscaler: ...")
    source_parameters: str | None  # the source image's infotext
    notes: list[str] = field(default_factory=list)  # what was asked for but could not be done, and why
    path: Path | None = None  # the saved file, when saving was asked for

    @property
    def infotext(self) -> str:
        """The source's parameters followed by what extras did: what the saved file carries."""
        return ", ".join(part for part in (self.source_parameters, self.info) if part)


def extras_work(request: ExtrasRequest, sources: Sequence[ExtrasSource], manager: ModelManager,
                save: SaveOptions | None) -> Callable[[Job], list[ExtrasOutput]]:
    """The job: each source post-processed, and saved to outputs/extras-images when `save` is given."""
    def work(job: Job) -> list[ExtrasOutput]:
        outputs = []
        for source in sources:
            result = run_extras(source.image, request, manager.upscalers, manager.face_restorers, job.check_interrupt)
            output = ExtrasOutput(result.image, result.info, source.parameters, result.notes)
            if save is not None:
                output.path = image_saving.save_image(output.image, save, "extras", ImageFacts(seed=source.seed or 0),
                                                      output.infotext or None)
            outputs.append(output)
        return outputs

    return work
