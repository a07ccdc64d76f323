"""``docbus verify`` and ``docbus open``: check an event file, open a sealed one."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from bus.cli.options import blob_store, parse_time, registry_option, trust_option
from bus.registry import Registry
from bus.trust.sealing import EncryptionKey, open_sealed
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Policy, Rejected, Verifier
from bus.wire.model import Document
from bus.wire.names import attachment_files


@click.command()
@click.argument("event_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@trust_option
@click.option("--at", "at_text", help="Verification time (ISO 8601); default now.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@registry_option
def verify(
    event_file: Path, trust: Path, at_text: str | None, as_json: bool, registry: Registry
) -> None:
    """Verify a signed event file; exit 0 when valid, 1 when rejected.

    Without --at the check uses the current time and does not compare the sender's
    issued_at with it (the file may be old); with --at it does, as the gateway does.
    """
    at = parse_time(at_text) if at_text else datetime.now(UTC)
    policy = Policy() if at_text else Policy(issued_at_tolerance=None)
    verifier = Verifier(TrustStore.load(trust), policy, registry)
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


@click.command("open")
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
    event_file: Path, key_file: Path, trust: Path, out: Path, registry: Registry
) -> None:
    """Verify a sealed document and open it with a recipient's key into OUT."""
    verifier = Verifier(TrustStore.load(trust), Policy(issued_at_tolerance=None), registry)
    verdict = verifier.verify(event_file.read_bytes(), datetime.now(UTC))
    if isinstance(verdict, Rejected):
        raise click.ClickException(f"{verdict.reason.value}: {verdict.message}")
    if not isinstance(verdict.payload, Document):
        raise click.ClickException("the event is not a document")
    sealed = blob_store().inline(verdict.payload)  # sealed parts are opened in one piece
    agency, doc = open_sealed(sealed, EncryptionKey.from_pem(key_file.read_bytes()))
    files = out / "attachments"  # apart from subject.txt: no attachment can replace it
    files.mkdir(parents=True, exist_ok=True)
    (out / "subject.txt").write_text(doc.subject + "\n", encoding="utf-8")
    names = attachment_files([a.name for a in doc.attachments])
    for a, name in zip(doc.attachments, names, strict=True):
        (files / name).write_bytes(a.content or b"")
    click.echo(
        f"opened {doc.document_id} as {agency}: {len(doc.attachments)} attachment(s) in {out}"
    )
