"""``docbus serve gateway|archiver|inbox`` and ``docbus archive list|show|export``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import uvicorn

from bus.cli.options import (
    DocbusGroup,
    KeyPair,
    UsageProblem,
    archive_option,
    blob_store,
    bootstrap_option,
    database_url,
    existing_archive,
    kafka,
    key_password,
    listen_option,
    path_option,
    registry_option,
    settings,
    trust_option,
)
from bus.directory.model import Directory
from bus.kafka.clients import PIPELINE_FETCH_WAIT_MS, KafkaSettings
from bus.kafka.directory import DirectoryFollower, following
from bus.kafka.metrics import CHECKPOINT_AGE
from bus.kafka.runtime import ConsumerRuntime, serve_with_ops
from bus.logs import name_service
from bus.registry import Registry
from bus.store.archive import ARCHIVE_FILE, Archive, SqliteArchive, archive_blobs
from bus.trust.sealing import EncryptionKey
from bus.trust.signing import SigningKey
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Policy, Verifier
from bus.wire.codec import default_codec
from bus.wire.model import Document, Role
from bus.wire.names import attachment_files, path_segment
from consumers.agency.app import create_app
from consumers.agency.node import AgencyNode, NodeKeys, api_token
from consumers.archive_api import create_archive_app
from consumers.archiver import Archiver
from consumers.edxml import document_to_edxml, status_to_edxml
from consumers.gateway import Gateway
from consumers.inbox import Inbox


@click.group(cls=DocbusGroup)
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run a service in the foreground until SIGTERM or Ctrl-C."""
    if ctx.invoked_subcommand:
        name_service(ctx.invoked_subcommand)


@serve.command("gateway")
@bootstrap_option
@trust_option
@click.option("--key", required=True, type=KeyPair(Role.SERVICE), help="The gateway's SERVICE key.")
@registry_option
@listen_option
def serve_gateway(
    bootstrap: str | None, trust: Path, key: SigningKey, registry: Registry, listen: str | None
) -> None:
    """Verify docbus.submitted and route each document to its jurisdictions."""
    settings = kafka(bootstrap, PIPELINE_FETCH_WAIT_MS)
    verifier = Verifier(TrustStore.load(trust), Policy(), registry, reload_every=_reload())
    gateway = Gateway(verifier, registry, key, settings.topics)
    runtime = ConsumerRuntime(
        settings, gateway, "docbus.gateway", topics=[settings.topics.submitted], keep=blob_store()
    )
    follower = _follower(settings, verifier, lambda found: gateway.use(found.parsed))
    asyncio.run(following(follower, serve_with_ops([runtime], listen)))


@serve.command("archiver")
@bootstrap_option
@archive_option
@trust_option
@click.option(
    "--key", required=True, type=KeyPair(Role.SERVICE), help="The archiver's SERVICE key."
)
@registry_option
@listen_option
def serve_archiver(
    bootstrap: str | None,
    data_dir: Path | None,
    database: str | None,
    trust: Path,
    key: SigningKey,
    registry: Registry,
    listen: str | None,
) -> None:
    """Verify and archive every delivery topic into DATA_DIR/archive.sqlite, or into
    PostgreSQL (--database), where any number of archivers may run at once."""
    if data_dir is None:
        raise UsageProblem("--data-dir is required: the archive's blob copies are kept there")
    settings = kafka(bootstrap, PIPELINE_FETCH_WAIT_MS)
    verifier = Verifier(TrustStore.load(trust), Policy(), registry, reload_every=_reload())
    archive = existing_archive(data_dir, database, create=True)
    archiver = Archiver(archive, key, settings.topics, verifier, blob_store())
    runtime = ConsumerRuntime(
        settings,
        archiver,
        "docbus.archiver",
        pattern=settings.topics.deliver_pattern,
        keep=blob_store(),
    )
    CHECKPOINT_AGE.set_function(lambda: _checkpoint_age(archive))
    follower = _follower(
        settings, verifier, lambda found: setattr(verifier, "registry", found.parsed)
    )
    checks = [("archive", lambda: _answers(archive))]
    try:
        asyncio.run(following(follower, serve_with_ops([runtime], listen, checks)))
    finally:
        archive.close()


def _follower(
    client: KafkaSettings, verifier: Verifier, apply: Callable[[Directory], None]
) -> DirectoryFollower:
    """The service follows the national directory (DESIGN §13); without one on the topic it
    uses DOCBUS_DIRECTORY_FILE, else the registry it was given."""
    return DirectoryFollower(client, verifier, apply, settings().directory_file)


def _checkpoint_age(archive: Archive) -> float:
    latest = archive.latest_checkpoint()
    return (datetime.now(UTC) - latest.at).total_seconds() if latest else float("nan")


def _answers(archive: Archive) -> bool:
    archive.log_size()  # a query: the database answers
    return True


def _read_only_archive(data_dir: Path | None, url: str | None) -> Archive:
    """An archive opened so that nothing can be written through it."""
    if url is not None:
        from bus.store.archive import PostgresArchive

        return PostgresArchive(url, archive_blobs(data_dir), read_only=True)
    if data_dir is None:
        raise UsageProblem("name the archive: --data-dir DIR or --database URL (DOCBUS_DATABASE)")
    path = data_dir / ARCHIVE_FILE
    if not path.is_file():
        raise UsageProblem(f"no archive at {path}")
    return SqliteArchive(path, read_only=True)


@serve.command("agency")
@click.option("--agency", required=True, help="The agency's code.")
@path_option(
    "--keys",
    folder=True,
    exists=True,
    required=True,
    help="The agency's key folder (signer, agency, encryption) as `docbus pki issue` writes it.",
)
@trust_option
@path_option("--data-dir", folder=True, required=True, help="Outbox, inbox and token live here.")
@click.option(
    "--listen", default="127.0.0.1:8470", show_default=True, help="HOST:PORT of the HTTP API."
)
@path_option(
    "--token-file",
    exists=True,
    help="The API's bearer token (default: one made in DATA_DIR/token on first start).",
)
@path_option(
    "--address-book",
    folder=True,
    exists=True,
    help="Recipients' encryption certificates, for offline use (default: the directory's).",
)
@bootstrap_option
@registry_option
def serve_agency(
    agency: str,
    keys: Path,
    trust: Path,
    data_dir: Path,
    listen: str,
    token_file: Path | None,
    address_book: Path | None,
    bootstrap: str | None,
    registry: Registry,
) -> None:
    """The agency node: an HTTP API to send, follow and receive documents (DESIGN §11)."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    node = AgencyNode(
        agency,
        NodeKeys.load(keys, key_password()),
        trust,
        data_dir,
        kafka(bootstrap),
        registry,
        blob_store(),
        address_book,
        settings().trust_reload_seconds,
        settings().blob_threshold,
        settings().directory_file,
    )
    token = api_token(token_file, data_dir)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(node, token),
            host=host,
            port=int(port),
            log_config=None,
            access_log=False,
            timeout_keep_alive=75,  # as proxies do: clients reuse connections between calls
        )
    )
    click.echo(
        f"agency node {agency} on http://{listen} (token: {token_file or data_dir / 'token'})"
    )
    asyncio.run(_serve_node(server, node))


async def _serve_node(server: uvicorn.Server, node: AgencyNode) -> None:
    """Serve the node's API until it is stopped, or a part of the node fails for good:
    then stop serving and fail with that part's error (one line, its exit code)."""
    serving = asyncio.create_task(server.serve())
    failing = asyncio.create_task(node.failed.wait())
    await asyncio.wait([serving, failing], return_when=asyncio.FIRST_COMPLETED)
    failing.cancel()
    if node.failure is not None:
        server.should_exit = True
        await serving
        raise node.failure
    await serving


@serve.command("archive-api")
@archive_option
@click.option(
    "--listen", default="127.0.0.1:8480", show_default=True, help="HOST:PORT of the HTTP API."
)
def serve_archive_api(data_dir: Path | None, database: str | None, listen: str) -> None:
    """The read-only archive API: search, documents, evidence bundles (DESIGN §12)."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    archive = _read_only_archive(data_dir, database_url(database))
    click.echo(f"archive API on http://{listen} (read-only: {archive.name})")
    try:
        uvicorn.run(
            create_archive_app(archive),
            host=host,
            port=int(port),
            log_config=None,
            access_log=False,
        )
    finally:
        archive.close()


@serve.command("inbox")
@bootstrap_option
@click.option("--agency", required=True, help="The receiving agency's code.")
@trust_option
@click.option("--key", required=True, type=KeyPair(Role.AGENCY), help="The agency's AGENCY key.")
@click.option("--dir", "folder", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--decrypt-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The agency's encryption key, to open sealed documents.",
)
@path_option("--edxml-dir", folder=True, help="Also write every document here as edXML.")
@registry_option
@listen_option
def serve_inbox(
    bootstrap: str | None,
    agency: str,
    trust: Path,
    key: SigningKey,
    folder: Path,
    decrypt_key: Path | None,
    edxml_dir: Path | None,
    registry: Registry,
    listen: str | None,
) -> None:
    """Keep the documents addressed to AGENCY (or its predecessors) in DIR; say RECEIVED."""
    settings = kafka(bootstrap)
    verifier = Verifier(
        TrustStore.load(trust),
        Policy(issued_at_tolerance=None),
        registry,
        reload_every=_reload(),
    )
    opener = EncryptionKey.from_pem(decrypt_key.read_bytes()) if decrypt_key else None
    inbox = Inbox(
        agency, registry, verifier, key, folder, settings.topics, blob_store(), opener, edxml_dir
    )
    runtime = ConsumerRuntime(
        settings, inbox, f"docbus.inbox.{agency}", topics=[inbox.topic], keep=blob_store()
    )

    def moved(found: Directory) -> None:
        inbox.use(found.parsed)
        runtime.follow(inbox.delivery_topics)

    follower = _follower(settings, verifier, moved)
    asyncio.run(following(follower, serve_with_ops([runtime], listen)))


@click.group(cls=DocbusGroup)
def archive() -> None:
    """Look inside an archive."""


@archive.command("grant-reader")
@click.argument("role")
@click.option("--database", metavar="URL", help="The archive in PostgreSQL (DOCBUS_DATABASE).")
@path_option("--password-file", exists=True, help="Give the role this password (first line).")
def archive_grant_reader(role: str, database: str | None, password_file: Path | None) -> None:
    """Make ROLE a PostgreSQL login that can read the archive and write nothing: connect
    `serve archive-api` as it."""
    url = database_url(database)
    if url is None:
        raise UsageProblem("grant-reader is for an archive in PostgreSQL: give --database URL")
    from bus.store.postgres import grant_reader

    password = password_file.read_text("utf-8").splitlines()[0] if password_file else None
    grant_reader(url, role, password)
    click.echo(f"{role} may read the archive and write nothing")


@archive.command("list")
@archive_option
@click.option("--json", "as_json", is_flag=True)
def archive_list(data_dir: Path | None, database: str | None, as_json: bool) -> None:
    """Every archived entry, oldest first."""
    with existing_archive(data_dir, database) as archived:
        entries = archived.entries()
    if as_json:
        rows = [
            {
                "seq": e.seq,
                "document_id": e.document_id,
                "revision": e.revision,
                "sender": e.sender,
                "recipients": list(e.recipients),
                "subject": e.subject,
                "conflict": e.conflict,
                "archived_at": e.archived_at.isoformat(),
            }
            for e in entries
        ]
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for e in entries:
        flag = " CONFLICT" if e.conflict else ""
        click.echo(
            f"{e.seq:>6} {e.document_id} r{e.revision} {e.sender} -> "
            f"{','.join(e.recipients)} {e.subject}{flag}"
        )


@archive.command("show")
@click.argument("document_id")
@archive_option
def archive_show(document_id: str, data_dir: Path | None, database: str | None) -> None:
    """A document's archived entries and metadata."""
    with existing_archive(data_dir, database) as archived:
        entries = archived.find(document_id)
    if not entries:
        raise click.ClickException(f"{document_id} is not in the archive")
    codec = default_codec()
    for e in entries:
        doc = codec.decode_document(codec.decode_event(e.event).payload)
        click.echo(
            json.dumps(
                {
                    "seq": e.seq,
                    "document_id": e.document_id,
                    "revision": e.revision,
                    "digest": e.digest,
                    "conflict": e.conflict,
                    "topic": e.topic,
                    "received_at": e.received_at.isoformat(),
                    "archived_at": e.archived_at.isoformat(),
                    "sender": doc.sender,
                    "recipients": list(doc.recipients),
                    "subject": doc.subject,
                    "code_number": doc.code_number,
                    "confidentiality": doc.confidentiality.value,
                    "attachments": [
                        {"name": a.name, "size": a.size, "sha256": a.sha256}
                        for a in doc.attachments
                    ],
                },
                ensure_ascii=False,
                indent=2,
            )
        )


@archive.command("export")
@click.argument("document_id")
@archive_option
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def archive_export(
    document_id: str, data_dir: Path | None, database: str | None, out: Path
) -> None:
    """Write a document's exact event bytes and its attachments into OUT."""
    archived = existing_archive(data_dir, database)
    entries = [e for e in archived.find(document_id) if not e.conflict]
    if not entries:
        raise click.ClickException(f"{document_id} is not in the archive")
    codec = default_codec()
    for e in entries:
        target = out / path_segment(e.sender) / f"r{e.revision}"
        target.mkdir(parents=True, exist_ok=True)
        (target / "event.avro").write_bytes(e.event)
        doc = codec.decode_document(codec.decode_event(e.event).payload)
        files = target / "attachments"  # apart from event.avro: no attachment replaces it
        files.mkdir(exist_ok=True)
        names = attachment_files([a.name for a in doc.attachments])
        for a, name in zip(doc.attachments, names, strict=True):
            if a.content is not None:
                (files / name).write_bytes(a.content)
            elif a.in_blob_store:
                archived.blobs.copy_to(a.sha256, a.size, files / name)
        click.echo(target)


@click.command()
@click.argument("event_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def edxml_export(event_file: Path, out: Path) -> None:
    """Write a document or status event as an edXML message (2016 namespace)."""
    codec = default_codec()
    payload = codec.decode_payload(codec.decode_event(event_file.read_bytes()))
    out.write_bytes(
        document_to_edxml(payload) if isinstance(payload, Document) else status_to_edxml(payload)
    )
    click.echo(f"{payload.document_id} -> {out}")


def _reload() -> timedelta:
    """How often a service re-reads its trust folder: a revocation reaches it that soon."""
    return timedelta(seconds=settings().trust_reload_seconds)
