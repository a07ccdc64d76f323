"""``docbus audit verify-archive|replay|rebuild``: the auditor's commands."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console

from bus.audit.rebuild import rebuild
from bus.audit.replay import read_topics, replay
from bus.audit.report import Report, print_report, write_report
from bus.audit.verify import verify_archive
from bus.audit.witness import Published, Witness, WitnessState, published, witness_once
from bus.cli.options import (
    DocbusGroup,
    KeyPair,
    archive_option,
    bootstrap_option,
    database_url,
    existing_archive,
    kafka,
    listen_option,
    parse_time,
    path_option,
    registry_option,
    settings,
    trust_option,
)
from bus.cli.progress import progress
from bus.kafka.runtime import ConsumerRuntime, serve_with_ops
from bus.logs import name_service
from bus.registry import Registry
from bus.tlog.merkle import leaf_hash
from bus.trust.signing import SigningKey
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Policy, Verifier
from bus.wire.model import Role


def _finish(report: Report, out: Path | None) -> None:
    print_report(report, Console(width=None if sys.stdout.isatty() else 120))
    if out is not None:
        write_report(report, out)
        click.echo(f"report written to {out}")
    if not report.clean:
        sys.exit(1)


_report_option = path_option("--report", "out", help="Also write the report: .json or .html.")


@click.group(cls=DocbusGroup)
def audit() -> None:
    """Prove that nothing was altered or lost (exit 0 clean, 1 on any discrepancy)."""


@audit.command("verify-archive")
@archive_option
@trust_option
@click.option(
    "--witnesses",
    type=click.IntRange(min=0),
    help="Cosignatures of pinned witnesses every checkpoint must carry (default: policy.toml "
    "[witnesses] required); they are read from the checkpoint topic.",
)
@bootstrap_option
@_report_option
def verify_archive_command(
    data_dir: Path | None,
    database: str | None,
    trust: Path,
    witnesses: int | None,
    bootstrap: str | None,
    out: Path | None,
) -> None:
    """Re-verify every entry at its signed receipt time, every column against the event
    bytes, every row against the signed checkpoints and those against each other; with a
    broker (--bootstrap or DOCBUS_BOOTSTRAP), also against every published checkpoint."""
    archive = existing_archive(data_dir, database)
    verifier = Verifier(TrustStore.load(trust))
    required = verifier.trust.policy.witness_quorum if witnesses is None else witnesses
    topic: Published | None = None
    if required or bootstrap or settings().bootstrap:
        client = kafka(bootstrap)
        records = read_topics(client, [client.topics.checkpoints], None, None)
        topic = asyncio.run(published(records, verifier))
    try:
        with progress("verifying the archive") as advance:
            report = verify_archive(archive, verifier, advance, required, topic)
        # Kept beside the archive for the audit page (DESIGN §12): the last result.
        archive.add_audit(datetime.now(UTC), report.clean, json.dumps(report.to_json()))
    finally:
        archive.close()
    _finish(report, out)


@audit.command("witness")
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the witness keeps the last checkpoint it accepted per log.",
)
@trust_option
@click.option(
    "--key", required=True, type=KeyPair(Role.SERVICE), help="The witness's SERVICE key (Ed25519)."
)
@click.option("--once", is_flag=True, help="Check what the topic holds now, then exit.")
@bootstrap_option
@listen_option
def witness_command(
    data_dir: Path,
    trust: Path,
    key: SigningKey,
    once: bool,
    bootstrap: str | None,
    listen: str | None,
) -> None:
    """Follow the checkpoint topic; cosign every checkpoint that extends the last one seen.

    A rollback or a split view is refused and reported with both checkpoints; with --once
    the exit code is 1 if any was ever seen.
    """
    name_service("witness")
    client = kafka(bootstrap)
    data_dir.mkdir(parents=True, exist_ok=True)
    state = WitnessState(data_dir)
    witness = Witness(Verifier(TrustStore.load(trust)), key, state, client.topics)
    try:
        if once:
            asyncio.run(witness_once(client, witness))
        else:
            runtime = ConsumerRuntime(
                client, witness, f"docbus.witness.{key.agency}", topics=[client.topics.checkpoints]
            )
            asyncio.run(serve_with_ops([runtime], listen))
        alarms = state.alarms()
    finally:
        state.close()
    click.echo(f"{witness.cosigned} checkpoints cosigned, {len(alarms)} alarms")
    for alarm in alarms:
        click.echo(f"ALARM {alarm.kind} of {alarm.origin}:", err=True)
        click.echo(alarm.known.decode("utf-8", "replace"), err=True)
        click.echo(alarm.seen.decode("utf-8", "replace"), err=True)
    if alarms:
        sys.exit(1)


@audit.command("checkpoint")
@archive_option
def checkpoint_command(data_dir: Path | None, database: str | None) -> None:
    """Print the latest checkpoint note exactly as it was signed and published."""
    with existing_archive(data_dir, database) as archive:
        latest = archive.latest_checkpoint()
        name = archive.name
    if latest is None:
        raise click.ClickException(f"the archive {name} has no checkpoint yet")
    click.echo(latest.signed.decode("utf-8"), nl=False)


@audit.command("prove")
@click.argument("document_id")
@archive_option
@click.option("--sender", help="The sender, when several agencies used this id.")
@click.option("--revision", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def prove_command(
    document_id: str,
    data_dir: Path | None,
    database: str | None,
    sender: str | None,
    revision: int,
    as_json: bool,
) -> None:
    """The inclusion proof of a document against the latest checkpoint."""
    with existing_archive(data_dir, database) as archive:
        found = [
            e
            for e in archive.find(document_id)
            if e.revision == revision and not e.conflict and sender in (None, e.sender)
        ]
        senders = sorted({e.sender for e in found})
        if not found:
            raise click.ClickException(f"{document_id} revision {revision} is not archived")
        if len(senders) > 1:
            raise click.ClickException(f"several senders used this id: {', '.join(senders)}")
        latest = archive.latest_checkpoint()
        entry = found[0]
        if latest is None or entry.log_index >= latest.checkpoint.size:
            raise click.ClickException("no checkpoint covers this document yet")
        size = latest.checkpoint.size
        proof = archive.inclusion_proof(entry.log_index, size)
    hashes = [base64.b64encode(h).decode() for h in proof]
    leaf = base64.b64encode(leaf_hash(entry.event)).decode()
    if as_json:
        answer = {"index": entry.log_index, "tree_size": size, "leaf_hash": leaf, "proof": hashes}
        click.echo(json.dumps(answer))
        return
    click.echo(f"{entry.sender} {document_id} r{revision}: leaf {entry.log_index} of {size}")
    click.echo(f"  leaf hash {leaf}")
    for h in hashes:
        click.echo(f"  {h}")


@audit.command("replay")
@click.option("--topic", required=True, help="e.g. docbus.deliver.nghe-an, docbus.submitted.")
@click.option("--from", "start", help="Start time (ISO 8601).")
@click.option("--to", "end", help="End time (ISO 8601).")
@trust_option
@click.option(
    "--archive",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The archiver's data dir, to check each event is archived.",
)
@click.option(
    "--database",
    metavar="URL",
    help="The archive in PostgreSQL, to check each event is archived (default: DOCBUS_DATABASE).",
)
@bootstrap_option
@registry_option
@_report_option
def replay_command(
    topic: str,
    start: str | None,
    end: str | None,
    trust: Path,
    data_dir: Path | None,
    database: str | None,
    bootstrap: str | None,
    registry: Registry,
    out: Path | None,
) -> None:
    """Re-read a topic over a time range, without a consumer group, and re-verify every event."""
    settings = kafka(bootstrap)
    verifier = Verifier(TrustStore.load(trust), Policy(), registry)
    url = database_url(database)
    archive = existing_archive(data_dir, url) if data_dir or url else None
    begin, finish = (parse_time(start) if start else None), (parse_time(end) if end else None)
    try:
        with progress(f"replaying {topic}") as advance:
            report = asyncio.run(
                replay(
                    settings, topic, verifier, archive, begin, finish, lambda n: advance(n, None)
                )
            )
    finally:
        if archive is not None:
            archive.close()
    _finish(report, out)


@audit.command("rebuild")
@click.option("--into", required=True, type=click.Path(file_okay=False, path_type=Path))
@trust_option
@click.option(
    "--key",
    required=True,
    type=KeyPair(Role.SERVICE),
    help="The auditor's SERVICE key, to sign the rebuilt checkpoints.",
)
@bootstrap_option
@registry_option
@_report_option
def rebuild_command(
    into: Path,
    trust: Path,
    key: SigningKey,
    bootstrap: str | None,
    registry: Registry,
    out: Path | None,
) -> None:
    """Replay every delivery topic into an empty archive; checkpoints must equal the original's."""
    settings = kafka(bootstrap)
    verifier = Verifier(TrustStore.load(trust), Policy(issued_at_tolerance=None), registry)
    with progress(f"rebuilding into {into}") as advance:
        report = asyncio.run(rebuild(settings, verifier, into, key, advance))
    _finish(report, out)
