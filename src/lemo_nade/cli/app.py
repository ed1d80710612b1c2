"""The Typer app and what every command shares: the consoles, the exit-code contract
(0 ok, 1 failure, 2 bad input: one line on stderr, never a traceback) and JSON options."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup, TyperOption

from lemo_nade import __version__
from lemo_nade.architects import ArchitectError
from lemo_nade.config import ConfigError
from lemo_nade.datasets import DatasetError
from lemo_nade.rules import RulesInputError
from lemo_nade.store import StoreError
from lemo_nade.text import plain

F = TypeVar("F", bound=Callable[..., Any])


def _plain_flags(params: list[Any]) -> list[Any]:
    """typer's rich help prints every option's type in the value column, flags included
    (``--json <bool>``), as if they took a value; an empty metavar leaves it blank.
    ``--help`` is made by click at help time, so this runs on each command's params then."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))


class _App(typer.Typer):
    """Every command registered on :data:`app` shows its flags as flags (see ``_plain_flags``)."""

    def command(
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **options: Any
    ) -> Callable[[F], F]:
        return super().command(name, cls=cls or _Command, **options)


app = _App(
    cls=_Group,
    help="LeMo-NADe: discover neural network architectures with an LLM and an expert system.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstrings' wrapped lines join into paragraphs
)
# Piped or redirected output gets a wide table instead of rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))
out = Console(width=_WIDTH)
err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        import torch

        sys.stdout.write(f"lemo-nade {__version__} (torch {torch.__version__})\n")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """LeMo-NADe: discover neural network architectures with an LLM and an expert system."""
    if threading.current_thread() is threading.main_thread():
        # `kill` (a scheduler, a closed terminal) stops a run like Ctrl-C: state recorded
        signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


BAD_INPUT = (ConfigError, DatasetError, ArchitectError, StoreError, RulesInputError)


def line(*parts: str | tuple[str, str]) -> Text:
    """One line for rich that is never read as markup: each part is a string or a
    (string, style) pair, and every string goes through :func:`lemo_nade.text.plain`, so
    a candidate's or an LLM's text (an error, a note) prints as written, without
    terminal control sequences. Strings with ``[...]`` of our own use this too."""
    return Text.assemble(*(plain(p) if isinstance(p, str) else (plain(p[0]), p[1]) for p in parts))


def say_error(label: str, message: str) -> None:
    """``label:`` in bold red, then ``message`` (any text, a candidate's included) on stderr."""
    err.print(line((f"{label}:", "bold red"), f" {message}"), soft_wrap=True)


def _bad_input(message: str) -> typer.Exit:
    say_error("error", message)
    return typer.Exit(2)


def friendly(func: F) -> F:
    """Turn known bad-input errors into one line and exit code 2; other errors into exit 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BAD_INPUT as exc:
            raise _bad_input(str(exc)) from None
        except KeyboardInterrupt:
            err.print("interrupted; what was already recorded is kept")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if os.environ.get("LEMO_NADE_DEBUG"):
                raise
            say_error(
                "failed", f"{type(exc).__name__}: {exc} (set LEMO_NADE_DEBUG=1 for the traceback)"
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def interrupted(how_to_continue: str) -> typer.Exit:
    """Ctrl-C in a long command: say how to go on, exit 130."""
    err.print(
        line(f"interrupted; nothing recorded is lost. Continue with: {how_to_continue}"),
        soft_wrap=True,  # a path stays one piece, to copy
    )
    return typer.Exit(130)


def json_arg(text: str | None, what: str) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what}: not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(value, dict):
        example = {"metrics": '{"A1": 0.8}', "priorities": '{"PF": 0.5}'}.get(what, '{"TA1": 0.9}')
        raise ConfigError(f"{what}: expected a JSON object like '{example}'")
    return value
