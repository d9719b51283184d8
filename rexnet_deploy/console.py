"""The command line's terminal side: one ``error:`` line per failure with its exit code, and rich
progress on stderr (a spinner that follows the library's :class:`~rexnet_deploy.log.BuildLog`,
a progress bar for counted work). Nothing here knows a command."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import click

from .errors import RexnetDeployError, one_line
from .log import BuildLog, Progress

DEBUG = os.environ.get("REXNET_DEPLOY_DEBUG") == "1"


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    stderr_console().print(message, markup=False)


class OneLineErrors(click.Group):
    """A command group whose every error is one ``error:`` line on stderr and an exit code: 2 bad
    input (click's usage errors too, also those before a command), the library's own codes, 130
    interrupted, 70 a bug (the traceback with REXNET_DEPLOY_DEBUG=1)."""

    def main(self, args=None, prog_name=None, **extra: Any) -> Any:  # type: ignore[override]
        if extra.pop("standalone_mode", True) is False:
            return super().main(args, prog_name, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else (prog_name or "rexnet-deploy")
            click.echo(f"error: {one_line(exc.format_message())} (see {where} --help)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except RexnetDeployError as exc:
            click.echo(f"error: {one_line(exc)}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # a bug, not bad input: one line, the traceback on request
            if DEBUG:
                raise
            click.echo(f"error: unexpected {type(exc).__name__}: {one_line(exc)} "
                       "(run with REXNET_DEPLOY_DEBUG=1 for the traceback)", err=True)
            ctx.exit(70)


@contextmanager
def progress_bar(description: str, quiet: bool) -> Iterator[Progress]:
    """A rich progress bar on stderr; yields a :data:`rexnet_deploy.log.Progress` that drives it."""
    if quiet:
        yield lambda *_a: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    with Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
             console=stderr_console(), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(description: str, done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total, description=description)

        yield update


class RichLog(BuildLog):
    """The library's BuildLog on a terminal: each message is printed and becomes the spinner's
    text; ``progress`` shows a count in the spinner; ``paused`` stops the spinner while a library
    (NNCF) draws its own progress bars."""

    quiet = False

    def __init__(self, console, status):
        self.console, self.status = console, status

    def __call__(self, message: str) -> None:
        from rich.markup import escape

        # escape: messages name pip extras like rexnet-deploy[trt], which rich would eat as markup
        self.console.print(f"[dim]·[/dim] {escape(message)}")
        self.status.update(escape(message))

    def progress(self, description: str, done: int, total: int | None) -> None:
        self.status.update(f"{description} {done}/{total}" if total else f"{description} {done}")

    @contextmanager
    def paused(self) -> Iterator[None]:
        self.status.stop()
        try:
            yield
        finally:
            self.status.start()


@contextmanager
def status_log(quiet: bool) -> Iterator[BuildLog]:
    """A spinner on stderr whose text follows the library's log messages (quiet: the null log)."""
    if quiet:
        yield BuildLog()
        return
    console = stderr_console()
    with console.status("starting") as status:
        yield RichLog(console, status)
