"""The `/sdapi/v1` routes: AUTOMATIC1111's paths, request fields and response shapes.

Every request is validated completely (fields, images, names the server must know) before it is
queued; a bad one is a 422 naming the field. Generation and anything else that uses the device
runs as a job on the one queue; the routes wait for their job without holding a thread.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from modules.app.api import listings
from modules.app.api.auth import basic_auth_dependency
from modules.app.api.generation import (FieldError, build_response, check_names, request_notes, to_img2img,
                                    to_txt2img)
from modules.app.api.images import ImageFieldError, decode_image, encode_png
from modules.app.api.models import (EmbeddingsResponse, ExtrasBatchImagesRequest, ExtrasBatchImagesResponse,
                                ExtrasSingleImageRequest, ExtrasSingleImageResponse, FaceRestorerItem,
                                GenerationResponse, Img2ImgApiRequest, LatentUpscalerModeItem, LoraItem,
                                MemoryResponse, PNGInfoRequest, PNGInfoResponse, ProgressResponse,
                                PromptStyleItem, SamplerItem, SchedulerItem, ScriptsList, SDModelItem,
                                SDVaeItem, Txt2ImgApiRequest, UpscalerItem)
from modules.app.api.progress import progress_of
from modules.service.generation_service import GenerationService
from modules.io.extras_request import ExtrasFieldError, ExtrasRequest, ExtrasSource
from modules.io.image_saving import read_parameters
from modules.io.infotext import parse_generation_parameters
from modules.service.jobs import Job, JobInterrupted, QueueView
from modules.service.failures import (MODEL_FILE_ERRORS, SELF_EXPLAINING_FAILURES, JobIdInUseError, QueueFullError,
                                      UnknownCheckpointError, is_out_of_memory)
from modules.service.settings_store import path_valued_keys
from modules.app.short_errors import json_safe, short_message

log = logging.getLogger(__name__)

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@dataclass
class ApiContext:
    service: GenerationService
    args: argparse.Namespace
    credentials: list[tuple[str, str]]

    @property
    def catalog(self):
        return self.service.catalog

    @property
    def queue(self):
        return self.service.queue


# ---- errors -------------------------------------------------------------------------------------

def _unprocessable(loc: tuple, message: str) -> HTTPException:
    return HTTPException(422, [{"loc": ["body", *loc], "msg": short_message(message), "type": "value_error"}])


def http_error(error: BaseException, checkpoint_field: tuple = ("override_settings", "sd_model_checkpoint"),
               loc_prefix: tuple = ()) -> HTTPException:
    """The status a failure means to a client; never a traceback."""
    if isinstance(error, HTTPException):
        return error
    if isinstance(error, ValidationError):
        return HTTPException(422, json_safe([{"loc": ["body", *loc_prefix, *e["loc"]], "msg": short_message(e["msg"]),
                                              "type": e["type"]}
                                             for e in error.errors(include_url=False, include_context=False,
                                                                   include_input=False)]))
    if isinstance(error, ImageFieldError):
        return _unprocessable(tuple(error.field.split(".")), error.message)
    if isinstance(error, FieldError):
        return _unprocessable(error.loc, error.message)
    if isinstance(error, UnknownCheckpointError):
        return _unprocessable(checkpoint_field, str(error))
    if isinstance(error, QueueFullError):
        return HTTPException(429, str(error), headers={"Retry-After": str(error.retry_after)})
    if isinstance(error, JobIdInUseError):
        return HTTPException(409, str(error))
    if isinstance(error, JobInterrupted):
        return HTTPException(409, "the job was interrupted")
    if isinstance(error, MODEL_FILE_ERRORS):
        return HTTPException(503, str(error))
    if is_out_of_memory(error):
        return HTTPException(503, "the device ran out of memory for this job; try a smaller size or batch "
                                  "(the server keeps running)")
    if isinstance(error, SELF_EXPLAINING_FAILURES):
        return HTTPException(500, str(error))
    if isinstance(error, ValueError):  # the request asked for something the pipeline refuses (prompt syntax, ...)
        return _unprocessable((), str(error))
    log.error("API request failed: %r", error)
    return HTTPException(500, f"internal error ({type(error).__name__}); see the server log")


DISCONNECT_POLL_S = 0.5


@dataclass
class Client:
    """The connection a job's answer goes to; when it closes first, the job goes with it (dropped
    from the queue, or interrupted when running), unless --keep-abandoned-jobs."""

    request: Request
    queue: QueueView

    @classmethod
    def of(cls, request: Request, ctx: ApiContext) -> Client | None:
        return None if ctx.args.keep_abandoned_jobs else cls(request, ctx.queue)

    async def gone(self) -> None:
        """Returns once the client has closed its connection."""
        while not await self.request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)

    def abandon(self, job: Job) -> None:
        self.queue.abandon(job, "its client went away")


async def wait_for(job: Job, client: Client | None = None) -> Any:
    """The job's result, awaited without holding a worker thread of the server. With `client`, a
    client that disconnects first abandons the job; nobody is left to answer (HTTP 499)."""
    loop = asyncio.get_running_loop()
    finished = loop.create_future()

    def on_done(_job: Job) -> None:
        loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))

    job.add_done_callback(on_done)
    if client is None:
        await finished
    else:
        gone = asyncio.ensure_future(client.gone())
        try:
            await asyncio.wait({finished, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not finished.done():
            client.abandon(job)
            raise HTTPException(499, "the client closed the connection")
    return job.wait(0)


async def run_job(submit, client: Client | None = None) -> tuple[Job, Any]:
    try:
        job = submit()
    except Exception as e:
        raise http_error(e) from None
    try:
        return job, await wait_for(job, client)
    except Exception as e:
        raise http_error(e) from None


# ---- request guards -----------------------------------------------------------------------------

def same_origin(request: Request) -> None:
    """A web page elsewhere must not make the browser post here (CORS hides answers, not effects)."""
    if request.method in SAFE_METHODS:
        return
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise HTTPException(403, "cross-site request refused")
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, "cross-origin request refused")


def _job_for_control(ctx: ApiContext, id_task: str | None, user: str | None) -> Job | None:
    job = ctx.queue.get(id_task) if id_task else ctx.queue.current
    if id_task and job is None:
        raise HTTPException(404, f"no job {id_task!r}")
    if job is not None and user is not None and job.owner not in (None, user):
        raise HTTPException(403, "that job belongs to another user")
    return job


# ---- the router ---------------------------------------------------------------------------------

def create_api_router(ctx: ApiContext) -> APIRouter:
    login = basic_auth_dependency(ctx.credentials)
    router = APIRouter(prefix="/sdapi/v1", tags=["sdapi"], dependencies=[Depends(login), Depends(same_origin)])
    _generation_routes(router, ctx, login)
    _control_routes(router, ctx, login)
    _options_routes(router, ctx)
    _listing_routes(router, ctx)
    _model_routes(router, ctx)
    _extras_routes(router, ctx)
    return router


def _generation_routes(router: APIRouter, ctx: ApiContext, login) -> None:
    service = ctx.service

    async def generate(api: Txt2ImgApiRequest, user: str | None, prepare, client: Client | None) -> GenerationResponse:
        if refused := path_valued_keys(api.override_settings or {}):
            raise HTTPException(403, f"path and file name settings cannot be changed over the network: "
                                     f"{', '.join(sorted(refused))}")
        try:
            _, ignored = service.settings.validate_changes(api.override_settings)
        except ValidationError as e:
            raise http_error(e, loc_prefix=("override_settings",)) from None
        try:
            check_names(api, ctx.catalog)
            request = await run_in_threadpool(prepare, api)
        except Exception as e:
            raise http_error(e) from None
        notes = request_notes(api, ignored)
        job, generated = await run_job(lambda: service.submit(
            request, overrides=api.override_settings,
            persist_overrides=not api.override_settings_restore_afterwards,
            job_id=api.force_task_id, owner=user, save=api.save_images), client)
        init_images = getattr(request, "init_images", None)
        return await run_in_threadpool(build_response, api, generated, job.id, notes, init_images)

    @router.post("/txt2img", response_model=GenerationResponse)
    async def text2imageapi(api: Txt2ImgApiRequest, request: Request, user: str | None = Depends(login)):
        return await generate(api, user, to_txt2img, Client.of(request, ctx))

    @router.post("/img2img", response_model=GenerationResponse)
    async def img2imgapi(api: Img2ImgApiRequest, request: Request, user: str | None = Depends(login)):
        return await generate(api, user, to_img2img, Client.of(request, ctx))

    @router.post("/png-info", response_model=PNGInfoResponse)
    def pnginfoapi(req: PNGInfoRequest):
        try:
            image = decode_image(req.image, "image")
        except ImageFieldError as e:
            raise http_error(e) from None
        info = read_parameters(image) or ""
        items = {k: v for k, v in image.info.items() if k != "parameters" and isinstance(v, (str, int, float))}
        return PNGInfoResponse(info=info, items=items, parameters=parse_generation_parameters(info) if info else {})


def _control_routes(router: APIRouter, ctx: ApiContext, login) -> None:
    @router.get("/progress", response_model=ProgressResponse)
    def progressapi(skip_current_image: bool = False, id_task: str | None = Query(None, max_length=64)):
        job = ctx.queue.get(id_task) if id_task else ctx.queue.current
        # The preview the worker made, if the job's settings asked for one; nothing is decoded here.
        answer = progress_of(job, ctx.queue, not skip_current_image)
        return answer.model_copy(update={"warmup": ctx.service.warmup_note()})

    @router.post("/interrupt")
    def interruptapi(id_task: str | None = Query(None, max_length=64), user: str | None = Depends(login)):
        job = _job_for_control(ctx, id_task, user)
        if job is not None:
            job.interrupt()
        return {}

    @router.post("/skip")
    def skip(id_task: str | None = Query(None, max_length=64), user: str | None = Depends(login)):
        job = _job_for_control(ctx, id_task, user)
        if job is not None:
            job.skip()
        return {}


def _options_routes(router: APIRouter, ctx: ApiContext) -> None:
    service = ctx.service

    @router.get("/options", response_model=dict[str, Any])
    def get_config():
        return listings.options(service)

    @router.post("/options")
    async def set_config(req: dict[str, Any] = Body(...)):
        if refused := path_valued_keys(req):
            raise HTTPException(403, f"path and file name settings cannot be changed over the network: "
                                     f"{', '.join(sorted(refused))}")
        try:
            settings, ignored = service.settings.validate_changes(req)
            if "sd_model_checkpoint" in req and settings.sd_model_checkpoint:
                req = {**req, "sd_model_checkpoint": ctx.catalog.checkpoint_title(settings.sd_model_checkpoint)}
        except Exception as e:
            raise http_error(e, checkpoint_field=("sd_model_checkpoint",)) from None
        if ignored:
            log.info("Options not known here, ignored: %s", ", ".join(map(str, ignored)))
        service.settings.update(req)
        if {"sd_model_checkpoint", "sd_vae"} & set(req):
            await run_job(lambda: service.load_model())  # applied between jobs, as a job
        return None

    @router.get("/cmd-flags", response_model=dict[str, Any])
    def get_cmd_flags():
        return listings.cmd_flags(ctx.args)


def _listing_routes(router: APIRouter, ctx: ApiContext) -> None:
    catalog = ctx.catalog
    router.get("/samplers", response_model=list[SamplerItem])(listings.samplers)
    router.get("/schedulers", response_model=list[SchedulerItem])(listings.schedulers)
    router.get("/latent-upscale-modes", response_model=list[LatentUpscalerModeItem])(listings.latent_upscale_modes)
    router.get("/scripts", response_model=ScriptsList)(lambda: ScriptsList())
    router.get("/memory", response_model=MemoryResponse)(listings.memory)
    router.get("/upscalers", response_model=list[UpscalerItem])(lambda: listings.upscalers_list(catalog))
    router.get("/sd-models", response_model=list[SDModelItem])(lambda: listings.sd_models(catalog))
    router.get("/sd-vae", response_model=list[SDVaeItem])(lambda: listings.sd_vaes(catalog))
    router.get("/face-restorers", response_model=list[FaceRestorerItem])(lambda: listings.face_restorers(catalog))
    router.get("/prompt-styles", response_model=list[PromptStyleItem])(lambda: listings.prompt_styles(catalog))
    router.get("/embeddings", response_model=EmbeddingsResponse)(lambda: listings.embeddings(catalog))
    router.get("/loras", response_model=list[LoraItem])(lambda: listings.loras(catalog))


def _model_routes(router: APIRouter, ctx: ApiContext) -> None:
    catalog, service = ctx.catalog, ctx.service

    def refresh():
        catalog.refresh()
        return None

    for path in ("/refresh-checkpoints", "/refresh-vae", "/refresh-loras", "/refresh-embeddings"):
        router.post(path)(refresh)

    @router.post("/unload-checkpoint")
    async def unloadapi():
        await run_job(service.unload_model)
        return None

    @router.post("/reload-checkpoint")
    async def reloadapi():
        await run_job(service.load_model)
        return None


def _extras_routes(router: APIRouter, ctx: ApiContext) -> None:
    """Nothing is saved, as in AUTOMATIC1111's API; each result carries its source's parameters."""

    def submit(req: ExtrasRequest, images: list[tuple[str, str]]):
        sources = [ExtrasSource.of(decode_image(data, field), field) for field, data in images]
        try:
            return ctx.service.submit_extras(req, sources, save=False)
        except ExtrasFieldError as e:
            raise FieldError(e.field, e.message) from None

    async def run(req: ExtrasRequest, images: list[tuple[str, str]], request: Request) -> list:
        try:
            job = await run_in_threadpool(submit, req, images)
        except Exception as e:
            raise http_error(e) from None
        _, outputs = await run_job(lambda: job, Client.of(request, ctx))
        return outputs

    def html_info(output) -> str:
        return "\n".join([output.info, *output.notes]).strip()

    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    async def extras_single_image_api(req: ExtrasSingleImageRequest, request: Request):
        [output] = await run(req, [("image", req.image)], request)
        return ExtrasSingleImageResponse(html_info=html_info(output),
                                         image=await run_in_threadpool(encode_png, output.image,
                                                                       output.source_parameters))

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    async def extras_batch_images_api(req: ExtrasBatchImagesRequest, request: Request):
        outputs = await run(req, [(f"imageList.{i}.data", item.data) for i, item in enumerate(req.imageList)],
                            request)
        images = await run_in_threadpool(lambda: [encode_png(o.image, o.source_parameters) for o in outputs])
        return ExtrasBatchImagesResponse(html_info="\n".join(html_info(o) for o in outputs), images=images)
