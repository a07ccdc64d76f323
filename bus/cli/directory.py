"""``docbus directory generate|publish|show|verify|diff``: the national directory (DESIGN §13)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import click

from bus.cli.options import (
    DocbusGroup,
    KeyPair,
    bootstrap_option,
    kafka,
    output_option,
    path_option,
    settings,
    trust_option,
)
from bus.directory.generate import NAME, make_directory, national
from bus.directory.model import Directory, DirectoryError, diff, parse_directory
from bus.directory.signed import open_directory, sign_directory
from bus.kafka.directory import directory_records, newest, publish_directory
from bus.trust.signing import SigningKey
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Verifier
from bus.wire.codec import default_codec
from bus.wire.errors import DocbusError
from bus.wire.model import Role

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group(cls=DocbusGroup)
def directory() -> None:
    """The national directory: the registry and the agencies' certificates, signed."""


@directory.command("generate")
@click.option("--version", "version", type=click.IntRange(min=1), required=True)
@path_option("--registry", exists=True, help="Registry JSON (default: DOCBUS_REGISTRY or shipped).")
@path_option(
    "--certificates",
    folder=True,
    exists=True,
    help="Address book: AGENCY/encryption.cert.pem for each agency that has one.",
)
@click.option("--communes", type=click.IntRange(min=0), help="Grow it to this many communes.")
@click.option("--agencies", type=click.IntRange(min=0), help="Grow it to this many agencies.")
@click.option("--name", default=NAME, show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def directory_generate(
    version: int,
    registry: Path | None,
    certificates: Path | None,
    communes: int | None,
    agencies: int | None,
    name: str,
    output: Path,
) -> None:
    """Make an unsigned directory (canonical JSON) from a registry and an address book; with
    --communes/--agencies, grown to that size (made-up units and agencies, for benchmarks)."""
    chosen = registry or settings().registry
    data = json.loads(_registry_text(chosen))
    if communes is not None or agencies is not None:
        data = national(data, communes or 0, agencies or 0)
    made = make_directory(data, _encryption(certificates), version, datetime.now(UTC), name)
    made.parsed  # noqa: B018  (refuse now a registry that does not hold together)
    output.write_bytes(made.to_json())
    click.echo(str(made))


def _registry_text(path: Path | None) -> str:
    if path is not None:
        return path.read_text("utf-8")
    from importlib.resources import files

    return (files("bus") / "data" / "registry.json").read_text("utf-8")


def _encryption(folder: Path | None) -> dict[str, str]:
    if folder is None:
        return {}
    found = {}
    for path in sorted(folder.glob("*/encryption.cert.pem")):
        found[path.parent.name] = path.read_text("ascii")
    return found


@directory.command("publish")
@click.argument("file", type=_FILE)
@click.option("--key", type=KeyPair(Role.SERVICE), help="The directory operator's SERVICE key.")
@trust_option
@output_option
@bootstrap_option
def directory_publish(
    file: Path, key: SigningKey | None, trust: Path, output: Path | None, bootstrap: str | None
) -> None:
    """Sign FILE (an unsigned directory; or publish a signed one as it is), check it as every
    reader will, and publish it on docbus.directory (or, with --output, write the file)."""
    verifier = Verifier(TrustStore.load(trust))
    data = file.read_bytes()
    if data.startswith(b"{"):
        if key is None:
            raise click.UsageError("an unsigned directory needs --key to be signed")
        record = sign_directory(parse_directory(data), key)
    else:
        record = data
    made = open_directory(record, verifier)  # what every reader will do, before anyone does
    if output is not None:
        output.write_bytes(record)
        click.echo(f"{made}: written to {output}")
        return
    client = kafka(bootstrap)
    in_force = newest(asyncio.run(directory_records(client)), verifier)
    if in_force is not None and in_force.version >= made.version:
        raise DirectoryError(f"version {made.version} is not newer than {in_force.version}")
    asyncio.run(publish_directory(client, record, made))
    click.echo(f"{made}: published on {client.topics.directory}")


@directory.command("show")
@path_option("--file", exists=True, help="A signed directory file (default: the topic).")
@click.option("--json", "as_json", is_flag=True, help="Print the directory itself.")
@trust_option
@bootstrap_option
def directory_show(file: Path | None, as_json: bool, trust: Path, bootstrap: str | None) -> None:
    """The directory in force: the newest valid one on docbus.directory (or in --file)."""
    verifier = Verifier(TrustStore.load(trust))
    if file is not None:
        found: Directory | None = open_directory(file.read_bytes(), verifier)
    else:
        found = newest(asyncio.run(directory_records(kafka(bootstrap))), verifier)
    if found is None:
        raise DirectoryError("no valid directory on the topic")
    click.echo(found.to_json().decode() if as_json else str(found))


@directory.command("verify")
@click.argument("file", type=_FILE)
@trust_option
def directory_verify(file: Path, trust: Path) -> None:
    """Check a signed directory file as every reader does (exit 1 and why if it fails)."""
    click.echo(f"{open_directory(file.read_bytes(), Verifier(TrustStore.load(trust)))}: valid")


@directory.command("diff")
@click.argument("old", type=_FILE)
@click.argument("new", type=_FILE)
def directory_diff(old: Path, new: Path) -> None:
    """What changed from OLD to NEW (signed or unsigned files; signatures are not checked
    here, `verify` does that)."""
    for line in diff(_content(old), _content(new)) or ["no change"]:
        click.echo(line)


def _content(path: Path) -> Directory:
    data = path.read_bytes()
    if data.startswith(b"{"):
        return parse_directory(data)
    try:
        return parse_directory(default_codec().decode_event(data).payload)
    except DocbusError as exc:
        raise DirectoryError(f"{path}: not a directory ({exc.message})") from exc
