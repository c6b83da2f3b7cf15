"""What img2img and inpainting start from, and how their result goes back into the init image.

    init image (+ mask) -> resized / cropped to the processing size -> init latent (+ masked-content fill)
    generated image -> pasted back where it was cropped -> composited onto the original outside the mask
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from modules.io.generation_request import Img2ImgRequest
from modules.models.sd_model import StableDiffusionModel
from modules.pipeline import image_prep
from modules.pipeline.latent_sampling import InitLatent, NoiseSettings
from modules.pipeline.vae_codec import encode_pixels, image_to_tensor, inpainting_conditioning
from modules.postprocess import upscalers
from modules.sampling.rng import ImageRNG


@dataclass
class InitImage:
    """The init image and mask at processing size, and how to put the result back."""

    image: Image.Image  # at width x height
    mask: Image.Image | None  # at width x height, blurred, white = repaint
    original: Image.Image  # the full init image
    full_mask: Image.Image | None  # the blurred mask at the original size
    crop_box: tuple[int, int, int, int] | None  # "only masked": where the processed image goes back


def prepare_init_image(request: Img2ImgRequest) -> InitImage:
    original = request.init_images[0].convert("RGB")
    if request.mask is None:
        image = image_prep.resize_image(image_prep.ResizeMode(request.resize_mode), original,
                                        request.width, request.height)
        return InitImage(image, None, original, None, None)
    full_mask = image_prep.prepare_mask(request.mask.resize(original.size), request.mask_blur,
                                        bool(request.inpainting_mask_invert))
    if request.inpaint_full_res:
        box = image_prep.masked_region(full_mask, request.inpaint_full_res_padding)
        if box is not None:
            box = image_prep.expand_to_aspect(box, request.width, request.height, *original.size)
            image = original.crop(box).resize((request.width, request.height), image_prep.LANCZOS)
            mask = full_mask.crop(box).resize((request.width, request.height), image_prep.LANCZOS)
            return InitImage(image, mask, original, full_mask, box)
    mode = image_prep.ResizeMode(request.resize_mode)
    image = image_prep.resize_image(mode, original, request.width, request.height)
    mask = image_prep.resize_image(mode, full_mask.convert("RGB"), request.width, request.height).convert("L")
    return InitImage(image, mask, original, full_mask if mode == image_prep.ResizeMode.JUST_RESIZE and
                     original.size == (request.width, request.height) else None, None)


def put_back(init: InitImage, generated: Image.Image) -> Image.Image:
    """Composite onto the original so pixels outside the mask stay exactly as they were."""
    if init.mask is None:
        return generated
    if init.crop_box is not None:
        x1, y1, x2, y2 = init.crop_box
        pasted = init.original.copy()
        pasted.paste(generated.resize((x2 - x1, y2 - y1), image_prep.LANCZOS), (x1, y1))
        return image_prep.composite(init.original, pasted, init.full_mask)
    if init.full_mask is not None:
        return image_prep.composite(init.original, generated, init.full_mask)
    return image_prep.composite(init.image, generated, init.mask)


def init_latent(model: StableDiffusionModel, request: Img2ImgRequest, init: InitImage, batch: int,
                noise: NoiseSettings) -> tuple[InitLatent, torch.Tensor | None]:
    """The batch's start latent (masked content filled as the request says) and, for 9-channel
    checkpoints, their image conditioning."""
    source = init.image
    if init.mask is not None and request.inpainting_fill == image_prep.MaskedContent.FILL:
        source = image_prep.fill_masked(source, init.mask)
    pixels = image_to_tensor(source)
    if request.resize_mode == image_prep.ResizeMode.LATENT_UPSCALE and init.mask is None:
        latent = upscalers.upscale_latent(encode_pixels(model, image_to_tensor(init.original)), "Latent",
                                          request.height, request.width)
    else:
        latent = encode_pixels(model, pixels)
    latent = latent.repeat(batch, 1, 1, 1)
    mask_pixels = None
    keep = None
    if init.mask is not None:
        mask_pixels = torch.from_numpy(np.asarray(init.mask, dtype=np.float32) / 255)[None, None]
        latent_mask = torch.nn.functional.interpolate(mask_pixels, size=latent.shape[2:], mode="bilinear")
        latent_mask = latent_mask.round()  # AUTOMATIC1111 rounds the latent mask (no soft inpainting)
        keep = (1 - latent_mask).to(latent.device)
        if request.inpainting_fill == image_prep.MaskedContent.LATENT_NOISE:
            fresh = ImageRNG(tuple(latent.shape[1:]), [s + 1 for s in noise.seeds], source=noise.source).first()
            latent = latent * keep + fresh.to(latent.device) * (1 - keep)
        elif request.inpainting_fill == image_prep.MaskedContent.LATENT_NOTHING:
            latent = latent * keep
    image_cond = inpainting_conditioning(model, image_to_tensor(init.image), mask_pixels, batch)
    return InitLatent(latent, request.denoising_strength, keep_mask=keep), image_cond


def mask_infotext(request: Img2ImgRequest, init: InitImage) -> dict[str, object]:
    """The infotext fields of inpainting (none without a mask)."""
    if init.mask is None:
        return {}
    return {"Mask blur": request.mask_blur,
            "Masked content": image_prep.MASKED_CONTENT_NAMES[request.inpainting_fill],
            "Inpaint area": "Only masked" if request.inpaint_full_res else None,
            "Masked area padding": request.inpaint_full_res_padding if request.inpaint_full_res else None,
            "Mask mode": "Inpaint not masked" if request.inpainting_mask_invert else None}
