"""The ``wxkf`` command: one function per subcommand, each importing its service only when run.

Every subcommand starts with :func:`startup` (settings, logging) and runs inside :func:`friendly_errors`,
so a misconfiguration ends the process with one line naming the variable and exit status 2, not a
traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from wxkf.logging import configure_logging
from wxkf.settings import Settings, SettingsError, load_settings

EXIT_FAILURE = 1
EXIT_BAD_SETTINGS = 2

app = typer.Typer(
    name="wxkf",
    help="Run WeChat Customer Service (WeCom kf) accounts at scale. Configured by environment variables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _package_version() -> str:
    try:
        return version("wxkf-hub")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"wxkf-hub {_package_version()}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Run WeChat Customer Service (WeCom kf) accounts at scale. Configured by environment variables."""


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    typer.echo(f"wxkf: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn the start-up failures we can explain (settings, database) into one line on stderr."""
    from wxkf.database import DatabaseError  # pymongo is not needed for --help

    try:
        yield
    except SettingsError as exc:
        fail(str(exc), EXIT_BAD_SETTINGS)
    except DatabaseError as exc:
        fail(str(exc))


def startup() -> Settings:
    """Load the settings from the environment and configure logging at ``WXKF_LOG_LEVEL``."""
    settings = load_settings()
    configure_logging(settings.wxkf_log_level)
    return settings


@app.command()
def sim(
    host: Annotated[str | None, typer.Option(help="Address to bind.", show_default="HOST")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind.", show_default="PORT")] = None,
    seed: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Initial state to load (see docs/simulator.md)."),
    ] = None,
) -> None:
    """Run the WeCom simulator: a stand-in for qyapi.weixin.qq.com that also sends signed callbacks."""
    with friendly_errors():
        settings = startup()
        from simulator import serve

        serve(host or settings.host, settings.port if port is None else port, seed)
