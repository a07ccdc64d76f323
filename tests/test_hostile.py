"""Hostile input (DESIGN §7) on the real broker: one size limit, the blob store, bounds on
every structure, names no file can carry. The attacker holds a genuine agency certificate
and writes straight onto the topics, around the publisher's own checks."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from bus.kafka.broker import EmbeddedBroker
from bus.kafka.clients import KafkaSettings
from bus.registry import Registry
from bus.store.blobs import BlobStore
from bus.store.outbox import State
from bus.trust.signing import SigningKey, sign_event
from bus.wire.codec import default_codec
from bus.wire.errors import DocbusError, Reason
from bus.wire.headers import header
from bus.wire.limits import (
    BLOB_THRESHOLD,
    MAX_BLOB_BYTES,
    MAX_EXTRA,
    MAX_RECORD_BYTES,
    check_bounds,
)
from bus.wire.model import (
    DOCUMENT_TYPE,
    Attachment,
    Document,
    Role,
    Status,
    StatusCode,
    attachment,
    blob_location,
)
from consumers.agency.node import api_token
from consumers.inbox import document_folder
from producers.document import new_document
from tests.conftest import MINISTRY, Pki
from tests.stack import NGHE_AN, Stack, read_topic, running_stack

pytestmark = pytest.mark.integration


@pytest.fixture
async def stack(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as s:
        yield s


def _raw_record(doc: Document, keys: Sequence[SigningKey]) -> bytes:
    """Signed as an attacker signs: without the publisher's bounds and name checks."""
    c = default_codec()
    return c.encode_event(sign_event(DOCUMENT_TYPE, c.encode_document(doc), keys))


async def _submit(
    settings: KafkaSettings, doc: Document, keys: Sequence[SigningKey], record: bytes | None = None
) -> None:
    # As an attacker's own client: no limit of ours on what it sends.
    producer = settings.producer(max_request_size=64 * 1024 * 1024)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topics.submitted,
            record or _raw_record(doc, keys),
            key=doc.document_id.encode(),
        )
    finally:
        await producer.stop()


async def _rejected_statuses(stack: Stack, count: int) -> dict[str, Status]:
    """document_id → the REJECTED status the sender heard."""
    codec = default_codec()
    found: dict[str, Status] = {}
    async with asyncio.timeout(30):
        while len(found) < count:
            for r in await read_topic(stack.settings, stack.settings.topics.status, 10_000, 2):
                status = codec.decode_payload(codec.decode_event(r.value or b""))
                if isinstance(status, Status) and status.code is StatusCode.REJECTED:
                    found[status.document_id] = status
    return found


async def _final(stack: Stack, doc: Document) -> State:
    async with asyncio.timeout(30):
        return (await stack.publisher.wait(doc.document_id)).state


async def test_a_large_attachment_travels_by_hash_through_the_blob_store(
    stack: Stack, tmp_path: Path
) -> None:
    body = os.urandom(3 * 1024 * 1024)
    (tmp_path / "ban-do.pdf").write_bytes(body)
    doc = new_document(
        MINISTRY, [NGHE_AN], "Bản đồ quy hoạch", [tmp_path / "ban-do.pdf"], blobs=stack.blobs
    )
    [a] = doc.attachments
    assert a.content is None and a.location == blob_location(a.sha256)
    record = await stack.publisher.publish(doc)
    assert len(record) < 64 * 1024  # the blob is not in the record
    assert await _final(stack, doc) is State.ARCHIVED
    assert stack.archive.blobs.read(a.sha256, a.size) == body  # the archive's own checked copy
    folder = document_folder(stack.inbox_folder(NGHE_AN), MINISTRY, doc.document_id, 0)
    for _ in range(100):
        if (folder / "event.avro").exists():
            break
        await asyncio.sleep(0.1)
    assert (folder / "attachments" / "ban-do.pdf").read_bytes() == body


async def test_a_blob_altered_in_the_shared_store_is_refused_and_the_sender_hears_why(
    stack: Stack, tmp_path: Path
) -> None:
    (tmp_path / "hop-dong.bin").write_bytes(os.urandom(BLOB_THRESHOLD + 1))
    doc = new_document(
        MINISTRY, [NGHE_AN], "Hợp đồng", [tmp_path / "hop-dong.bin"], blobs=stack.blobs
    )
    [a] = doc.attachments
    # Someone with write access to the shared folder swaps the bytes (same size).
    stack.blobs.path(a.sha256).write_bytes(os.urandom(a.size))
    await stack.publisher.publish(doc)
    assert await _final(stack, doc) is State.REJECTED
    entry = stack.publisher.outbox.get(doc.document_id, 0)
    assert entry is not None and entry.reason == Reason.ATTACHMENT_HASH_MISMATCH.value
    assert not stack.archive.find(doc.document_id)
    assert not stack.archive.blobs.path(a.sha256).exists()
    found = await read_topic(stack.settings, stack.settings.topics.rejected, 2)
    stages = {
        (header(r.headers, "docbus.error.stage"), header(r.headers, "docbus.error.reason"))
        for r in found
    }
    assert (b"archiver", b"attachment_hash_mismatch") in stages
    assert (b"inbox", b"attachment_hash_mismatch") in stages
    folder = document_folder(stack.inbox_folder(NGHE_AN), MINISTRY, doc.document_id, 0)
    assert not (folder / "event.avro").exists()
    assert not (folder / "attachments" / "hop-dong.bin").exists()


async def test_names_and_sizes_the_publisher_refuses_are_refused_at_the_gateway_too(
    stack: Stack,
) -> None:
    attacker = [stack.pki.key(MINISTRY, Role.SIGNER), stack.pki.key(MINISTRY, Role.AGENCY)]
    base = new_document(MINISTRY, [NGHE_AN], "Tên tệp độc hại")
    evil = Attachment("x", "text/plain", 1, "00" * 32, None, "https://attacker.example/x")
    cases = {
        Reason.UNSAFE_NAME: [
            dataclasses.replace(base, document_id="id\x00with-nul"),
            dataclasses.replace(base, document_id="a" * 300),
            dataclasses.replace(
                new_document(MINISTRY, [NGHE_AN], "NUL"), attachments=(attachment("a\x00b", b"x"),)
            ),
            dataclasses.replace(
                new_document(MINISTRY, [NGHE_AN], "RLO"),
                attachments=(attachment("hoa-don\u202efdp.exe", b"x"),),
            ),
        ],
        Reason.TOO_LARGE: [
            dataclasses.replace(
                new_document(MINISTRY, [NGHE_AN], "Nhiều trường"),
                extra={f"k{i}": "v" for i in range(MAX_EXTRA + 1)},
            ),
        ],
        Reason.MALFORMED: [
            dataclasses.replace(new_document(MINISTRY, [NGHE_AN], "URL"), attachments=(evil,)),
            # a "hash" that is a path: it once became the file name of a nameless attachment
            dataclasses.replace(
                new_document(MINISTRY, [NGHE_AN], "Băm là đường dẫn"),
                attachments=(
                    Attachment("x/", "text/plain", 1, "/tmp/evil", None, "sha256:/tmp/evil"),
                ),
            ),
        ],
    }
    for reason, docs in cases.items():
        for doc in docs:
            if reason is not Reason.MALFORMED:  # the publisher refuses before sending
                with pytest.raises(DocbusError) as refused:
                    await stack.publisher.publish(doc)
                assert refused.value.reason is reason
                assert stack.publisher.outbox.get(doc.document_id, 0) is None
            await _submit(stack.settings, doc, attacker)
    heard = await _rejected_statuses(stack, sum(map(len, cases.values())))
    for reason, docs in cases.items():
        for doc in docs:
            assert heard[doc.document_id].reason == reason.value, doc.document_id


async def test_a_record_over_the_one_limit_is_too_large_before_anything_is_sent(
    stack: Stack,
) -> None:
    inline = BLOB_THRESHOLD - 1024  # each stays inline: together they exceed the record limit
    parts = tuple(
        attachment(f"phu-luc-{i}.bin", os.urandom(inline))
        for i in range(MAX_RECORD_BYTES // inline + 1)
    )
    doc = dataclasses.replace(new_document(MINISTRY, [NGHE_AN], "Quá lớn"), attachments=parts)
    with pytest.raises(DocbusError) as refused:
        await stack.publisher.publish(doc)
    assert refused.value.reason is Reason.TOO_LARGE
    assert stack.publisher.outbox.get(doc.document_id, 0) is None


async def test_a_record_too_large_for_any_topic_is_kept_whole_named_and_answered(
    stack: Stack,
) -> None:
    # A genuine agency signs 15 MiB inline and writes it straight to the submitted topic
    # (the embedded broker ignores max.message.bytes; Kafka checks a compressed batch).
    # Copied as it is, it would be refused by the rejected topic too, and retried forever.
    huge = dataclasses.replace(
        new_document(MINISTRY, [NGHE_AN], "Quá lớn cho mọi chủ đề"),
        attachments=(attachment("lon.bin", os.urandom(15 * 1024 * 1024)),),
    )
    record = _raw_record(huge, stack.ministry)
    await _submit(stack.settings, huge, stack.ministry, record)
    after = new_document(MINISTRY, [NGHE_AN], "Sau văn bản quá lớn")
    await stack.publisher.publish(after)
    assert await _final(stack, after) is State.ARCHIVED  # the gateway moved on
    heard = await _rejected_statuses(stack, 1)
    assert heard[huge.document_id].reason == Reason.TOO_LARGE.value  # the sender hears why
    [named] = await read_topic(stack.settings, stack.settings.topics.rejected, 1, seconds=10)
    headers = dict(named.headers)
    assert headers["docbus.error.reason"] == b"too_large"
    assert headers["docbus.kept.topic"] == stack.settings.topics.rejected.encode()
    digest = headers["docbus.kept.sha256"].decode()
    assert digest == hashlib.sha256(record).hexdigest()
    assert stack.blobs.read(digest, len(record)) == record  # kept whole: nothing is lost
    assert named.key == huge.document_id.encode() and named.value == b""


def test_the_blob_store_takes_only_hashes_as_names(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    for name in ("../../etc/passwd", "..", "A" * 64, "ab" * 31 + "/x"):
        with pytest.raises(DocbusError) as bad:
            store.path(name)
        assert bad.value.reason is Reason.MALFORMED
    digest = store.put_bytes(b"noi dung")
    assert store.path(digest).is_relative_to(store.root)
    with pytest.raises(DocbusError) as short:
        store.read(digest, 7)  # the size the document states is part of what is checked
    assert short.value.reason is Reason.ATTACHMENT_HASH_MISMATCH
    target = tmp_path / "out.bin"
    store.path(digest).write_bytes(b"noi dunX")
    with pytest.raises(DocbusError):
        store.copy_to(digest, 8, target)
    assert not target.exists() and not list(tmp_path.glob(".out.bin*"))


def test_a_blob_is_only_ever_a_regular_file_in_the_store(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = store.put_bytes(b"noi dung")
    elsewhere = tmp_path / "secret"
    elsewhere.write_bytes(b"noi dung")
    store.path(digest).unlink()
    store.path(digest).symlink_to(elsewhere)  # a link: refused, not followed
    with pytest.raises(DocbusError, match="link"):
        store.read(digest, 8)
    store.path(digest).unlink()
    os.mkfifo(store.path(digest))  # a pipe would block a reader forever: refused at once
    with pytest.raises(DocbusError, match="regular file"):
        store.read(digest, 8)


def test_one_document_cannot_make_readers_copy_more_than_the_bound() -> None:
    big = Attachment("a.bin", "application/octet-stream", MAX_BLOB_BYTES, "ab" * 32, None)
    doc = dataclasses.replace(
        new_document(MINISTRY, [NGHE_AN], "Hai lần một GiB"),
        attachments=(big, dataclasses.replace(big, name="b.bin")),
    )
    with pytest.raises(DocbusError) as refused:
        check_bounds(doc)
    assert refused.value.reason is Reason.TOO_LARGE


def test_an_empty_token_file_never_means_no_token(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="shorter than 16"):
        api_token(empty, tmp_path)
    made = api_token(None, tmp_path / "node")
    assert len(made) >= 32 and (tmp_path / "node" / "token").stat().st_mode & 0o077 == 0
