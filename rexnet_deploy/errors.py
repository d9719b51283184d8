"""One exception family. The CLI prints ``error: <message>`` (one line) and exits with ``exit_code``."""

from __future__ import annotations


class RexnetDeployError(Exception):
    """Base of every error this package raises on purpose; the message is one user-facing line."""

    exit_code = 2


class UsageError(RexnetDeployError):
    """An unknown model/backend/precision, an unsupported combination, a bad option value."""


class InputError(RexnetDeployError):
    """An array of the wrong shape/dtype/layout, or NaN/inf values."""


class ImageError(InputError):
    """Images that are missing, unreadable or of an unsupported format."""

    def __init__(self, message: str, bad: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.bad = bad or []


class ImageTooLarge(ImageError):
    """An image of more pixels than the decode budget (``--max-image-pixels``): refused from its
    header, before decoding (HTTP 413)."""


class UnsupportedImageFormat(ImageError):
    """Bytes that are none of the accepted image formats (JPEG, PNG, WebP, BMP, TIFF, GIF): TGA,
    PCX, EPS, ... are never handed to a decoder (HTTP 415)."""


class WeightsError(RexnetDeployError):
    """Weights that cannot be found, fetched, read, or do not fit the model."""


class ArtifactError(RexnetDeployError):
    """A path that is not an artifact, a foreign or newer manifest, a checksum mismatch."""


class BuildError(RexnetDeployError):
    """A build that cannot be carried out (``--out`` exists, the export failed, ...)."""


class BackendUnavailable(RexnetDeployError):
    """The backend's library (or device) is not present on this host."""


class GateFailed(RexnetDeployError):
    """A check or benchmark fell below its gate; the report was still written.

    ``reports``: a refused build's figures (check, eval, bench) when it was asked to measure the
    engine before discarding it (``build(measure_refused=True)``); else empty."""

    exit_code = 1

    def __init__(self, message: str, reports: dict | None = None):
        super().__init__(message)
        self.reports = reports or {}


class Overloaded(RexnetDeployError):
    """A serving queue is full: the request is refused at once (HTTP 503) rather than queued
    without bound; the client should retry later or the service needs more capacity."""


class ServiceClosed(RexnetDeployError):
    """A request reached a serving batcher that is closing or closed (HTTP 503)."""


def one_line(text: object) -> str:
    """Collapse a message to its first non-empty line (library errors are often multi-line)."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return type(text).__name__ if not isinstance(text, str) else ""
