"""The page's own Gradio components: built-in ones that leave judging a value to the request model
(FieldSlider) or to the API's image decoder (CheckedImage). Each is drawn as the built-in it extends.

Gradio writes a type stub (components.pyi) beside any module that defines a component; it is kept
with the source, as Gradio's own components keep theirs. Keeping the classes alone in this module
keeps that stub in step with them.
"""

from __future__ import annotations

import gradio as gr
from PIL import Image, ImageOps

from modules.app.ui.field_bounds import UNCLAMPED_CLASS
from modules.app.ui.uploads import decode_data, decode_upload

from gradio.events import Dependency

class FieldSlider(gr.Slider):
    """A gr.Slider that passes any number on: the request model it is bound to validates it."""

    is_template = True  # drawn by the page as a plain gr.Slider

    def __init__(self, *, elem_classes: list[str] | None = None, **kwargs):  # keywords: Gradio drops positionals
        super().__init__(elem_classes=[*(elem_classes or []), UNCLAMPED_CLASS], **kwargs)

    def get_config(self, cls=None):
        return super().get_config(cls or gr.Slider)  # the page reads the properties gr.Slider declares

    def preprocess(self, payload: float | None) -> float | None:
        return None if payload is None else gr.Number.round_to_precision(payload, self.precision)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class CheckedImage(gr.Image):
    """A gr.Image (type "pil") whose upload is decoded as the API decodes request field `field`."""

    is_template = True  # drawn by the page as a plain gr.Image

    def __init__(self, *, field: str, **kwargs):  # keywords only: Gradio's constructor wrapper drops positionals
        super().__init__(type="pil", **kwargs)
        self.field = field

    def get_config(self, cls=None):
        return super().get_config(cls or gr.Image)  # the page reads the properties gr.Image declares

    def preprocess(self, payload) -> Image.Image | None:
        if payload is None:
            return None
        if payload.path is not None:
            image = decode_upload(payload.path, self.field)
        elif payload.url and payload.url.startswith("data:"):
            image = decode_data(payload.url, self.field)
        else:
            return super().preprocess(payload)
        # As Gradio's own decoding does: a photo's EXIF rotation applied, the component's mode given.
        image = ImageOps.exif_transpose(image)
        return image.convert(self.image_mode) if self.image_mode and image.mode != self.image_mode else image
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component