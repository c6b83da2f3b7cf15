"""What the read-only `/sdapi/v1` routes list, built from the registries and the service's catalog."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch

from modules.service.catalog import Catalog
from modules.service.generation_service import GenerationService
from modules.sampling.registry import SAMPLER_SPECS
from modules.sampling.schedules import SCHEDULE_SPECS

REDACTED = "<redacted>"
_SECRET_FLAG = re.compile(r"auth|password|secret|token|key", re.IGNORECASE)


def cmd_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags; logins and anything else secret-looking only say that they are set."""
    return {key: (REDACTED if value is not None and _SECRET_FLAG.search(key) else value)
            for key, value in vars(args).items()}


def options(service: GenerationService) -> dict[str, Any]:
    values = service.settings.current.model_dump()
    if not values["sd_model_checkpoint"]:
        try:
            values["sd_model_checkpoint"] = service.checkpoint_for(service.settings.current).title
        except Exception:  # no checkpoint present: the option stays empty
            pass
    return values


def samplers() -> list[dict[str, Any]]:
    return [{"name": spec.name, "aliases": list(spec.aliases),
             "options": {"scheduler": spec.default_schedule} if spec.default_schedule else {}}
            for spec in SAMPLER_SPECS]


def schedulers() -> list[dict[str, Any]]:
    return [{"name": spec.name, "label": spec.label, "aliases": list(spec.aliases) or None}
            for spec in SCHEDULE_SPECS]


def latent_upscale_modes() -> list[dict[str, str]]:
    return [{"name": name} for name in Catalog.latent_modes]


def upscalers_list(catalog: Catalog) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [{"name": name} for name in catalog.pixel_resamplers]
    items += [{"name": f.name, "model_name": f.path.stem, "model_path": str(f.path)} for f in catalog.upscaler_files]
    return items


def sd_models(catalog: Catalog) -> list[dict[str, Any]]:
    def config(path: Path) -> str | None:
        sidecar = path.with_suffix(".yaml")
        return str(sidecar) if sidecar.is_file() else None

    return [{"title": c.title, "model_name": c.model_name, "hash": c.shorthash, "sha256": c.sha256,
             "filename": str(c.path), "config": config(c.path)} for c in catalog.checkpoints]


def sd_vaes(catalog: Catalog) -> list[dict[str, str]]:
    return [{"model_name": v.name, "filename": str(v.path)} for v in catalog.vaes]


def face_restorers(catalog: Catalog) -> list[dict[str, Any]]:
    return catalog.face_restorer_listing()


def prompt_styles(catalog: Catalog) -> list[dict[str, str]]:
    return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
            for s in catalog.styles().values()]


def embeddings(catalog: Catalog) -> dict[str, Any]:
    return catalog.embedding_listing()


def loras(catalog: Catalog) -> list[dict[str, Any]]:
    return catalog.lora_listing()


def memory() -> dict[str, Any]:
    import psutil

    ram = psutil.virtual_memory()
    result: dict[str, Any] = {"ram": {"free": ram.available, "used": ram.total - ram.available, "total": ram.total}}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        result["cuda"] = {"system": {"free": free, "used": total - free, "total": total},
                          "active": {"current": torch.cuda.memory_allocated(),
                                     "peak": torch.cuda.max_memory_allocated()}}
    else:
        result["cuda"] = {"error": "CUDA is not available"}
    return result
