"""The bus on a real broker: every demo scenario, re-delivery, hostile input."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bus.kafka.broker import EmbeddedBroker
from bus.kafka.records import document_record
from bus.registry import Registry
from bus.store.outbox import State
from bus.trust.addressbook import AddressBook
from bus.trust.pki import CertRole, DevPki, KemAlgorithm, KeyAlgorithm
from bus.trust.sealing import seal
from bus.trust.signing import SigningKey
from bus.wire.codec import default_codec
from bus.wire.headers import header
from bus.wire.model import Confidentiality, Role, SealSuite, Status, StatusCode
from consumers.inbox import document_folder, send_status
from producers.document import new_document
from tests.conftest import MINISTRY, Pki
from tests.stack import (
    BAC_GIANG,
    BAC_NINH,
    GIA_LAI,
    NGHE_AN,
    Stack,
    file_appears,
    read_topic,
    running_stack,
)

pytestmark = pytest.mark.integration


async def _final(stack: Stack, document_id: str, seconds: float = 30) -> State:
    async with asyncio.timeout(seconds):
        entry = await stack.publisher.wait(document_id)
    return entry.state


def _statuses(records: list, document_id: str) -> list[Status]:  # type: ignore[type-arg]
    codec = default_codec()
    found = []
    for r in records:
        status = codec.decode_status(codec.decode_event(r.value).payload)
        if status.document_id == document_id:
            found.append(status)
    return found


async def test_a_plain_document_is_delivered_archived_and_received(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        (tmp_path / "qd.txt").write_text("Nội dung", encoding="utf-8")
        doc = new_document(MINISTRY, [NGHE_AN], "V/v kết nối liên thông", [tmp_path / "qd.txt"])
        record = await stack.publisher.publish(doc)
        assert await _final(stack, doc.document_id) is State.ARCHIVED
        [entry] = stack.archive.find(doc.document_id)
        assert entry.event == record and entry.topic == "docbus.deliver.nghe-an"
        folder = document_folder(stack.inbox_folder(NGHE_AN), MINISTRY, doc.document_id, 0)
        await file_appears(folder / "event.avro")
        assert (folder / "attachments" / "qd.txt").read_text(encoding="utf-8") == "Nội dung"
        statuses = _statuses(await read_topic(stack.settings, "docbus.status", 3), doc.document_id)
        assert {s.code for s in statuses} >= {
            StatusCode.DELIVERED,
            StatusCode.ARCHIVED,
            StatusCode.RECEIVED,
        }
        assert {s.by for s in statuses} == {"docbus.gateway", "docbus.archiver", NGHE_AN}


async def test_multi_jurisdiction_and_merged_province(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        doc = new_document(MINISTRY, [NGHE_AN, BAC_GIANG, GIA_LAI], "V/v sắp xếp đơn vị hành chính")
        record = await stack.publisher.publish(doc)
        assert await _final(stack, doc.document_id) is State.ARCHIVED
        for topic in (
            "docbus.deliver.nghe-an",
            "docbus.deliver.bac-ninh",
            "docbus.deliver.gia-lai",
        ):
            copies = [r for r in await read_topic(stack.settings, topic, 1) if r.value == record]
            assert len(copies) == 1, topic  # once per jurisdiction
        delivered = [
            s
            for s in stack.publisher.outbox.statuses(doc.document_id)
            if s.code is StatusCode.DELIVERED
        ]
        assert delivered[0].rerouted == {BAC_GIANG: BAC_NINH}
        # Bắc Ninh's inbox keeps what was addressed to its predecessor Bắc Giang.
        folder = document_folder(stack.inbox_folder(BAC_NINH), MINISTRY, doc.document_id, 0)
        await file_appears(folder / "event.avro")
        await asyncio.sleep(1)  # let the second and third delivery reach the archiver
        assert len(stack.archive.find(doc.document_id)) == 1


async def test_tampered_untrusted_and_unknown_are_rejected_with_reasons(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        unknown = new_document(MINISTRY, ["000.00.00.H99"], "Gửi nhầm địa chỉ")
        await stack.publisher.publish(unknown)
        assert await _final(stack, unknown.document_id) is State.REJECTED
        assert stack.publisher.outbox.get(unknown.document_id).reason == "unknown_recipient"  # type: ignore[union-attr]

        other = DevPki(tmp_path / "rogue")
        other.init()
        rogue = [
            SigningKey.load(
                Role.SIGNER, *other.issue(MINISTRY, CertRole.SIGNER, KeyAlgorithm.ED25519)
            ),
            SigningKey.load(
                Role.AGENCY, *other.issue(MINISTRY, CertRole.AGENCY, KeyAlgorithm.ED25519)
            ),
        ]
        untrusted = new_document(MINISTRY, [NGHE_AN], "Văn bản giả mạo")
        tampered = new_document(MINISTRY, [NGHE_AN], "Văn bản bị sửa")
        raw = bytearray(document_record(tampered, stack.ministry))
        raw[raw.index("bị sửa".encode())] ^= 0x01
        producer = stack.settings.producer()
        await producer.start()
        await producer.send_and_wait("docbus.submitted", document_record(untrusted, rogue))
        await producer.send_and_wait(
            "docbus.submitted", bytes(raw), key=b"k", headers=[("x", b"1")]
        )
        await producer.stop()
        rejected = await read_topic(stack.settings, "docbus.rejected", 3)
        reasons = {header(r.headers, "docbus.error.reason") for r in rejected}
        assert reasons == {b"unknown_recipient", b"untrusted_certificate", b"bad_signature"}
        bad = next(
            r for r in rejected if header(r.headers, "docbus.error.reason") == b"bad_signature"
        )
        assert bad.value == bytes(raw) and bad.key == b"k"  # byte-identical, original headers kept
        assert header(bad.headers, "x") == b"1"
        assert header(bad.headers, "docbus.error.stage") == b"gateway"
        assert header(bad.headers, "docbus.error.topic") == b"docbus.submitted"
        for name in ("partition", "offset", "message", "attempts", "first_failure"):
            assert header(bad.headers, f"docbus.error.{name}") is not None
        statuses = _statuses(
            await read_topic(stack.settings, "docbus.status", 3), tampered.document_id
        )
        assert [(s.code, s.reason) for s in statuses] == [(StatusCode.REJECTED, "bad_signature")]
        assert stack.archive.count() == 0


async def test_redelivery_of_the_same_event_archives_it_once(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        doc = new_document(MINISTRY, [NGHE_AN], "Gửi lại nhiều lần")
        record = await stack.publisher.publish(doc)
        assert await _final(stack, doc.document_id) is State.ARCHIVED
        producer = stack.settings.producer()
        await producer.start()
        for _ in range(3):
            await producer.send_and_wait("docbus.submitted", record, key=doc.document_id.encode())
        changed = dataclasses.replace(doc, subject="Khác nội dung")  # same id and revision
        await producer.send_and_wait("docbus.submitted", document_record(changed, stack.ministry))
        await producer.stop()
        rejected = await read_topic(stack.settings, "docbus.rejected", 1)
        assert [header(r.headers, "docbus.error.reason") for r in rejected] == [
            b"duplicate_conflict"
        ]
        entries = stack.archive.find(doc.document_id)
        assert [(e.event == record, e.conflict) for e in entries] == [(True, False), (False, True)]


async def test_random_bytes_all_end_in_rejected_and_the_gateway_keeps_running(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        producer = stack.settings.producer()
        await producer.start()
        junk = [os.urandom(1 + i % 300) for i in range(1000)]
        junk[7] = b"\xc3\x01" + default_codec().fingerprint("docbus.SignedEvent") + b"\xff" * 40
        sent = [
            await producer.send("docbus.submitted", v, key=str(i).encode())
            for i, v in enumerate(junk)
        ]
        await asyncio.gather(*sent)
        await producer.stop()
        rejected = await read_topic(stack.settings, "docbus.rejected", 1000, seconds=60)
        assert len(rejected) == 1000
        assert sorted(r.value for r in rejected) == sorted(junk)
        assert {header(r.headers, "docbus.error.reason") for r in rejected} <= {
            b"malformed",
            b"unknown_schema",
        }
        doc = new_document(MINISTRY, [NGHE_AN], "Sau cơn mưa")
        await stack.publisher.publish(doc)
        assert await _final(stack, doc.document_id) is State.ARCHIVED


async def test_an_agency_sends_feedback_after_receipt(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        doc = new_document(MINISTRY, [NGHE_AN], "V/v xin ý kiến")
        await stack.publisher.publish(doc)
        assert await _final(stack, doc.document_id) is State.ARCHIVED
        key = pki.key(NGHE_AN, Role.AGENCY)
        folder = document_folder(stack.inbox_folder(NGHE_AN), MINISTRY, doc.document_id, 0)
        await file_appears(folder / "event.avro")
        received = (folder / "event.avro").read_bytes()
        for code in (StatusCode.ACCEPTED, StatusCode.COMPLETED):
            await send_status(stack.settings, key, doc.document_id, 0, code, received, "Đã xử lý")
        with pytest.raises(ValueError, match="not agency feedback"):
            await send_status(
                stack.settings, key, doc.document_id, 0, StatusCode.ARCHIVED, received
            )
        wanted = {StatusCode.ACCEPTED, StatusCode.COMPLETED}
        for _ in range(400):
            if wanted <= {s.code for s in stack.publisher.outbox.statuses(doc.document_id)}:
                break
            await asyncio.sleep(0.05)
        accepted = [
            s
            for s in stack.publisher.outbox.statuses(doc.document_id)
            if s.code is StatusCode.ACCEPTED
        ]
        assert accepted[0].by == NGHE_AN and accepted[0].message == "Đã xử lý"


async def test_a_sealed_document_is_routed_and_archived_but_read_only_by_its_recipients(
    broker: EmbeddedBroker,
    pki: Pki,
    registry: Registry,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    for agency in (NGHE_AN, BAC_NINH):
        pki.dev.issue_encryption(agency, KemAlgorithm.MLKEM768_X25519)
    book = AddressBook(pki.dev.root / "agencies", pki.trust)
    subject, body = "Phương án tuyệt mật số 9", "Nội dung chỉ người nhận được đọc".encode()
    (tmp_path / "mat.txt").write_bytes(body)
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        doc = new_document(
            MINISTRY,
            [NGHE_AN, BAC_NINH],
            subject,
            [tmp_path / "mat.txt"],
            confidentiality=Confidentiality.SECRET,
        )
        recipients = [book.recipient(p, doc.issued_at) for p in (NGHE_AN, BAC_NINH)]
        sealed = seal(doc, recipients, SealSuite.MLKEM768X25519_SHA256_AES256GCM)
        record = await stack.publisher.publish(sealed)
        assert await _final(stack, doc.document_id) is State.ARCHIVED
        for agency in (NGHE_AN, BAC_NINH):
            folder = document_folder(stack.inbox_folder(agency), MINISTRY, doc.document_id, 0)
            await file_appears(folder / "event.avro")
            assert (folder / "attachments" / "mat.txt").read_bytes() == body
            assert subject in (folder / "document.json").read_text(encoding="utf-8")
    assert subject.encode() not in record and body not in record
    for name in ("archive.sqlite", "archive.sqlite-wal", "outbox.sqlite", "outbox.sqlite-wal"):
        path = tmp_path / name
        if path.exists():
            stored = path.read_bytes()
            assert subject.encode() not in stored and body not in stored, name
    logs = capfd.readouterr()
    assert subject not in logs.out + logs.err and body.decode() not in logs.out + logs.err


async def test_operator_commands_on_a_running_bus(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        (tmp_path / "qd.txt").write_text("Quyết định", encoding="utf-8")
        doc = new_document(MINISTRY, [NGHE_AN], "V/v lưu trữ", [tmp_path / "qd.txt"])
        record = await stack.publisher.publish(doc)
        assert await _final(stack, doc.document_id) is State.ARCHIVED

        async def docbus(*args: str | Path) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "bus", *map(str, args)]
            done = await asyncio.to_thread(
                subprocess.run, command, capture_output=True, text=True, timeout=60
            )
            assert "Traceback" not in done.stderr
            return done

        done = await docbus(
            "topics",
            "ensure",
            "--bootstrap",
            broker.bootstrap,
            "--partitions",
            "1",
            "--status-partitions",
            "1",
        )
        assert done.returncode == 0, done.stdout  # 5 + 35 jurisdictions, as §8 and §13 say
        assert "40 topics, 0 differences" in done.stdout and "created" not in done.stdout
        rows = json.loads(
            (await docbus("archive", "list", "--data-dir", tmp_path, "--json")).stdout
        )
        assert [(r["document_id"], r["subject"]) for r in rows] == [
            (doc.document_id, "V/v lưu trữ")
        ]
        shown = json.loads(
            (await docbus("archive", "show", doc.document_id, "--data-dir", tmp_path)).stdout
        )
        assert shown["attachments"][0]["name"] == "qd.txt" and shown["conflict"] is False
        done = await docbus(
            "archive", "export", doc.document_id, "--data-dir", tmp_path, "--out", tmp_path / "x"
        )
        assert done.returncode == 0
        assert (tmp_path / "x" / MINISTRY / "r0" / "event.avro").read_bytes() == record
        assert (tmp_path / "x" / MINISTRY / "r0" / "attachments" / "qd.txt").read_text(
            encoding="utf-8"
        ) == "Quyết định"
        assert (
            await docbus("archive", "show", "no-such-id", "--data-dir", tmp_path)
        ).returncode == 1
        entries = json.loads(
            (
                await docbus(
                    "outbox", "list", "--outbox", tmp_path / "outbox.sqlite", "--all", "--json"
                )
            ).stdout
        )
        assert [(e["document_id"], e["state"]) for e in entries] == [(doc.document_id, "ARCHIVED")]
        assert {"DELIVERED", "ARCHIVED"} <= {s["code"] for s in entries[0]["statuses"]}
        pending = await docbus("outbox", "list", "--outbox", tmp_path / "outbox.sqlite")
        assert pending.stdout.strip().endswith("0 pending")
