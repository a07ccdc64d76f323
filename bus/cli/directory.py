"""``docbus directory generate|publish|show|verify|diff``: the national directory (DESIGN §13)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
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
from bus.directory.certificates import certificates_in
from bus.directory.generate import NAME, make_directory, national
from bus.directory.model import Directory, DirectoryError, diff, parse_directory
from bus.directory.parts import assemble, is_part, parse_manifest
from bus.directory.signed import (
    DirectoryReader,
    open_directory,
    read_file,
    sign_directory,
    to_file,
)
from bus.kafka.acls import delivery_grants, parse_acls
from bus.kafka.directory import open_file, publish_directory, read_directory
from bus.kafka.topics import Topics
from bus.registry import VIETNAM
from bus.trust.signing import SigningKey
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Verifier
from bus.wire.codec import default_codec
from bus.wire.errors import DocbusError
from bus.wire.model import Role

DEPLOY_ACLS = Path("deploy") / "acls.txt"
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
    help="Certificates: AGENCY/encryption.cert.pem, AGENCY/{signer,agency}.cert.pem.",
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
    encryption, signing = certificates_in(certificates) if certificates else ({}, {})
    made = make_directory(data, encryption, version, datetime.now(UTC), name, signing)
    made.parsed  # noqa: B018  (refuse now a registry that does not hold together)
    output.write_bytes(made.to_json())
    click.echo(str(made))


def _registry_text(path: Path | None) -> str:
    if path is not None:
        return path.read_text("utf-8")
    from importlib.resources import files

    return (files("bus") / "data" / "registry.json").read_text("utf-8")


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
        records = sign_directory(parse_directory(data), key)
    else:
        records = read_file(data)
    made = open_directory(records, verifier)  # what every reader will do, before anyone does
    if output is not None:
        output.write_bytes(to_file(records))
        click.echo(f"{made}: written to {output}")
        return
    client = kafka(bootstrap)
    reader = DirectoryReader(verifier)
    present = asyncio.run(read_directory(client, reader))
    in_force = reader.settle()
    if in_force is not None and in_force.version >= made.version:
        raise DirectoryError(f"version {made.version} is not newer than {in_force.version}")
    written = asyncio.run(publish_directory(client, records, present))
    click.echo(f"{made}: published on {client.topics.directory} ({written} records)")


@directory.command("show")
@path_option("--file", exists=True, help="A signed directory file (default: the topic).")
@click.option("--json", "as_json", is_flag=True, help="Print the directory itself.")
@trust_option
@bootstrap_option
def directory_show(file: Path | None, as_json: bool, trust: Path, bootstrap: str | None) -> None:
    """The directory in force: the newest valid one on docbus.directory (or in --file)."""
    verifier = Verifier(TrustStore.load(trust))
    found = _in_force(file, verifier, bootstrap)
    click.echo(found.to_json().decode() if as_json else str(found))


def _in_force(file: Path | None, verifier: Verifier, bootstrap: str | None) -> Directory:
    """The directory in a signed file, or the one in force on the topic."""
    if file is not None:
        return open_file(file, verifier)
    reader = DirectoryReader(verifier)
    asyncio.run(read_directory(kafka(bootstrap), reader))
    found = reader.settle()
    if found is None:
        raise DirectoryError("no valid directory on the topic")
    return found


@directory.command("verify")
@click.argument("file", type=_FILE)
@trust_option
def directory_verify(file: Path, trust: Path) -> None:
    """Check a signed directory file as every reader does (exit 1 and why if it fails)."""
    click.echo(f"{open_file(file, Verifier(TrustStore.load(trust)))}: valid")


@directory.command("acls")
@path_option("--file", exists=True, help="A signed directory file (default: the topic).")
@path_option("--acls", "acl_file", exists=True, help="The ACL file (default: deploy/acls.txt).")
@click.option("--on", type=click.DateTime(["%Y-%m-%d"]), help="From this day (default: today).")
@trust_option
@bootstrap_option
def directory_acls(
    file: Path | None,
    acl_file: Path | None,
    on: datetime | None,
    trust: Path,
    bootstrap: str | None,
) -> None:
    """Check the ACLs against the directory in force: each agency's principal (the one that
    may join docbus.inbox.CODE) reads the delivery topic of every jurisdiction the directory
    gives it from today on. Prints the rules to add (+) and to remove (-); exit 1 if any."""
    found = _in_force(file, Verifier(TrustStore.load(trust)), bootstrap)
    rules = parse_acls((acl_file or DEPLOY_ACLS).read_text("utf-8"))
    day = on.date() if on else datetime.now(VIETNAM).date()
    missing, surplus = delivery_grants(rules, found.parsed, day, Topics(settings().topic_prefix))
    for rule in missing:
        click.echo(f"+ {rule}")
    for rule in surplus:
        click.echo(f"- {rule}")
    click.echo(f"{found}: {len(missing)} rules to add, {len(surplus)} to remove")
    if missing or surplus:
        sys.exit(1)


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
    records = read_file(data)
    parts = {hashlib.sha256(v).hexdigest(): v for k, v in records if is_part(k)}
    manifests = [v for k, v in records if not is_part(k)]
    if not manifests:
        raise DirectoryError(f"{path}: no manifest in it")
    try:
        manifest = parse_manifest(default_codec().decode_event(manifests[-1]).payload)
    except DocbusError as exc:
        raise DirectoryError(f"{path}: not a directory ({exc.message})") from exc
    return assemble(manifest, parts)
