"""The backends' build options as command-line flags, made from the registry's table
(:data:`rexnet_deploy.backends.BACKENDS`) each time a command is invoked: a backend registered
after the CLI was imported still gets its flags in ``build`` and ``build --help``."""

from __future__ import annotations

from typing import Any

import click

from . import backends
from .backends import BackendInfo
from .backends.base import Option

_TYPES = {"str": str, "int": int, "float": float, "path": click.Path()}
# the flags of the table as it last was (its rows held, so compared by identity): one invocation
# asks for them several times (parsing, processing, help) and must get the same objects
_made: tuple[tuple[BackendInfo, ...], list[click.Parameter]] = ((), [])


def option_flags() -> list[click.Parameter]:
    """Each backend's build options as flags, in table order; an option that several backends
    declare is one flag (its choices: all of theirs; each backend checks its own). Flags not given
    are None (repeatables: empty): the registry fills in the defaults."""
    global _made
    rows = tuple(backends.BACKENDS.values())
    if len(rows) != len(_made[0]) or any(a is not b for a, b in zip(rows, _made[0])):
        merged: dict[str, list[tuple[BackendInfo, Option]]] = {}
        for info in rows:
            for option in info.options:
                merged.setdefault(option.name, []).append((info, option))
        _made = (rows, [_flag(name, declared) for name, declared in merged.items()])
    return _made[1]


def _flag(name: str, rows: list[tuple[BackendInfo, Option]]) -> click.Option:
    first = rows[0][1]
    helps = []
    for info, o in rows:
        where = info.title + (" " + "/".join(p.upper() for p in o.precisions) if o.precisions else "")
        shown = o.default_text or (o.default if o.default not in (None, False) else None)
        helps.append(f"{where}: {o.help}" + (f" [{shown}]" if shown is not None else ""))
    kwargs: dict[str, Any] = {"help": " ".join(helps), "default": None, "metavar": first.metavar}
    if first.type == "bool":
        if "/" not in (first.flag or ""):  # (an --a/--b pair is a flag by its spelling)
            kwargs["is_flag"] = True
    else:
        choices = list(dict.fromkeys(c for _i, o in rows for c in o.choices))
        kwargs["type"] = click.Choice(choices) if choices else _TYPES[first.type]
    if first.multiple:
        kwargs.update(multiple=True, default=())
    return click.Option([first.flag or "--" + name.replace("_", "-"), name], **kwargs)


class WithBackendFlags(click.Command):
    """A command whose parameters include :func:`option_flags` (as the table is when it runs),
    placed after the parameter named ``flags_after``."""

    def __init__(self, *args: Any, flags_after: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flags_after = flags_after

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        at = next(i for i, p in enumerate(params) if p.name == self.flags_after) + 1
        return [*params[:at], *option_flags(), *params[at:]]


def given(flags: dict[str, Any]) -> dict[str, Any]:
    """The backend flags the user gave (unset ones are None or empty)."""
    return {k: v for k, v in flags.items() if v is not None and v != ()}
