"""``docbus evidence export|verify``: one document's proof, in one file, checked offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from bus.audit.evidence import Evidence, check_evidence, export_evidence
from bus.cli.options import DocbusGroup, archive_option, existing_archive, trust_option
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Policy, Verifier
from bus.wire.errors import DocbusError


@click.group(cls=DocbusGroup)
def evidence() -> None:
    """Evidence bundles: an archived document with everything that proves it."""


@evidence.command("export")
@click.argument("document_id")
@archive_option
@click.option("--revision", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--sender", help="The sender, when several agencies used this id.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def export_command(
    document_id: str,
    data_dir: Path | None,
    database: str | None,
    revision: int,
    sender: str | None,
    out: Path,
) -> None:
    """Write the evidence bundle of an archived document to OUT."""
    with existing_archive(data_dir, database) as archive:
        bundle = export_evidence(archive, document_id, revision, sender)
    out.write_bytes(bundle.to_bytes())
    click.echo(f"{document_id} r{revision}: leaf {bundle.index} of {bundle.tree_size} -> {out}")


@evidence.command("verify")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@trust_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def verify_command(bundle: Path, trust: Path, as_json: bool) -> None:
    """Check a bundle with nothing but a trust store: exit 0 if it proves its document,
    1 naming the first thing that does not hold."""
    verifier = Verifier(TrustStore.load(trust), Policy(issued_at_tolerance=None))
    try:
        proven = check_evidence(Evidence.from_bytes(bundle.read_bytes()), verifier)
    except DocbusError as exc:
        if as_json:
            click.echo(
                json.dumps({"valid": False, "reason": exc.reason.value, "message": exc.message})
            )
        else:
            click.echo(f"INVALID {exc.reason.value}: {exc.message}")
        sys.exit(1)
    doc = proven.document
    result = {
        "valid": True,
        "document_id": doc.document_id,
        "revision": doc.revision,
        "sender": doc.sender,
        "recipients": list(doc.recipients),
        "received_at": proven.received_at.isoformat(),
        "log": proven.origin,
        "index": proven.index,
        "tree_size": proven.tree_size,
        "signers": [
            {"role": s.role.value, "agency": s.agency, "subject": s.subject}
            for s in proven.verified.signers
        ],
    }
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
        return
    click.echo(
        f"VALID {doc.document_id} r{doc.revision} from {doc.sender}, received "
        f"{result['received_at']}, leaf {proven.index} of {proven.tree_size} "
        f"in {proven.origin}'s log"
    )
