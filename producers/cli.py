"""``docbus publish``: build, sign and write (or send) a document."""

from __future__ import annotations

from pathlib import Path

import click

from bus.events import document_record
from bus.model import Priority, Role
from bus.signing import SigningKey
from producers.document import new_document


def _key_pair(role: Role) -> click.ParamType[SigningKey]:
    class KeyPair(click.ParamType[SigningKey]):
        name = "KEY.pem,CERT.pem"

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
                return SigningKey.load(role, key_path, cert_path)
            except ValueError as exc:
                self.fail(f"{value}: {exc}", param, ctx)

    return KeyPair()


@click.command()
@click.option("--from", "sender", required=True, help="Sender agency code.")
@click.option("--to", "recipients", required=True, multiple=True, help="Recipient code (repeat).")
@click.option("--subject", required=True)
@click.option(
    "--file", "files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--signer", required=True, type=_key_pair(Role.SIGNER), help="The person's key.")
@click.option("--seal", required=True, type=_key_pair(Role.AGENCY), help="The agency seal key.")
@click.option(
    "--cosign",
    multiple=True,
    type=_key_pair(Role.AGENCY),
    help="An extra agency signature, e.g. ML-DSA-65 (repeat).",
)
@click.option("--code-number", help='e.g. "57-NQ/TW".')
@click.option("--type", "document_type", help="Document type, e.g. Công văn.")
@click.option(
    "--priority",
    default=Priority.NORMAL.value,
    show_default=True,
    type=click.Choice([p.value for p in Priority]),
)
@click.option(
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the exact record bytes here.",
)
def publish(
    sender: str,
    recipients: tuple[str, ...],
    subject: str,
    files: tuple[Path, ...],
    signer: SigningKey,
    seal: SigningKey,
    cosign: tuple[SigningKey, ...],
    code_number: str | None,
    document_type: str | None,
    priority: str,
    output: Path,
) -> None:
    """Build a document, sign it as SIGNER, AGENCY and any co-signers, and write the event."""
    doc = new_document(
        sender,
        recipients,
        subject,
        files,
        code_number=code_number,
        document_type=document_type,
        priority=Priority(priority),
    )
    output.write_bytes(document_record(doc, [signer, seal, *cosign]))
    click.echo(f"{doc.document_id} -> {output}")
