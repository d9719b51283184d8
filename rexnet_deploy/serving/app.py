"""The HTTP API (Starlette, served by uvicorn) over a :class:`~.service.Service`.

* ``POST /v1/predict[?topk=5]``: one image — the raw file bytes as the body (any image content
  type or none), or ``multipart/form-data`` with one file field — → ``{"predictions": [{index,
  label, score}, ...]}``. Classify engines only.
* ``POST /v1/infer``: one preprocessed float32 tensor (C, H, W) or (1, C, H, W), for clients
  that preprocess themselves — an ``application/x-npy`` body (``numpy.save``) or JSON
  ``{"input": nested lists}`` — → ``{"outputs": {name: [...]}}``; with ``Accept:
  application/x-npy`` the (single) output row comes back as an .npy body.
* ``GET /healthz``: 200 once the engine is loaded and warmed at every batch size the batcher runs;
  503 while loading or draining. ``GET /metrics``: Prometheus text (see :mod:`.metrics`).

Every error is JSON ``{"error": message, "type": class}`` with a 4xx code for bad requests (400
bad input, 413 body or image too large, 415 wrong content type or image format), 503 when overloaded or shutting down, and
a 500 that names only the exception type (no traceback) for a failure of ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..engine import topk_predictions
from ..errors import InputError, Overloaded, ServiceClosed, UsageError, one_line
from .oip import oip_routes
from .request_body import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY, BodyTooLarge, RequestError, media_type, read_body
from .service import Service

log = logging.getLogger("rexnet_deploy.serving")
NPY = "application/x-npy"
MAX_TOPK = 1000


def _status_of(exc: BaseException) -> int:
    from ..errors import ImageTooLarge, UnsupportedImageFormat

    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, (BodyTooLarge, ImageTooLarge)):
        return 413
    if isinstance(exc, UnsupportedImageFormat):
        return 415
    if isinstance(exc, (Overloaded, ServiceClosed)):
        return 503
    if isinstance(exc, (InputError, UsageError)):
        return 400
    return 500


def _error(status: int, message: str, kind: str) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message, "type": kind}, status_code=status, headers=headers)


async def _image_bytes(request: Request, limit: int) -> bytes:
    body = await read_body(request, limit)
    kind = media_type(request)
    if kind == "multipart/form-data":
        async def replay() -> dict[str, Any]:  # the form parser reads the (already limited) body again
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
        except HTTPException as exc:  # python-multipart's parse errors, and more than one file
            raise RequestError(400, f"bad multipart body: {exc.detail}") from None
        files = [v for v in form.values() if hasattr(v, "read")]
        if not files:
            raise RequestError(400, "multipart body has no file field: send the image as a file (e.g. -F image=@photo.jpg)")
        return await files[0].read()
    if kind in ("application/json", NPY) or kind.startswith("text/"):
        raise RequestError(415, f"/v1/predict takes image bytes or multipart/form-data, not {kind}"
                              + (" (send tensors to /v1/infer)" if kind in ("application/json", NPY) else ""))
    return body


def _tensor(body: bytes, kind: str) -> np.ndarray:
    from .inputs import json_body, json_tensor, npy_body

    if kind == NPY or (kind in ("", "application/octet-stream") and body[:6] == b"\x93NUMPY"):
        return npy_body(body)  # never unpickles, and checks the declared shape against the body first
    if kind == "application/json":
        doc = json_body(body)  # depth-limited: a [[[...]]] 100k deep is a 400, not a RecursionError
        data = doc.get("input") if isinstance(doc, dict) else doc
        if data is None:
            raise InputError('JSON body must be {"input": [[[...]]]} (a C x H x W nested list)')
        return json_tensor(data)
    raise RequestError(415, f"/v1/infer takes {NPY} (numpy.save) or application/json, not {kind or 'no content type'}")


def _topk(request: Request) -> int:
    raw = request.query_params.get("topk", "5")
    try:
        k = int(raw)
    except ValueError:
        raise RequestError(400, f"topk must be an integer, got {raw!r}") from None
    if not 1 <= k <= MAX_TOPK:
        raise RequestError(400, f"topk must be in 1..{MAX_TOPK}, got {k}")
    return k


Handler = Callable[[Request], Awaitable[Response]]


def create_app(service: Service | str | os.PathLike, *, max_body_bytes: int = DEFAULT_MAX_BODY,
               **service_options: Any) -> Starlette:
    """The ASGI app. ``service``: a :class:`Service` (started or not) or an artifact path, with
    ``service_options`` for it. Startup loads and warms the engine (unless already done);
    shutdown answers what is queued and closes what the service opened."""
    if not isinstance(service, Service):
        service = Service(service, **service_options)
    elif service_options:
        raise UsageError(f"options {', '.join(service_options)} go to the Service, not create_app, when a Service is given")
    metrics = service.metrics

    def endpoint(name: str, fn: Handler) -> Handler:
        """Count, time and turn every error into a JSON answer (never a traceback)."""
        async def handle(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                if not service.ready:
                    raise ServiceClosed(f"the service is {service.state}, not ready")
                response = await fn(request)
            except asyncio.CancelledError:
                raise  # the client went away; there is no one to answer
            except Exception as exc:
                status = _status_of(exc)
                if status == 500:
                    log.error("%s failed: %s: %s", name, type(exc).__name__, one_line(exc), exc_info=exc)
                    message = f"internal error ({type(exc).__name__}); see the server log"
                else:
                    message = one_line(exc)
                metrics.errors.labels(name, type(exc).__name__).inc()
                response = _error(status, message, type(exc).__name__)
            metrics.requests.labels(name, str(response.status_code)).inc()
            metrics.latency.labels(name).observe(time.perf_counter() - t0)
            return response
        return handle

    async def predict(request: Request) -> Response:
        topk = _topk(request)
        if service.engine.head != "classify":
            raise RequestError(400, f"this engine has the {service.engine.head!r} head: use /v1/infer")
        row = await service.batcher.submit_async(await _image_bytes(request, max_body_bytes))
        preds = topk_predictions(row[None], topk, service.engine.labels)[0]
        return JSONResponse({"predictions": [p.to_dict() for p in preds]})

    async def infer(request: Request) -> Response:
        body = await read_body(request, max_body_bytes)
        x = _tensor(body, media_type(request))
        if x.dtype.kind != "f":  # the batcher would take a uint8 array for an image: not here
            raise InputError(f"/v1/infer takes a float32 tensor, got {x.dtype} (send images to /v1/predict)")
        out = await service.batcher.submit_async(x)
        outputs = out if isinstance(out, tuple) else (out,)
        if NPY in request.headers.get("accept", ""):
            if len(outputs) != 1:
                raise RequestError(406, f"this engine has {len(outputs)} outputs: ask for JSON")
            buf = io.BytesIO()
            np.save(buf, outputs[0], allow_pickle=False)
            return Response(buf.getvalue(), media_type=NPY)
        return JSONResponse({"outputs": {n: o.tolist() for n, o in zip(service.engine.output_names, outputs)}})

    async def healthz(request: Request) -> Response:
        """200 when ready; 503 (+ Retry-After) while loading, draining or stopped."""
        ready = service.ready
        return JSONResponse(service.describe(), status_code=200 if ready else 503,
                            headers=None if ready else {"Retry-After": "1"})

    async def metrics_page(request: Request) -> Response:
        # several workers: reads every worker's files, so not on the event loop
        data, content_type = await asyncio.to_thread(metrics.render) if metrics.multiprocess else metrics.render()
        return Response(data, headers={"Content-Type": content_type})

    async def http_error(request: Request, exc: Exception) -> Response:  # 404, 405 as JSON too
        status = getattr(exc, "status_code", 500)
        return _error(status, str(getattr(exc, "detail", "error")), "HTTPError")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # a service that ``serve`` is loading in the background (state "loading") is not waited
        # for: the server listens at once and answers 503 until it is ready
        if service.state == "stopped":
            await asyncio.to_thread(service.start)
        try:
            yield
        finally:
            await asyncio.to_thread(service.stop)
            metrics.process_exited()

    app = Starlette(routes=[
        Route("/v1/predict", endpoint("predict", predict), methods=["POST"]),
        Route("/v1/infer", endpoint("infer", infer), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
        *oip_routes(service, endpoint, max_body_bytes),  # Open Inference Protocol v2 (see .oip)
    ], exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.service = service
    return app


def app_from_env() -> Starlette:
    """uvicorn's factory for ``serve --workers N``: each worker process builds its own app (and
    loads its own engine) from the JSON settings the CLI left in ``REXNET_DEPLOY_SERVE``."""
    settings = json.loads(os.environ["REXNET_DEPLOY_SERVE"])
    body_timeout = settings.pop("body_timeout", DEFAULT_BODY_TIMEOUT)
    app = create_app(settings.pop("engine"), **settings)
    app.state.body_timeout = body_timeout
    return app
