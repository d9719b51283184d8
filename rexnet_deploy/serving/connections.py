"""What ``serve`` adds to uvicorn at the connection level (imported only by ``serve``, after the
serve-extra check, because it imports uvicorn):

* ``TimedHttpToolsProtocol``: limits on slow clients. uvicorn has a keep-alive idle timeout but
  none on reading a request, so a client that sends half a header, or half a body and then
  nothing, held its connection (and task) forever. Here the headers must be complete within
  ``header_timeout`` seconds of the connection (or of the request's first byte on a kept-alive
  connection), else 408 and close; the body has ``body_timeout`` seconds (the app answers 408,
  see ``request_body.read_body``), and a request answered before its body was all read (408, 413) has
  ``body_timeout`` more seconds to finish sending it before the connection is closed.
* ``DrainingServer``: at SIGINT/SIGTERM the service drains *before* uvicorn stops listening: new
  requests get 503 + Retry-After with ``Connection: close``, the requests in flight at the signal
  are answered, and only then does uvicorn's graceful shutdown run (close the listener and idle
  connections, wait for the rest, the app's shutdown: drain the batcher, close the engine).

Timeouts reach the protocol (also in ``--workers`` processes, which receive the pickled config)
as ``config.header_timeout`` / ``config.body_timeout``; the draining flag as
``server_state.draining``.
"""

from __future__ import annotations

import asyncio
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .request_body import DEFAULT_BODY_TIMEOUT

if TYPE_CHECKING:  # pragma: no cover
    from .service import Service

DEFAULT_HEADER_TIMEOUT = 10.0


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header read timeout and a bounded wait for the unread
    rest of a body (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout = float(getattr(config, "header_timeout", DEFAULT_HEADER_TIMEOUT))
        self.body_timeout = float(getattr(config, "body_timeout", DEFAULT_BODY_TIMEOUT))
        self._header_timer: asyncio.TimerHandle | None = None
        self._rest_timer: asyncio.TimerHandle | None = None
        self._message_begun = False

    # a connection that never completes its headers: from the connection, then per request
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._message_begun = True
        if self._header_timer is None:  # a later request on a kept-alive connection
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._message_begun = False
        super().on_headers_complete()
        if getattr(self.server_state, "draining", False) and self.cycle is not None:
            self.cycle.keep_alive = False  # answered (503), then closed: the server is going away

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._message_begun:  # part of a request came: say why it is closed
            msg = f"request headers not received within {self.header_timeout:g} s"
            self.transport.write(b"".join([
                STATUS_LINE[408], b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: ", str(len(msg)).encode(), b"\r\n", b"connection: close\r\n\r\n", msg.encode()]))
        self.transport.close()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    # a request answered before its body was all read (408, 413, 503): the rest may come, briefly
    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self._rest_timer = self.loop.call_later(self.body_timeout, self._rest_too_slow)

    def on_message_complete(self) -> None:
        answered = self.cycle is not None and self.cycle.response_complete
        super().on_message_complete()
        if self._rest_timer is not None:
            self._rest_timer.cancel()
            self._rest_timer = None
            if answered and not self.transport.is_closing():  # the idle wait uvicorn armed was cancelled by the data
                self._unset_keepalive_if_required()
                self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                    self.timeout_keep_alive_handler)

    def _rest_too_slow(self) -> None:
        self._rest_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._rest_timer is not None:
            self._rest_timer.cancel()
            self._rest_timer = None
        super().connection_lost(exc)


class DrainingServer(uvicorn.Server):
    """uvicorn's server that drains ``service`` at the first SIGINT/SIGTERM before shutting down
    (see the module docstring); a second signal shuts down at once, as uvicorn does."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None or not self.started:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self.service.begin_drain()  # from now on the app answers 503 (+ Retry-After)
        self.server_state.draining = True  # type: ignore[attr-defined]  # ... and closes the connection after it
        in_flight = set(self.server_state.tasks)
        self._loop.call_soon_threadsafe(self._start_drain, in_flight, sig)

    def _start_drain(self, in_flight: set[asyncio.Task], sig: int) -> None:
        self._drain_task = asyncio.ensure_future(self._drain(in_flight, sig))  # kept: a task only weakly held may vanish

    async def _drain(self, in_flight: set[asyncio.Task], sig: int) -> None:
        """Answer the requests in flight at the signal (bounded by the graceful-shutdown timeout),
        then let uvicorn shut down."""
        if in_flight:
            await asyncio.wait(in_flight, timeout=self.config.timeout_graceful_shutdown)
        super().handle_exit(sig, None)
