"""The ``wxkf`` command: one function per subcommand, each importing its service only when run.

Every subcommand starts with :func:`startup` (settings, logging) and runs inside :func:`friendly_errors`,
so a misconfiguration ends the process with one line naming the variable and exit status 2, not a
traceback. The admin commands (``corp``, ``replay``) talk to a running server's admin API instead of
opening the database (see :mod:`hub.admin_client`).
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn
from urllib.parse import quote

import typer

from wxkf.logging import configure_logging
from wxkf.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from hub.admin_client import AdminClient

EXIT_FAILURE = 1
EXIT_BAD_SETTINGS = 2
EXIT_INTERRUPTED = 130
# `wxkf sim` binds this port unless given --port: not PORT (8080, the hub's), so the two run side by side.
SIM_PORT = 8081

ServiceRun = Callable[[Settings], Coroutine[Any, Any, None]]

app = typer.Typer(
    name="wxkf",
    help="Run WeChat Customer Service (WeCom kf) accounts at scale. Configured by environment variables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
corp_app = typer.Typer(
    name="corp",
    help="Corp apps: the callback Token/EncodingAESKey (and optional Secret) of each WeCom app.",
    no_args_is_help=True,
)
app.add_typer(corp_app)

HostOption = Annotated[str | None, typer.Option(help="Address to bind.", show_default="HOST")]
PortOption = Annotated[int | None, typer.Option(min=0, max=65535, help="Port to bind.", show_default="PORT")]
ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        metavar="URL",
        help="Base URL of the running hub whose admin API to use.",
        show_default="http://127.0.0.1:$PORT",
    ),
]


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
    """Turn the failures we can explain (settings, database, admin API) into one line on stderr."""
    from hub.admin_client import AdminError  # neither httpx nor pymongo is needed for --help
    from wxkf.database import DatabaseError

    try:
        yield
    except SettingsError as exc:
        fail(str(exc), EXIT_BAD_SETTINGS)
    except (DatabaseError, AdminError) as exc:
        fail(str(exc))


def startup() -> Settings:
    """Load the settings from the environment and configure logging at ``WXKF_LOG_LEVEL``."""
    settings = load_settings()
    configure_logging(settings.wxkf_log_level)
    return settings


def bind_overrides(settings: Settings, host: str | None, port: int | None) -> Settings:
    """``settings`` with ``--host``/``--port`` (when given) in place of ``HOST``/``PORT``."""
    overrides = {name: value for name, value in (("host", host), ("port", port)) if value is not None}
    return settings.model_copy(update=overrides) if overrides else settings


def fast_event_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (``uvicorn[standard]`` brings it on Linux and macOS),
    else asyncio's. The hub's work is many small socket operations; uvloop runs them for less CPU."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve_service(run: ServiceRun, host: str | None, port: int | None) -> None:
    """Run a service's ``run(settings)`` until SIGINT/SIGTERM; Ctrl-C while starting exits quietly too."""
    with friendly_errors():
        settings = bind_overrides(startup(), host, port)
        try:
            with asyncio.Runner(loop_factory=fast_event_loop()) as runner:
                runner.run(run(settings))
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None


@app.command()
def up(
    host: HostOption = None,
    port: PortOption = None,
    puppets: Annotated[
        Path | None,
        typer.Option(
            "--puppets", metavar="FILE", help="Also serve these kf accounts in this process (puppets.toml)."
        ),
    ] = None,
    bot: Annotated[
        str | None,
        typer.Option("--bot", metavar="MODULE:ATTR", help="With --puppets: the bot (default: the file's)."),
    ] = None,
) -> None:
    """Run the whole hub in one process: gateway, token service and manager on one port."""
    if bot is not None and puppets is None:
        raise typer.BadParameter("--bot needs --puppets FILE", param_hint="--bot")
    if puppets is not None:
        from hub.puppets import up_with_puppets

        up_with_puppets(puppets, bot, host, port)
        return
    from hub.up import run

    serve_service(run, host, port)


@app.command("manager")
def manager_command(host: HostOption = None, port: PortOption = None) -> None:
    """Run the manager (a replica of the same composition as `up`: its compat API needs the other two)."""
    from hub.up import run

    serve_service(run, host, port)


@app.command("gateway")
def gateway_command(host: HostOption = None, port: PortOption = None) -> None:
    """Run the callback gateway alone; kf events go to MANAGER_ENDPOINT over HTTP."""
    from gateway.app import run

    serve_service(run, host, port)


@app.command("token-service")
def token_service_command(host: HostOption = None, port: PortOption = None) -> None:
    """Run the access-token cache alone."""
    from token_service.app import run

    serve_service(run, host, port)


@app.command()
def sim(
    host: HostOption = None,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to bind (not PORT: that is the hub's).")
    ] = SIM_PORT,
    seed: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Initial state to load (see docs/simulator.md)."),
    ] = None,
) -> None:
    """Run the WeCom simulator: a stand-in for qyapi.weixin.qq.com that also sends signed callbacks."""
    with friendly_errors():
        settings = startup()
        from simulator import SeedError, serve

        try:
            serve(host or settings.host, port, seed)
        except SeedError as exc:
            fail(f"--seed {seed}: {exc}")


@app.command()
def puppet(
    bot: Annotated[
        str, typer.Option("--bot", metavar="MODULE:ATTR", help="The bot to run, e.g. examples.echo:bot.")
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", metavar="FILE", help="Accounts to serve (TOML). Default: the PUPPET_WXKF_* variables."
        ),
    ] = None,
    host: HostOption = None,
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Callback port.", show_default="PUPPET_WXKF_CALLBACK_PORT"),
    ] = None,
    transport: Annotated[
        str | None,
        typer.Option(
            "--transport",
            metavar="http|ws",
            help="http: the manager POSTs to this puppet; ws: it connects out to the manager's WebSocket.",
            show_default="transport in the config, else http",
        ),
    ] = None,
) -> None:
    """Run a puppet: pull each kf account's messages and hand them to the bot (docs/puppets.md)."""
    from dataclasses import replace

    from puppets.config import ConfigError
    from puppets.host import StartupError
    from puppets.main import BotError, load_bot, load_config, run

    with friendly_errors():
        settings = startup()
        try:
            loaded = load_config(config)
            loaded = replace(loaded, host=host or loaded.host, port=loaded.port if port is None else port)
            if transport not in (None, "http", "ws"):
                raise ConfigError(f"--transport {transport}: expected http or ws")
            loaded = replace(loaded, transport=transport or loaded.transport)
            if loaded.transport == "ws" and not loaded.manager:
                raise ConfigError(
                    "--transport ws needs a manager (manager in the config or MANAGER_ENDPOINT)"
                )
            chosen = load_bot(bot)
        except (ConfigError, BotError) as exc:
            fail(str(exc), EXIT_BAD_SETTINGS)
        try:
            with asyncio.Runner(loop_factory=fast_event_loop()) as runner:
                runner.run(run(loaded, chosen, settings))
        except (ConfigError, StartupError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None


# -- admin commands: a running server's admin API ------------------------------------------------


def admin_client(server: str | None) -> AdminClient:
    """A client for ``--server`` (default: this machine's ``PORT``) with the admin token found locally."""
    from hub.admin_client import AdminClient, default_server, find_admin_token

    settings = load_settings()
    return AdminClient(server or default_server(settings), find_admin_token(settings))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=False)]
    for line in (headers, *rows):
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def format_time(epoch: object) -> str:
    if not isinstance(epoch, int | float) or not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def yes_no(value: object) -> str:
    return "yes" if value else "no"


def read_secret_from_stdin() -> str:
    """Piped in (``--secret-stdin < file``), or typed at a hidden prompt on a terminal."""
    secret = getpass.getpass("Secret: ") if sys.stdin.isatty() else sys.stdin.read()
    secret = secret.strip()
    if not secret:
        raise typer.BadParameter("standard input was empty", param_hint="--secret-stdin")
    return secret


@corp_app.command("add")
def corp_add(
    corp_id: Annotated[str, typer.Argument(metavar="CORP_ID", help="The corp's id (ww...).")],
    token: Annotated[str, typer.Option(help="The app's callback Token (WeCom admin console).")],
    aes_key: Annotated[str, typer.Option(help="The app's callback EncodingAESKey (43 characters).")],
    name: Annotated[
        str | None,
        typer.Option(help="App name, for a corp with several apps: callbacks go to /callback/CORP_ID/NAME."),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(help="The app's Secret, to fetch its access token. Shell history keeps it: see next."),
    ] = None,
    secret_stdin: Annotated[
        bool,
        typer.Option(
            "--secret-stdin", help="Read the Secret from standard input (a hidden prompt on a terminal)."
        ),
    ] = False,
    default: Annotated[
        bool | None,
        typer.Option(
            "--default/--no-default",
            help="Make it the app /callback/CORP_ID serves. [default: yes for a corp's first app]",
            show_default=False,
        ),
    ] = None,
    server: ServerOption = None,
) -> None:
    """Add a corp app, or replace the one with the same CORP_ID and NAME."""
    if secret is not None and secret_stdin:
        raise typer.BadParameter("give --secret or --secret-stdin, not both", param_hint="--secret")
    if secret_stdin:
        secret = read_secret_from_stdin()
    body = {
        "corp_id": corp_id,
        "name": name,
        "token": token,
        "encoding_aes_key": aes_key,
        "secret": secret,
        "default": default,
    }
    with friendly_errors():
        added = admin_client(server).request("POST", "/admin/apps", json=body)
    role = "the corp's default app" if added.get("default") else "not the default app"
    secret_state = yes_no(added.get("has_secret"))
    typer.echo(f"added {added['corp_id']}/{added['name']} ({role}, secret: {secret_state})")
    typer.echo(f"WeCom callback URL: https://<this hub's public address>{added['callback_path']}")


@corp_app.command("list")
def corp_list(
    corp: Annotated[str | None, typer.Option(metavar="CORP_ID", help="Only this corp's apps.")] = None,
    server: ServerOption = None,
) -> None:
    """List the corp apps (never their Token, EncodingAESKey or Secret)."""
    params = {"corp_id": corp} if corp else None
    with friendly_errors():
        apps = admin_client(server).request("GET", "/admin/apps", params=params)["apps"]
    if not apps:
        typer.echo("no corp apps" + (f" for {corp}" if corp else ""))
        return
    rows = [
        [
            app["corp_id"],
            app["name"],
            yes_no(app.get("default")),
            yes_no(app.get("has_secret")),
            app["callback_path"],
            format_time(app.get("created_at")),
        ]
        for app in apps
    ]
    print_table(["CORP ID", "NAME", "DEFAULT", "SECRET", "CALLBACK PATH", "CREATED"], rows)


def only_app_of(client: AdminClient, corp_id: str) -> str:
    """The name of the corp's one app; with several, removing "the" app would be a guess."""
    from hub.admin_client import AdminError

    apps = client.request("GET", "/admin/apps", params={"corp_id": corp_id})["apps"]
    if not apps:
        raise AdminError(f"no such corp: {corp_id}")
    if len(apps) > 1:
        names = ", ".join(app["name"] for app in apps)
        raise AdminError(f"{corp_id} has {len(apps)} apps ({names}); name the one to remove")
    return str(apps[0]["name"])


@corp_app.command("rm")
def corp_rm(
    corp_id: Annotated[str, typer.Argument(metavar="CORP_ID")],
    name: Annotated[
        str | None, typer.Argument(metavar="[NAME]", help="Needed when the corp has several apps.")
    ] = None,
    server: ServerOption = None,
) -> None:
    """Remove a corp app: its callbacks are refused from then on."""
    with friendly_errors():
        client = admin_client(server)
        if name is None:
            name = only_app_of(client, corp_id)
        client.request("DELETE", f"/admin/apps/{quote(corp_id, safe='')}/{quote(name, safe='')}")
    typer.echo(f"removed {corp_id}/{name}")


def parse_since(text: str) -> datetime:
    """ISO 8601; without an offset, local time."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        example = "2025-01-31T08:00:00+08:00"
        raise typer.BadParameter(f"not an ISO 8601 time, e.g. {example}", param_hint="--since") from None
    return moment if moment.tzinfo else moment.astimezone()


def parse_account(text: str) -> tuple[str, str]:
    corp_id, _, open_kfid = text.partition("/")
    if not corp_id or not open_kfid:
        raise typer.BadParameter("expected CORP_ID/OPEN_KFID", param_hint="--account")
    return corp_id, open_kfid


@app.command()
def replay(
    event: Annotated[str | None, typer.Option(metavar="ID", help="Re-deliver this one event.")] = None,
    account: Annotated[
        str | None,
        typer.Option(metavar="CORP_ID/OPEN_KFID", help="Re-deliver this account's events since --since."),
    ] = None,
    since: Annotated[
        str | None, typer.Option(metavar="ISO8601", help="With --account: from this time (no offset: local).")
    ] = None,
    server: ServerOption = None,
) -> None:
    """Deliver events to their puppet again, even ones already delivered or dead-lettered."""
    body: dict[str, str]
    if event is not None and account is None and since is None:
        body = {"event_id": event}
    elif event is None and account is not None and since is not None:
        corp_id, open_kfid = parse_account(account)
        body = {"corp_id": corp_id, "open_kfid": open_kfid, "since": parse_since(since).isoformat()}
    else:
        message = "give --event ID, or --account CORP_ID/OPEN_KFID with --since TIME"
        raise typer.BadParameter(message, param_hint="--event/--account")
    with friendly_errors():
        done = admin_client(server).request("POST", "/admin/replay", json=body)
    typer.echo(
        f"replaying {done['replayed']} event(s) of {done['account']}: "
        f"delivering {done['delivering']} (the newest; the puppet syncs the rest)"
    )
