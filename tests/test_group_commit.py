"""Group commit (bus/store/group.py): the outbox keeps the records of concurrent requests in
one transaction, each request answered only once its record is durable, and a failed write
fails exactly the requests it held."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bus.store.group import GroupWriter
from bus.store.outbox import Outbox, OutboxEntry, State
from bus.wire.errors import DocbusError, Reason
from bus.wire.model import LogProof, Status, StatusCode, event_digest


async def test_concurrent_records_share_transactions_and_each_is_durable_when_answered(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    calls: list[int] = []
    gate = threading.Event()

    def add_many(entries: list[tuple[str, int, str, tuple[str, ...], bytes]]) -> None:
        gate.wait(5)  # the first transaction is slow: the others queue behind it
        calls.append(len(entries))
        outbox.add_many(entries)

    writer = GroupWriter(add_many)
    puts = [
        asyncio.create_task(writer.put((f"doc-{n}", 0, "A", ("B",), b"record %d" % n)))
        for n in range(50)
    ]
    await asyncio.sleep(0.2)
    gate.set()
    await asyncio.gather(*puts)
    assert sum(calls) == 50 and len(calls) < 50  # far fewer fsyncs than records
    reopened = Outbox(tmp_path / "outbox.sqlite")  # what a restart finds
    assert {e.document_id for e in reopened.pending()} == {f"doc-{n}" for n in range(50)}
    assert all(e.state is State.PENDING for e in reopened.pending())


async def test_a_failed_write_fails_the_requests_it_held_and_the_next_ones_go_on() -> None:
    written: list[int] = []

    def write(items: list[int]) -> None:
        if 13 in items:
            raise OSError(28, "No space left on device")
        written.extend(items)

    writer = GroupWriter(write)
    await writer.put(1)
    with pytest.raises(OSError, match="No space"):
        await writer.put(13)
    await writer.put(2)
    assert written == [1, 2]


def test_a_status_that_cannot_be_kept_is_refused_alone_and_the_batch_is_kept(
    tmp_path: Path,
) -> None:
    # A recipient signs a genuine RECEIVED carrying a log whose checkpoint is no text: its
    # own status is refused, never the genuine ones in the same batch.
    outbox = Outbox(tmp_path / "outbox.sqlite")
    record = b"the record sent"
    outbox.add("doc", 0, "A", ("B",), record)
    at = datetime.now(UTC)
    poisoned = Status(
        "doc", StatusCode.RECEIVED, "B", at, event_digest=event_digest(record),
        log=LogProof(0, 1, b"\0" * 32, (), b"\xff not text"),
    )  # fmt: skip
    archived = Status("doc", StatusCode.ARCHIVED, "docbus.archiver", at,
                      event_digest=event_digest(record))  # fmt: skip
    done = outbox.apply_many([(poisoned, False), (archived, True)])
    assert isinstance(done[0], DocbusError) and done[0].reason is Reason.MALFORMED
    assert isinstance(done[1], OutboxEntry) and done[1].state is State.ARCHIVED
    assert [s.code for s in outbox.statuses("doc")] == [StatusCode.ARCHIVED]
    outbox.add("next", 0, "A", ("B",), b"another")  # no transaction was left open
    assert outbox.get("next") is not None
