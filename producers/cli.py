"""``docbus publish`` and ``docbus outbox``."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from bus.cli.options import (
    DocbusGroup,
    KeyPair,
    UsageProblem,
    blob_store,
    bootstrap_option,
    choice_option,
    kafka,
    output_option,
    path_option,
    registry_option,
    settings,
)
from bus.cli.progress import progress
from bus.kafka.clients import KafkaSettings
from bus.kafka.publisher import Publisher
from bus.kafka.records import document_record, send_once, status_output, status_record
from bus.registry import Registry
from bus.store.blobs import BlobStore
from bus.store.outbox import Outbox, OutboxEntry, State
from bus.trust.addressbook import AddressBook
from bus.trust.pki import KemAlgorithm
from bus.trust.sealing import parties
from bus.trust.sealing import seal as seal_document
from bus.trust.signing import SigningKey
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Policy, Verifier
from bus.wire.errors import DocbusError, Reason
from bus.wire.model import (
    Confidentiality,
    Document,
    Priority,
    Role,
    SealSuite,
    Status,
    event_digest,
    now_ms,
)
from producers.document import new_document
from producers.edxml import RESPONSE_FOR, import_edxml

SEAL_SUITES = {
    KemAlgorithm.X25519.value: SealSuite.X25519_SHA256_AES256GCM,
    KemAlgorithm.MLKEM768_X25519.value: SealSuite.MLKEM768X25519_SHA256_AES256GCM,
}


_outbox_option = path_option(
    "--outbox", "outbox_path", help="The durable outbox file (default: DOCBUS_OUTBOX)."
)


def _entry_json(entry: OutboxEntry, outbox: Outbox) -> dict[str, object]:
    return {
        "document_id": entry.document_id,
        "revision": entry.revision,
        "state": entry.state.value,
        "reason": entry.reason,
        "message": entry.message,
        "sent": entry.attempts,
        "statuses": [
            {"code": s.code.value, "by": s.by, "at": s.at.isoformat(), "rerouted": s.rerouted}
            for s in outbox.statuses(entry.document_id, entry.revision)
        ],
    }


async def _send(
    client: KafkaSettings,
    outbox: Outbox,
    keys: list[SigningKey],
    verifier: Verifier,
    doc: Document,
    wait: bool,
    wait_seconds: float,
) -> OutboxEntry:
    publisher = Publisher(
        client,
        outbox,
        keys,
        verifier,
        resend_after=timedelta(seconds=10),
        blobs=blob_store(),
        blob_threshold=settings().blob_threshold,
    )
    await publisher.start(listen=wait)
    try:
        await publisher.publish(doc)
        if wait:
            async with asyncio.timeout(wait_seconds):
                return await publisher.wait(doc.document_id, doc.revision)
    except TimeoutError:
        pass
    finally:
        await publisher.stop()
    entry = outbox.get(doc.document_id, doc.revision)
    assert entry is not None
    return entry


@dataclass(frozen=True)
class Draft:
    """What ``docbus publish`` is asked to build, before it is sealed and signed."""

    sender: str
    recipients: tuple[str, ...]
    subject: str
    files: tuple[Path, ...]
    code_number: str | None
    document_type: str | None
    priority: str
    confidential: str | None
    address_book: Path | None
    kem: str

    def build(self, trust: Path | None, blobs: BlobStore) -> Document:
        """The document, sealed to every party when it is confidential; attachments over
        the threshold are in ``blobs`` (a sealed one's ciphertext, which is safe there)."""
        threshold = settings().blob_threshold
        doc = new_document(
            self.sender,
            self.recipients,
            self.subject,
            self.files,
            code_number=self.code_number,
            document_type=self.document_type,
            priority=Priority(self.priority),
            confidentiality=Confidentiality(self.confidential or "NONE"),
            blobs=None if self.confidential else blobs,
            threshold=threshold,
        )
        if not self.confidential:
            return doc
        if self.address_book is None or trust is None:
            raise click.UsageError("--confidential needs --address-book and --trust")
        book = AddressBook(self.address_book, TrustStore.load(trust))
        at = now_ms()
        recipients = [book.recipient(p, at) for p in parties(doc)]
        return blobs.offload(seal_document(doc, recipients, SEAL_SUITES[self.kem]), threshold)


_DRAFT_OPTIONS = (
    click.option("--from", "sender", required=True, help="Sender agency code."),
    click.option("--to", "recipients", required=True, multiple=True, help="Recipient (repeat)."),
    click.option("--subject", required=True),
    click.option(
        "--file",
        "files",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
    ),
    click.option("--code-number", help='e.g. "57-NQ/TW".'),
    click.option("--type", "document_type", help="Document type, e.g. Công văn."),
    choice_option("--priority", choices=Priority, default=Priority.NORMAL, help="Priority."),
    click.option(
        "--confidential",
        type=click.Choice(["CONFIDENTIAL", "SECRET", "TOP_SECRET"]),
        help="Seal the subject and attachments to the recipients.",
    ),
    click.option(
        "--address-book",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="Recipients' encryption certificates (needed with --confidential).",
    ),
    choice_option("--kem", choices=KemAlgorithm, default=KemAlgorithm.X25519, help="Sealing KEM."),
)


def _draft_options(f: Callable[..., None]) -> Callable[..., None]:
    """Add the document options to a command and hand it one :class:`Draft`."""
    names = [field.name for field in fields(Draft)]

    @functools.wraps(f)
    def packed(**options: Any) -> None:
        draft = Draft(**{n: options.pop(n) for n in names})
        f(draft=draft, **options)

    for option in reversed(_DRAFT_OPTIONS):
        packed = option(packed)
    return packed


@click.command()
@_draft_options
@click.option("--signer", required=True, type=KeyPair(Role.SIGNER), help="The person's key.")
@click.option("--seal", required=True, type=KeyPair(Role.AGENCY), help="The agency seal key.")
@click.option(
    "--cosign",
    multiple=True,
    type=KeyPair(Role.AGENCY),
    help="An extra agency signature, e.g. ML-DSA-65 (repeat).",
)
@output_option
@bootstrap_option
@click.option("--wait", is_flag=True, help="Wait for ARCHIVED (exit 0) or REJECTED (exit 1).")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds --wait waits.")
@click.option(
    "--trust",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Trust store: checks the statuses (--wait) and the address book.",
)
@_outbox_option
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@registry_option
def publish(
    draft: Draft,
    signer: SigningKey,
    seal: SigningKey,
    cosign: tuple[SigningKey, ...],
    output: Path | None,
    bootstrap: str | None,
    wait: bool,
    timeout: float,
    trust: Path | None,
    outbox_path: Path | None,
    as_json: bool,
    registry: Registry,
) -> None:
    """Build a document, sign it as SIGNER, AGENCY and any co-signers, then write or send it.

    With --output the exact record bytes go to a file. Otherwise the record is kept in the
    outbox and sent to the broker; with --wait the command waits for the final status.
    """
    doc = draft.build(trust, blob_store())
    keys = [signer, seal, *cosign]
    if output is not None:
        output.write_bytes(document_record(doc, keys))
        click.echo(f"{doc.document_id} -> {output}")
        return
    if trust is None:
        raise click.UsageError("sending needs --trust: the outbox checks every receipt")
    verifier = Verifier(TrustStore.load(trust), Policy(issued_at_tolerance=None), registry)
    outbox = Outbox(outbox_path or settings().outbox)
    try:
        entry = asyncio.run(_send(kafka(bootstrap), outbox, keys, verifier, doc, wait, timeout))
        result = _entry_json(entry, outbox)
    finally:
        outbox.close()
    _report(result, as_json)
    if wait and entry.state is not State.ARCHIVED:
        if entry.state is State.PENDING:
            click.echo(f"no final status within {timeout:g}s; the outbox keeps it", err=True)
        sys.exit(1)


def _report(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
        return
    reason = f" {result['reason']}: {result['message']}" if result["reason"] else ""
    click.echo(f"{result['document_id']} {result['state']}{reason}")


@click.command()
@click.argument(
    "messages",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--signer", required=True, type=KeyPair(Role.SERVICE), help="The bridge's own SERVICE key."
)
@click.option(
    "--seal",
    required=True,
    type=KeyPair(Role.AGENCY),
    help="The AGENCY key of the agency the bridge is registered for.",
)
@output_option
@bootstrap_option
@click.option(
    "--trust",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Trust store to check the receipts (needed when sending).",
)
@_outbox_option
@path_option(
    "--answers",
    exists=True,
    help="For a status: the exact record it answers (the inbox's event.avro), so the "
    "sender's outbox can apply it.",
)
def edxml_import(
    messages: tuple[Path, ...],
    signer: SigningKey,
    seal: SigningKey,
    output: Path | None,
    bootstrap: str | None,
    trust: Path | None,
    outbox_path: Path | None,
    answers: Path | None,
) -> None:
    """Take edXML messages (documents or statuses) onto the bus, signed by the bridge.

    Several at once: each is taken or refused on its own (a refused one is named with its
    reason, and the command exits 1 at the end), with progress shown as they go."""
    if len(messages) > 1 and (output is not None or answers is not None):
        raise click.UsageError("--output and --answers take one message")
    bridge = _Bridge(signer, seal, bootstrap, trust, outbox_path)
    if len(messages) == 1:
        _import_one(messages[0], bridge, output, answers)
        return
    refused = 0
    with progress("importing edXML") as advance:
        for n, message in enumerate(messages):
            advance(n, len(messages))
            try:
                _import_one(message, bridge, None, None)
            except (DocbusError, ValueError) as exc:
                refused += 1
                click.echo(f"{message}: refused: {exc}", err=True)
        advance(len(messages), len(messages))
    click.echo(f"{len(messages) - refused} of {len(messages)} messages taken onto the bus")
    if refused:
        sys.exit(1)


@dataclass(frozen=True)
class _Bridge:
    """Who the edXML bridge signs as, and where it sends."""

    signer: SigningKey
    seal: SigningKey
    bootstrap: str | None
    trust: Path | None
    outbox_path: Path | None


def _import_one(message: Path, bridge: _Bridge, output: Path | None, answers: Path | None) -> None:
    signer, seal, trust = bridge.signer, bridge.seal, bridge.trust
    payload = import_edxml(message.read_bytes())
    if isinstance(payload, Status) and answers is not None:
        payload = dataclasses.replace(payload, event_digest=event_digest(answers.read_bytes()))
    speaker = payload.sender if isinstance(payload, Document) else payload.by
    if speaker != seal.agency:
        raise DocbusError(
            Reason.SENDER_MISMATCH,
            f"the message is from {speaker}; this bridge is registered for {seal.agency}",
        )
    if output is not None:
        record = (
            document_record(payload, [signer, seal])
            if isinstance(payload, Document)
            else status_record(payload, [seal])
        )
        output.write_bytes(record)
        click.echo(f"{payload.document_id} -> {output}")
        return
    if trust is None:
        raise click.UsageError("sending needs --trust: the outbox checks every receipt")
    client = kafka(bridge.bootstrap)
    if isinstance(payload, Document):
        outbox = Outbox(bridge.outbox_path or settings().outbox)
        try:
            entry = asyncio.run(
                _send(
                    client,
                    outbox,
                    [signer, seal],
                    Verifier(TrustStore.load(trust)),
                    payload,
                    False,
                    0,
                )
            )
        finally:
            outbox.close()
        click.echo(f"{payload.document_id} {entry.state.value} (sent {entry.attempts}x)")
    else:
        audience = payload.extra.get(RESPONSE_FOR)
        if not audience:
            raise DocbusError(
                Reason.MALFORMED, f"the status names no document sender ({RESPONSE_FOR})"
            )
        asyncio.run(send_once(client, status_output(payload, seal, client.topics, audience)))
        click.echo(f"{payload.document_id} {payload.code.value} sent")


@click.group(cls=DocbusGroup)
def outbox() -> None:
    """The publisher's durable outbox."""


@outbox.command("list")
@_outbox_option
@click.option("--all", "show_all", is_flag=True, help="Answered entries too.")
@click.option("--json", "as_json", is_flag=True)
def outbox_list(outbox_path: Path | None, show_all: bool, as_json: bool) -> None:
    """What is pending (sent, not yet ARCHIVED or REJECTED)."""
    outbox_path = outbox_path or settings().outbox
    if not outbox_path.is_file():
        raise UsageProblem(f"no outbox at {outbox_path}")
    box = Outbox(outbox_path)
    try:
        entries = box.entries() if show_all else box.pending()
        rows = [_entry_json(e, box) for e in entries]
    finally:
        box.close()
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for r in rows:
        click.echo(
            f"{r['document_id']} r{r['revision']} {r['state']} sent {r['sent']}x"
            + (f" {r['reason']}" if r["reason"] else "")
        )
    click.echo(f"{len(rows)} {'entries' if show_all else 'pending'}")
