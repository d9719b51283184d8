"""The backend protocol, written once: what every backend module provides and what its registry
row (:class:`rexnet_deploy.backends.BackendInfo`) declares.

A backend module provides four things (compare Polygraphy's one runner per backend):

* ``validate(spec, options) -> options`` — the backend's own rules for its build options and the
  :class:`~rexnet_deploy.spec.BuildSpec`; returns them normalised. It runs once, before any model
  is built, after the generic checks of :func:`rexnet_deploy.backends.validate` (precision, head,
  device, unknown names, choices, options outside their precision), and receives every declared
  option with its default filled in;
* ``host_problem(precision) -> str | None`` — why this host cannot build *and run* engines of that
  precision (no CUDA, no bf16, no TensorRT GPU), or None. ``matrix`` skips on it, ``backends``
  lists it;
* ``build(ref, spec, writer, log, *, calib=None, options=None) -> dict`` — compile the reference
  model into payload files in ``writer`` and return the backend's part of the manifest (``calib``
  is a loaded :class:`~rexnet_deploy.calibration.CalibrationSet` for INT8; ``options`` are what
  ``validate`` returned; ``log`` is a :class:`~rexnet_deploy.log.BuildLog`);
* ``ENGINE`` — the :class:`~rexnet_deploy.engine.Engine` subclass that ``Engine.load`` returns;
  its ``_setup``'s named parameters are its load options (any other is refused, once, by
  :func:`check_load_options`).

Its options are declared in its registry row as :class:`Option` rows (the "arguments per format"
table): the CLI makes its ``build`` flags from them, defaults live there, and the generic checks
read them. A new INT8 option is one row there plus its use in the backend. How its artifacts
become Triton models is the row's :class:`TritonTarget`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol

from ..errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from ..artifact import ArtifactWriter
    from ..calibration import CalibrationSet
    from ..engine import Engine
    from ..log import BuildLog
    from ..models import ReferenceModel
    from ..spec import BuildSpec

OPTION_TYPES = ("str", "int", "float", "bool", "path")


@dataclass(frozen=True)
class Option:
    """One build option of a backend (``--name-with-dashes`` on the command line)."""

    name: str                       # the Python name, e.g. "calib_method"
    type: str                       # one of OPTION_TYPES
    help: str
    default: Any = None             # what validate() fills in when the option is not given
    precisions: tuple[str, ...] = ()  # the precisions it applies to; () = every precision
    choices: tuple[str, ...] = ()
    multiple: bool = False          # repeatable; the value is a tuple
    flag: str | None = None         # CLI spelling when not derived from the name, e.g. "--a/--no-a"
    metavar: str | None = None
    default_text: str | None = None  # how --help shows the default, when not str(default)
    replaces_calib: bool = False    # given, an INT8 build needs no --calib (a calibration cache)

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise ValueError(f"option {self.name}: type must be one of {OPTION_TYPES}, got {self.type!r}")

    @property
    def cli_flag(self) -> str:
        """The flag as messages name it (the first of a ``--a/--no-a`` pair)."""
        return (self.flag or "--" + self.name.replace("_", "-")).split("/")[0]

    def applies_to(self, precision: str) -> bool:
        return not self.precisions or precision in self.precisions


@dataclass(frozen=True)
class TritonTarget:
    """How a backend's artifact becomes a Triton model (its row's ``triton``; None: not exportable)."""

    platform: str                  # the ``platform`` string (``backend`` where Triton has no platform)
    files: Mapping[str, str]       # artifact file → file name in the version folder (Triton's defaults)
    uses_backend_field: bool = False  # openvino has no platform name: ``backend: "openvino"``
    positional_names: bool = False    # libtorch: INPUT__0 / OUTPUT__k
    # Triton parameter → the manifest's ``backend_config`` key holding its value (set ones are written)
    parameters: Mapping[str, str] = field(default_factory=dict)
    # (backend_config key, why not) — an artifact whose key is empty cannot be exported
    requires: tuple[str, str] | None = None
    # (most, why): the largest batch Triton documents for this platform; export writes at most
    # this max_batch_size and refuses a --max-batch above it, saying why
    max_batch: tuple[int, str] | None = None


class BackendModule(Protocol):
    """What ``importlib.import_module(info.module)`` must return (tests check it against :data:`VERBS`)."""

    ENGINE: "type[Engine]"

    def validate(self, spec: "BuildSpec", options: dict[str, Any]) -> dict[str, Any]: ...

    def host_problem(self, precision: str) -> str | None: ...

    def build(self, ref: "ReferenceModel", spec: "BuildSpec", writer: "ArtifactWriter", log: "BuildLog", *,
              calib: "CalibrationSet | None" = None, options: dict[str, Any] | None = None) -> dict[str, Any]: ...


# verb → the parameter names it must take, in order (ENGINE: a class)
VERBS: dict[str, tuple[str, ...] | None] = {
    "validate": ("spec", "options"),
    "host_problem": ("precision",),
    "build": ("ref", "spec", "writer", "log", "calib", "options"),
    "ENGINE": None,
}


def load_options(engine: type) -> list[str]:
    """The options ``Engine.load`` passes on to an engine class: its ``_setup``'s named parameters."""
    params = inspect.signature(engine._setup).parameters.values()  # type: ignore[attr-defined]
    return [p.name for p in params if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_load_options(engine: type, backend: str, options: dict[str, Any]) -> None:
    """The one check of every engine's load options: a name its ``_setup`` does not take is refused."""
    known = load_options(engine)
    unknown = [name for name in options if name not in known]
    if unknown:
        raise UsageError(f"unknown {backend} options: {', '.join(unknown)} (known: {', '.join(known) or 'none'})")


def flags(names: Iterable[str], table: Iterable[Option] = ()) -> list[str]:
    """CLI flags of option names (declared spelling where there is one), sorted by name."""
    declared = {o.name: o.cli_flag for o in table}
    return [declared.get(n, "--" + n.replace("_", "-")) for n in sorted(names)]


def outside_precision(table: Iterable[Option], precision: str, options: dict[str, Any]) -> list[Option]:
    """The given options that do not apply to ``precision`` (in table order)."""
    return [o for o in table if _given(options.get(o.name)) and not o.applies_to(precision)]


def with_defaults(table: Iterable[Option], options: dict[str, Any]) -> dict[str, Any]:
    """Every declared option: the given value, else the declared default (tuples for repeatables)."""
    out = {}
    for o in table:
        value = options.get(o.name)
        out[o.name] = value if _given(value) else o.default
        if o.multiple:
            out[o.name] = tuple(out[o.name] or ())
    return out


def _given(value: Any) -> bool:
    return value is not None and value != () and value != []
