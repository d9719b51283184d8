"""The build log: one protocol for every long-running library call (build, matrix, sensitivity).

Ground floor: no imports beyond the standard library, so any module can take a ``BuildLog``.

* ``log(message)`` — one line of what is happening;
* ``log.progress(description, done, total)`` — a count (the one progress signature in this
  package: harness ``check``/``bench``/``end_to_end`` and the calibration loader take a
  :data:`Progress` with the same arguments);
* ``log.quiet`` — libraries that draw their own output (NNCF's progress bars) stay silent;
* ``with log.paused():`` — stop any spinner while such a library draws.

:class:`BuildLog` itself is the null log (silent); the CLI supplies a rich one. A plain
``Callable[[str], None]`` (e.g. ``messages.append``) is accepted wherever a log is, via
:func:`as_build_log`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Union

Progress = Callable[[str, int, "int | None"], None]  # (description, done, total)


class BuildLog:
    """The null log: messages and progress go nowhere. Subclasses override what they show."""

    quiet: bool = True

    def __call__(self, message: str) -> None:
        """One line of what is happening."""

    def progress(self, description: str, done: int, total: int | None) -> None:
        """``done`` of ``total`` (None: unknown) steps of ``description``."""

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stop drawing (a spinner) while a library prints its own progress."""
        yield

    def prefixed(self, prefix: str) -> "BuildLog":
        """This log with ``prefix: `` before each message (matrix: one engine of many)."""
        return _Prefixed(self, prefix)


class _Callable(BuildLog):
    """A plain function as a log: it receives the messages; progress is dropped."""

    quiet = False  # a caller that collects messages still wants libraries' own output

    def __init__(self, fn: Callable[[str], None]):
        self._fn = fn

    def __call__(self, message: str) -> None:
        self._fn(message)


class _Prefixed(BuildLog):
    def __init__(self, inner: BuildLog, prefix: str):
        self._inner, self._prefix = inner, prefix
        self.quiet = inner.quiet

    def __call__(self, message: str) -> None:
        self._inner(f"{self._prefix}: {message}")

    def progress(self, description: str, done: int, total: int | None) -> None:
        self._inner.progress(f"{self._prefix}: {description}", done, total)

    def paused(self):
        return self._inner.paused()


LogLike = Union[BuildLog, Callable[[str], None], None]
NULL_LOG = BuildLog()


def as_build_log(log: LogLike) -> BuildLog:
    """A BuildLog for what a caller passed: a BuildLog as is, a function wrapped, None silent."""
    if log is None:
        return NULL_LOG
    if isinstance(log, BuildLog):
        return log
    return _Callable(log)


__all__ = ["BuildLog", "LogLike", "NULL_LOG", "Progress", "as_build_log"]
