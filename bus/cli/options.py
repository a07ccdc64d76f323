"""What every ``docbus`` command shares: error handling, lazy groups, options, settings.

``producers`` and ``consumers`` build their commands from these, so every command reads
the one settings object the same way and fails the same way.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from enum import StrEnum
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import click

from bus.kafka.clients import FETCH_WAIT_MS, KafkaSettings
from bus.kafka.errors import classified
from bus.kafka.metrics import parse_listen
from bus.registry import Registry, load_registry
from bus.settings import Settings, load_settings
from bus.store.archive import Archive, open_archive
from bus.store.blobs import BlobStore
from bus.trust.signing import SigningKey
from bus.wire.errors import BusError, DocbusError, Misconfigured, Unavailable
from bus.wire.model import Role

PLUGIN_GROUP = "docbus.commands"
_SETTINGS = "docbus.settings"
_KAFKA = "docbus.kafka"
CONFIG = "docbus.config"


class UsageProblem(click.ClickException):
    """What was asked for does not exist or cannot be used as given (exit 2, no usage text)."""

    exit_code = 2


class DocbusGroup(click.Group):
    """A group that turns the bus's own errors into a one-line message: exit 1 for what was
    refused, 75 for what is unavailable now (DESIGN §7)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            error = classified(exc)
            if error is None:  # a bug or a library's own error: one line, no traceback
                if os.environ.get("DOCBUS_DEBUG"):
                    raise
                raise click.ClickException(
                    f"internal error: {exc!r} (DOCBUS_DEBUG=1 for the traceback)"
                ) from None
            raise _exiting(_explained(ctx, error)) from None


def _explained(ctx: click.Context, error: BusError) -> BusError:
    """A broker that does not answer may be one this client is set up wrong for: then say
    what to fix (exit 2) rather than "try again later" (exit 75)."""
    client = ctx.find_root().meta.get(_KAFKA)
    if isinstance(error, Unavailable) and isinstance(client, KafkaSettings):
        problem = client.tls_problem() or client.login_problem()
        if problem is not None:
            return Misconfigured(problem)
    return error


def _exiting(error: BusError) -> click.ClickException:
    """The error as the command's one line and exit code (DESIGN §7)."""
    kind = _FAILURES.get(error.exit_code, click.ClickException)
    return kind(str(error))


#: A click exception per exit code of DESIGN §7 (click reads the code off the class).
_FAILURES: dict[int, type[click.ClickException]] = {
    code: type(f"Exit{code}", (click.ClickException,), {"exit_code": code}) for code in (1, 2, 75)
}


class LazyGroup(DocbusGroup):
    """A group whose sub-commands are imported only when one of them runs.

    :param lazy: sub-command name → ``"module:attribute"`` for the bus's own commands.
    :param plugin_prefix: entry points of the ``docbus.commands`` group named
        ``"<prefix> <name>"`` (or just ``"<name>"`` for the root) add sub-commands.
    """

    def __init__(
        self, *args: Any, lazy: dict[str, str] | None = None, plugin_prefix: str = "", **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.lazy = dict(lazy or {})
        self.plugin_prefix = plugin_prefix

    def _plugins(self) -> dict[str, EntryPoint]:
        found = {}
        for ep in entry_points(group=PLUGIN_GROUP):
            group, _, name = ep.name.rpartition(" ")
            if group == self.plugin_prefix:
                found[name] = ep
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy, *self._plugins()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        if cmd_name in self.lazy:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            loaded = getattr(importlib.import_module(module), attribute)
        elif (ep := self._plugins().get(cmd_name)) is not None:
            loaded = ep.load()
        else:
            return None
        if not isinstance(loaded, click.Command):
            raise click.ClickException(f"{cmd_name} is not a command ({type(loaded).__name__})")
        self.add_command(loaded, cmd_name)
        return loaded


def settings() -> Settings:
    """The settings of this invocation (read once: ``--config``, DOCBUS_*, defaults)."""
    root = click.get_current_context().find_root()
    found = root.meta.get(_SETTINGS)
    if found is None:
        found = load_settings(root.meta.get(CONFIG))
        root.meta[_SETTINGS] = found
    assert isinstance(found, Settings)
    return found


def blob_store() -> BlobStore:
    """The blob store of this invocation (DOCBUS_BLOB_DIR)."""
    return BlobStore(settings().blob_dir)


def kafka(bootstrap: str | None, fetch_wait_ms: int = FETCH_WAIT_MS) -> KafkaSettings:
    """Client settings: ``--bootstrap`` if given, else the settings' (DOCBUS_BOOTSTRAP);
    ``fetch_wait_ms`` unless DOCBUS_FETCH_MAX_WAIT_MS says otherwise."""
    chosen = KafkaSettings.from_settings(settings(), bootstrap, fetch_wait_ms)
    click.get_current_context().find_root().meta[_KAFKA] = chosen  # to explain a failure
    return chosen


def parse_time(value: str) -> datetime:
    """An ISO 8601 date or time; a time without zone is taken as UTC."""
    try:
        t = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date or time") from exc
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


class KeyPair(click.ParamType[SigningKey]):
    """``KEY.pem,CERT.pem``: a private key and its certificate (chain), loaded for a role."""

    name = "KEY.pem,CERT.pem"

    def __init__(self, role: Role) -> None:
        self.role = role

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> SigningKey:
        if isinstance(value, SigningKey):
            return value
        parts = str(value).split(",")
        if len(parts) != 2:
            self.fail(f"{value!r} is not KEY.pem,CERT.pem", param, ctx)
        key_path, cert_path = (Path(p) for p in parts)
        for p in (key_path, cert_path):
            if not p.is_file():
                self.fail(f"{p} does not exist", param, ctx)
        try:
            return SigningKey.load(self.role, key_path, cert_path, key_password())
        except (ValueError, DocbusError) as exc:
            self.fail(f"{value}: {exc}", param, ctx)


def key_password(path: Path | None = None) -> bytes | None:
    """The private-key password: ``path``, else DOCBUS_KEY_PASSWORD_FILE's file, else None.
    One trailing newline is not part of it."""
    chosen = path or settings().key_password_file
    if chosen is None:
        return None
    return chosen.read_bytes().removesuffix(b"\n")


def listen_option(f: Any) -> Any:
    """``--listen HOST:PORT``: where a service serves /metrics, /healthz and /readyz."""
    return click.option(
        "--listen",
        callback=_listen,
        metavar="HOST:PORT",
        help="Serve /metrics, /healthz and /readyz here (default: DOCBUS_LISTEN; unset: none).",
    )(f)


def _listen(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    chosen = value or settings().listen
    if chosen is None:
        return None
    try:
        return parse_listen(chosen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None


def bootstrap_option(f: Any) -> Any:
    """``--bootstrap HOST:PORT``; without it, the settings' bootstrap (DOCBUS_BOOTSTRAP)."""
    return click.option(
        "--bootstrap",
        help="Kafka bootstrap HOST:PORT (default: DOCBUS_BOOTSTRAP or the config file).",
    )(f)


def path_option(
    *decls: str, help: str, folder: bool = False, exists: bool = False, required: bool = False
) -> Callable[[Any], Any]:
    """An option naming a file (or, with ``folder``, a folder)."""
    kind = click.Path(exists=exists, file_okay=not folder, dir_okay=folder, path_type=Path)
    return click.option(*decls, required=required, type=kind, help=help)


def choice_option(
    *decls: str, choices: Iterable[StrEnum], help: str, default: StrEnum | None = None
) -> Callable[[Any], Any]:
    """An option taking one value of an enumeration (its string value)."""
    return click.option(
        *decls,
        type=click.Choice([c.value for c in choices]),
        default=None if default is None else default.value,
        show_default=default is not None,
        help=help,
    )


trust_option = path_option(
    "--trust", folder=True, exists=True, required=True, help="Trust store folder."
)


def archive_option(f: Any) -> Any:
    """``--data-dir DIR`` and ``--database URL``: where an archive is (DESIGN §6).

    With a database URL (or DOCBUS_DATABASE) the rows are in PostgreSQL and DIR holds the
    blob copies; without, DIR holds the SQLite archive and its blobs."""
    f = click.option(
        "--database",
        metavar="URL",
        help="The archive in PostgreSQL (default: DOCBUS_DATABASE; unset: SQLite in --data-dir).",
    )(f)
    return path_option(
        "--data-dir", folder=True, help="The archive's folder (SQLite file and blob copies)."
    )(f)


def database_url(given: str | None) -> str | None:
    """``--database`` if given, else DOCBUS_DATABASE, else None (SQLite)."""
    if given:
        return given
    configured = settings().database
    return configured.get_secret_value() if configured is not None else None


output_option = path_option("--output", help="Write the exact record bytes here, do not send.")


def _registry(ctx: click.Context, param: click.Parameter, value: Path | None) -> Registry:
    return load_registry(value or settings().registry)


def registry_option(f: Any) -> Any:
    """``--registry FILE`` → a loaded :class:`Registry` (default: DOCBUS_REGISTRY or shipped)."""
    return click.option(
        "--registry",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        callback=_registry,
        help="Registry JSON file (default: DOCBUS_REGISTRY, else the one shipped).",
    )(f)


def existing_archive(
    data_dir: Path | None, database: str | None = None, create: bool = False
) -> Archive:
    """The archive in PostgreSQL (``database`` or DOCBUS_DATABASE) or in ``data_dir``; a
    usage error if neither names one, or there is none and ``create`` is not asked."""
    url = database_url(database)
    if data_dir is None and url is None:
        raise UsageProblem("name the archive: --data-dir DIR or --database URL (DOCBUS_DATABASE)")
    try:
        return open_archive(data_dir, create=create, database=url)
    except FileNotFoundError as exc:
        raise UsageProblem(str(exc)) from None
