"""Reading one HTTP request's body within its limits, and the errors of a bad request: shared by
the /v1 routes (:mod:`.app`), the Open Inference Protocol routes (:mod:`.oip`) and the connection
protocol (:mod:`.connections`), which all import it and nothing of each other's."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request

from ..errors import RexnetDeployError

DEFAULT_MAX_BODY = 16 * 1024 * 1024  # a large photo fits; a float32 224x224 tensor is 0.6 MB as .npy, ~3 MB as JSON
DEFAULT_BODY_TIMEOUT = 30.0  # seconds from the headers to the end of the body (serve --body-timeout)


class BodyTooLarge(RexnetDeployError):
    """A request body over the app's limit (HTTP 413)."""


class RequestError(RexnetDeployError):
    """A bad HTTP request (its status is 4xx), beyond bad input data."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to pass ``limit`` (declared length first,
    then counted while streaming, for chunked uploads), and with 408 when it has not all arrived
    ``body_timeout`` seconds after the headers (``app.state.body_timeout``; a client that stops
    sending half-way holds no task, memory or connection past it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
    timeout = getattr(request.app.state, "body_timeout", DEFAULT_BODY_TIMEOUT)
    deadline = time.monotonic() + timeout
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - time.monotonic()))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise RequestError(408, f"the request body did not arrive within {timeout:g} s "
                                    f"({size} bytes received)") from None
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()
