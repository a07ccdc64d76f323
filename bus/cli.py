"""The ``docbus`` command line root: PKI, verification and registry commands.

``producers`` and ``consumers`` add their commands through the ``docbus.commands``
entry-point group, so this module imports neither.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, date, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from bus.broker import BrokerError
from bus.demo import all_topics, run_demo, run_dev
from bus.errors import DocbusError
from bus.kafka import KafkaSettings, ensure_topics
from bus.logs import configure_logging
from bus.model import Document, Role
from bus.pki import CertRole, DevPki, KemAlgorithm, KeyAlgorithm, PkiError
from bus.registry import RegistryError, load_registry
from bus.sealing import EncryptionKey, open_sealed
from bus.signing import SigningKey
from bus.truststore import TrustStore
from bus.verifier import Policy, Rejected, Verifier


class DocbusGroup(click.Group):
    """A group that turns the bus's own errors into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except DocbusError as exc:
            raise click.ClickException(str(exc)) from None
        except (PkiError, RegistryError, BrokerError, KafkaError, OSError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:  # a bug: one line, the traceback only on request
            if os.environ.get("DOCBUS_DEBUG"):
                raise
            raise click.ClickException(
                f"internal error: {exc!r} (set DOCBUS_DEBUG=1 for the traceback)"
            ) from None


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
            return SigningKey.load(self.role, key_path, cert_path)
        except (ValueError, DocbusError) as exc:
            self.fail(f"{value}: {exc}", param, ctx)


def bootstrap_option(f: Any) -> Any:
    """``--bootstrap HOST:PORT`` (or DOCBUS_BOOTSTRAP); TLS/SASL come from DOCBUS_* variables."""
    return click.option(
        "--bootstrap",
        envvar="DOCBUS_BOOTSTRAP",
        help="Kafka bootstrap HOST:PORT (env DOCBUS_BOOTSTRAP; TLS/SASL from DOCBUS_* vars).",
    )(f)


def trust_option(f: Any) -> Any:
    return click.option(
        "--trust",
        required=True,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="Trust store folder (anchors, intermediates, CRLs).",
    )(f)


def registry_option(f: Any) -> Any:
    return click.option(
        "--registry",
        "registry_path",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        envvar="DOCBUS_REGISTRY",
        help="Registry JSON file (default: the one shipped with docbus).",
    )(f)


@click.group(cls=DocbusGroup)
@click.version_option(package_name="docbus")
def cli() -> None:
    """docbus: signed documents between government agencies, over Kafka."""


@cli.group(cls=DocbusGroup)
def pki() -> None:
    """A development PKI: CAs, agency and service certificates, revocation."""


@pki.command("init")
@click.option("--dir", "folder", required=True, type=click.Path(path_type=Path))
def pki_init(folder: Path) -> None:
    """Make a root and an issuing CA; keys under DIR/ca, the trust store under DIR/trust."""
    DevPki(folder).init()
    click.echo(f"trust store: {folder / 'trust'}")
    click.echo(f"CA keys:     {folder / 'ca'}")


@pki.command("issue")
@click.option("--dir", "folder", required=True, type=click.Path(path_type=Path))
@click.option("--agency", required=True, help="Agency code, e.g. 000.00.00.G22.")
@click.option("--role", required=True, type=click.Choice([r.value for r in CertRole]))
@click.option(
    "--alg",
    default=KeyAlgorithm.ED25519.value,
    show_default=True,
    type=click.Choice([a.value for a in KeyAlgorithm]),
    help="Signing key type (signer, agency, service).",
)
@click.option(
    "--kem",
    default=KemAlgorithm.X25519.value,
    show_default=True,
    type=click.Choice([k.value for k in KemAlgorithm]),
    help="Encryption key type (encryption).",
)
@click.option("--days", default=365, show_default=True, type=click.IntRange(min=1))
def pki_issue(folder: Path, agency: str, role: str, alg: str, kem: str, days: int) -> None:
    """Issue a key and certificate to DIR/agencies/CODE/ROLE.{key,cert}.pem."""
    dev = DevPki(folder)
    if CertRole(role) is CertRole.ENCRYPTION:
        key_path, cert_path = dev.issue_encryption(agency, KemAlgorithm(kem), days)
    else:
        key_path, cert_path = dev.issue(agency, CertRole(role), KeyAlgorithm(alg), days)
    click.echo(key_path)
    click.echo(cert_path)


@pki.command("revoke")
@click.option("--dir", "folder", required=True, type=click.Path(path_type=Path))
@click.option("--cert", "cert_file", required=True, type=click.Path(exists=True, path_type=Path))
def pki_revoke(folder: Path, cert_file: Path) -> None:
    """Add a certificate to the CRL in DIR/trust."""
    serial = DevPki(folder).revoke(cert_file)
    click.echo(f"revoked serial {serial:x}")


@cli.command()
@click.argument("event_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@trust_option
@click.option("--at", "at_text", help="Verification time (ISO 8601); default now.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@registry_option
def verify(
    event_file: Path, trust: Path, at_text: str | None, as_json: bool, registry_path: Path | None
) -> None:
    """Verify a signed event file; exit 0 when valid, 1 when rejected.

    Without --at the check uses the current time and does not compare the sender's
    issued_at with it (the file may be old); with --at it does, as the gateway does.
    """
    at = parse_time(at_text) if at_text else datetime.now(UTC)
    policy = Policy() if at_text else Policy(issued_at_tolerance=None)
    verifier = Verifier(TrustStore.load(trust), policy, load_registry(registry_path))
    verdict = verifier.verify(event_file.read_bytes(), at)
    payload = verdict.payload
    doc = payload if isinstance(payload, Document) else None
    rejected = verdict if isinstance(verdict, Rejected) else None
    signers = (
        []
        if isinstance(verdict, Rejected)
        else [
            {"role": s.role.value, "alg": s.alg.value, "key_id": s.key_id, "subject": s.subject}
            for s in verdict.signers
        ]
    )
    document_id = getattr(payload, "document_id", None)
    sender = doc.sender if doc else getattr(payload, "by", None)
    recipients = list(doc.recipients) if doc else []
    if as_json:
        result = {
            "valid": rejected is None,
            "reason": rejected.reason.value if rejected else None,
            "message": rejected.message if rejected else None,
            "document_id": document_id,
            "sender": sender,
            "recipients": recipients,
            "signatures": signers,
            "verified_at": at.isoformat(),
        }
        click.echo(json.dumps(result, ensure_ascii=False))
    elif rejected is None:
        click.echo(f"VALID {document_id} from {sender} to {', '.join(recipients) or '-'}")
        for s in signers:
            click.echo(f"  {s['role']:<8} {s['alg']:<18} {s['subject']}")
    else:
        click.echo(f"REJECTED {rejected.reason.value}: {rejected.message}")
    if rejected is not None:
        sys.exit(1)


@cli.command("open")
@click.argument("event_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The recipient's encryption key (encryption.key.pem).",
)
@trust_option
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@registry_option
def open_command(
    event_file: Path, key_file: Path, trust: Path, out: Path, registry_path: Path | None
) -> None:
    """Verify a sealed document and open it with a recipient's key into OUT."""
    verifier = Verifier(
        TrustStore.load(trust), Policy(issued_at_tolerance=None), load_registry(registry_path)
    )
    verdict = verifier.verify(event_file.read_bytes(), datetime.now(UTC))
    if isinstance(verdict, Rejected):
        raise click.ClickException(f"{verdict.reason.value}: {verdict.message}")
    if not isinstance(verdict.payload, Document):
        raise click.ClickException("the event is not a document")
    agency, doc = open_sealed(verdict.payload, EncryptionKey.from_pem(key_file.read_bytes()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "subject.txt").write_text(doc.subject + "\n", encoding="utf-8")
    for a in doc.attachments:
        (out / (Path(a.name).name or a.sha256)).write_bytes(a.content or b"")
    click.echo(
        f"opened {doc.document_id} as {agency}: {len(doc.attachments)} attachment(s) in {out}"
    )


@cli.group(cls=DocbusGroup)
def registry() -> None:
    """The jurisdiction registry: agencies, units and their successors."""


def _day(value: str | None) -> date:
    if value is None:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a YYYY-MM-DD date") from exc


@registry.command("resolve")
@click.argument("code")
@click.option("--at", "at_text", help="Date (YYYY-MM-DD); default today.")
@registry_option
def registry_resolve(code: str, at_text: str | None, registry_path: Path | None) -> None:
    """Print the unit, level and delivery jurisdiction of CODE and the successor path taken."""
    r = load_registry(registry_path).resolve(code, _day(at_text))
    click.echo(f"agency:       {r.agency.code} {r.agency.name}")
    click.echo(f"unit:         {r.unit.id} ({r.unit.name}), level {r.unit.level.value}")
    click.echo(f"jurisdiction: {r.jurisdiction.id} ({r.jurisdiction.name})")
    click.echo(f"path:         {' -> '.join(r.path)}")


@registry.command("list")
@click.option("--at", "at_text", help="Date (YYYY-MM-DD); default today.")
@click.option("--json", "as_json", is_flag=True)
@registry_option
def registry_list(at_text: str | None, as_json: bool, registry_path: Path | None) -> None:
    """The agencies in force on a date, with unit, level and delivery jurisdiction."""
    reg = load_registry(registry_path)
    on = _day(at_text)
    rows = []
    for agency in reg.in_force(on):
        r = reg.resolve(agency.code, on)
        rows.append(
            {
                "code": agency.code,
                "name": agency.name,
                "unit": r.unit.id,
                "level": r.unit.level.value,
                "jurisdiction": r.jurisdiction.id,
                "illustrative": agency.illustrative,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    table = Table(title=f"Agencies in force on {on}")
    for column in ("code", "name", "unit", "level", "jurisdiction"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("code", "name", "unit", "level", "jurisdiction")))
    Console().print(table)


@cli.group(cls=DocbusGroup)
def topics() -> None:
    """The docbus topics (DESIGN §8)."""


@topics.command("ensure")
@bootstrap_option
@click.option("--partitions", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--replication", default=1, show_default=True, type=click.IntRange(min=1))
@registry_option
def topics_ensure(
    bootstrap: str | None, partitions: int, replication: int, registry_path: Path | None
) -> None:
    """Create the submitted, status and rejected topics and a delivery topic per jurisdiction."""
    settings = KafkaSettings.from_env(bootstrap)
    names = all_topics(settings.topics, load_registry(registry_path))
    created = asyncio.run(ensure_topics(settings, names, partitions, replication))
    click.echo(f"{len(names)} topics, {len(created)} created")


@cli.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the archive, outboxes, inboxes and PKI here (default: a fresh temp folder).",
)
def demo(data_dir: Path | None) -> None:
    """Run the whole bus on an embedded broker, publish real-looking documents, check fates."""
    if not run_demo(data_dir):
        sys.exit(1)


@cli.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the archive, inboxes and PKI here (default: a fresh temp folder).",
)
def dev(data_dir: Path | None) -> None:
    """Run the embedded broker and every service until Ctrl-C."""
    run_dev(data_dir)


@cli.group(cls=DocbusGroup)
def edxml() -> None:
    """The edXML bridge: legacy document management systems on the bus."""


def _add_plugins() -> None:
    # "group name" entry points add a sub-command to a group of this module.
    groups = {"edxml": edxml}
    for ep in entry_points(group="docbus.commands"):
        command = ep.load()
        if not isinstance(command, click.Command):
            continue
        group, _, name = ep.name.rpartition(" ")
        (groups[group] if group else cli).add_command(command, name)


def main() -> None:
    """Console-script entry point."""
    configure_logging()
    _add_plugins()
    cli()
