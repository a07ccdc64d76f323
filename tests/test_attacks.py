"""Attacks on the bus's proof (DESIGN §4), tried on the real broker as an attacker would:
holding one genuine certificate and write access to every topic.

Each test is one attack that worked before the rule it checks existed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from bus.audit.verify import verify_archive
from bus.kafka.broker import EmbeddedBroker
from bus.kafka.clients import KafkaSettings
from bus.kafka.records import document_record, status_record
from bus.registry import Registry
from bus.store.outbox import State
from bus.tlog.checkpoint import Checkpoint
from bus.tlog.merkle import leaf_hash
from bus.trust.signing import sign_checkpoint
from bus.trust.verifier import Verifier
from bus.wire.codec import default_codec
from bus.wire.headers import RECEIPT, header
from bus.wire.model import (
    Action,
    LogProof,
    Role,
    Status,
    StatusCode,
    event_digest,
    now_ms,
)
from consumers.inbox import document_folder
from producers.document import new_document
from tests.conftest import MINISTRY, Pki
from tests.stack import BAC_NINH, NGHE_AN, RELOAD, Stack, file_appears, read_topic, running_stack

pytestmark = pytest.mark.integration

BRIDGE = "bridge.vpcp"


@pytest.fixture
async def broker_stack(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        yield stack


async def _send(
    settings: KafkaSettings,
    topic: str,
    value: bytes,
    key: bytes,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    producer = settings.producer()
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, headers=headers or [])
    finally:
        await producer.stop()


async def _rejections(stack: Stack, count: int) -> dict[str, str]:
    """document key → reason of what reached docbus.rejected."""
    found = await read_topic(stack.settings, stack.settings.topics.rejected, count)
    return {
        (r.key or b"").decode(): (header(r.headers, "docbus.error.reason") or b"").decode()
        for r in found
    }


async def _final(stack: Stack, document_id: str, seconds: float = 30) -> State:
    async with asyncio.timeout(seconds):
        entry = await stack.publisher.wait(document_id)
    return entry.state


async def test_a_signer_signature_relabelled_agency_is_a_role_mismatch(
    broker_stack: Stack,
) -> None:
    stack = broker_stack
    signer = stack.ministry[0]
    doc = new_document(MINISTRY, [NGHE_AN], "Một chữ ký, hai vai")
    event = default_codec().decode_event(document_record(doc, [signer]))
    [sig] = event.signatures
    # The two-key rule made a one-key rule: the same signature twice, once called AGENCY.
    twice = dataclasses.replace(event, signatures=(sig, dataclasses.replace(sig, role=Role.AGENCY)))
    doc2 = new_document(MINISTRY, [NGHE_AN], "Chỉ một chữ ký, gọi là con dấu")
    event2 = default_codec().decode_event(document_record(doc2, [signer]))
    relabelled = dataclasses.replace(
        event2,
        signatures=(dataclasses.replace(event2.signatures[0], role=Role.AGENCY),),
    )
    submitted = stack.settings.topics.submitted
    for d, e in ((doc, twice), (doc2, relabelled)):
        await _send(
            stack.settings, submitted, default_codec().encode_event(e), d.document_id.encode()
        )
    reasons = await _rejections(stack, 2)
    assert reasons == {doc.document_id: "role_mismatch", doc2.document_id: "role_mismatch"}
    assert not stack.archive.find(doc.document_id) and not stack.archive.find(doc2.document_id)


async def test_a_service_certificate_cannot_send_documents_of_its_own_or_for_others(
    broker_stack: Stack,
) -> None:
    stack = broker_stack
    gateway = stack.pki.key("docbus.gateway", Role.SERVICE)
    bridge = stack.pki.key(BRIDGE, Role.SERVICE)
    province_seal = stack.pki.key(NGHE_AN, Role.AGENCY)
    # The gateway's certificate as a document sender; a bridge speaking for an agency it
    # does not serve (policy.toml lets bridge.vpcp speak for the ministry only).
    as_gateway = new_document("docbus.gateway", [NGHE_AN], "Văn bản của cổng")
    foreign = new_document(NGHE_AN, [MINISTRY], "Cầu nối không được phép")
    submitted = stack.settings.topics.submitted
    await _send(
        stack.settings,
        submitted,
        document_record(as_gateway, [gateway]),
        as_gateway.document_id.encode(),
    )
    await _send(
        stack.settings,
        submitted,
        document_record(foreign, [bridge, province_seal]),
        foreign.document_id.encode(),
    )
    reasons = await _rejections(stack, 2)
    assert reasons[as_gateway.document_id] in {"sender_mismatch", "missing_signature_role"}
    assert reasons[foreign.document_id] == "sender_mismatch"


@pytest.mark.parametrize("code", [StatusCode.ARCHIVED, StatusCode.REJECTED])
async def test_forged_final_statuses_from_an_agency_or_an_unpinned_service_are_ignored(
    pki: Pki, registry: Registry, broker: EmbeddedBroker, tmp_path: Path, code: StatusCode
) -> None:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path, services=False) as stack:
        doc = new_document(MINISTRY, [NGHE_AN], "Chờ xác nhận lưu trữ")
        record = await stack.publisher.publish(doc)
        digest = event_digest(record)
        for forger in (pki.key(NGHE_AN, Role.AGENCY), pki.key(BRIDGE, Role.SERVICE)):
            assert forger.agency is not None
            # A one-leaf "log" holding the victim's exact record, signed by the forger.
            cp = Checkpoint(forger.agency, 1, leaf_hash(record))
            proof = LogProof(0, 1, cp.root, (), sign_checkpoint(cp, forger))
            forged = Status(
                doc.document_id,
                code,
                forger.agency,
                now_ms(),
                reason="policy" if code is StatusCode.REJECTED else None,
                log=proof,
                event_digest=digest,
            )
            await _send(
                stack.settings,
                stack.settings.topics.status,
                status_record(forged, [forger]),
                doc.sender.encode(),  # keyed for the sender, as the genuine ones: it is read
            )
        await asyncio.sleep(3)
        entry = stack.publisher.outbox.get(doc.document_id)
        assert entry is not None and entry.state is State.PENDING
        seen = [(s.code, s.by) for s in stack.publisher.outbox.statuses(doc.document_id)]
        # A recipient may refuse a document (edXML 02): kept as its feedback, never as the
        # document's fate; the unpinned service's status is not kept at all.
        assert seen == ([(code, NGHE_AN)] if code is StatusCode.REJECTED else [])


async def test_a_rejected_forgery_reusing_a_document_id_does_not_cancel_the_real_one(
    broker_stack: Stack,
) -> None:
    stack = broker_stack
    doc = new_document(MINISTRY, [NGHE_AN], "Văn bản thật")
    # The attacker plants, first, its own document under the victim's id: the gateway
    # rejects it (the sender is not the attacker's agency), bound to the forgery's bytes.
    forged = dataclasses.replace(doc, subject="Văn bản giả")
    attacker = [stack.pki.key(NGHE_AN, Role.SIGNER), stack.pki.key(NGHE_AN, Role.AGENCY)]
    await _send(
        stack.settings,
        stack.settings.topics.submitted,
        document_record(forged, attacker),
        doc.document_id.encode(),
    )
    await asyncio.sleep(1)
    await stack.publisher.publish(doc)
    assert await _final(stack, doc.document_id) is State.ARCHIVED
    [entry] = stack.archive.find(doc.document_id)
    assert entry.sender == MINISTRY and not entry.conflict


async def test_records_written_straight_onto_a_delivery_topic_are_never_archived_or_received(
    broker_stack: Stack,
) -> None:
    stack = broker_stack
    topic = stack.settings.topics.deliver("nghe-an")
    attacker = [stack.pki.key(NGHE_AN, Role.SIGNER), stack.pki.key(NGHE_AN, Role.AGENCY)]
    real = new_document(MINISTRY, [NGHE_AN], "Văn bản đi qua cổng")
    await stack.publisher.publish(real)
    assert await _final(stack, real.document_id) is State.ARCHIVED
    delivered = await read_topic(stack.settings, topic, 1)
    genuine_receipt = header(delivered[0].headers, RECEIPT)
    assert genuine_receipt is not None
    # (a) validly signed by the attacker, no receipt, an unsigned back-dating header;
    # (b) the same with the genuine receipt of another record copied beside it.
    planted = new_document(NGHE_AN, [NGHE_AN], "Văn bản cấy thẳng vào chủ đề giao")
    copied = new_document(NGHE_AN, [NGHE_AN], "Văn bản mượn biên nhận")
    await _send(
        stack.settings,
        topic,
        document_record(planted, attacker),
        planted.document_id.encode(),
        [("docbus.received_at", b"2020-01-01T00:00:00+00:00")],
    )
    await _send(
        stack.settings,
        topic,
        document_record(copied, attacker),
        copied.document_id.encode(),
        [(RECEIPT, genuine_receipt)],
    )
    found = await read_topic(stack.settings, stack.settings.topics.rejected, 6)
    by_doc: dict[str, set[tuple[str, str]]] = {}
    for r in found:
        reason = (header(r.headers, "docbus.error.reason") or b"").decode()
        stage = (header(r.headers, "docbus.error.stage") or b"").decode()
        by_doc.setdefault((r.key or b"").decode(), set()).add((stage, reason))
    for d in (planted, copied):
        assert ("archiver", "policy") in by_doc[d.document_id]
        assert ("inbox", "policy") in by_doc[d.document_id]
        assert not stack.archive.find(d.document_id)
        folder = document_folder(stack.inbox_folder(NGHE_AN), NGHE_AN, d.document_id, 0)
        assert not folder.exists()
    [entry] = stack.archive.find(real.document_id)
    report = verify_archive(stack.archive, Verifier(stack.pki.trust))
    assert report.clean and report.counts["entries"] == 1
    assert abs(entry.received_at - now_ms()) < timedelta(minutes=5)


async def test_another_agency_cannot_touch_a_ministry_documents_identity(
    broker_stack: Stack,
) -> None:
    stack = broker_stack
    doc = new_document(MINISTRY, [NGHE_AN], "Quyết định của Bộ")
    await stack.publisher.publish(doc)
    assert await _final(stack, doc.document_id) is State.ARCHIVED
    # The province sends revision 1 REVOKE of the ministry's id, under its own name.
    revoke = dataclasses.replace(
        doc, sender=NGHE_AN, recipients=(MINISTRY,), revision=1, action=Action.REVOKE
    )
    attacker = [stack.pki.key(NGHE_AN, Role.SIGNER), stack.pki.key(NGHE_AN, Role.AGENCY)]
    await _send(
        stack.settings,
        stack.settings.topics.submitted,
        document_record(revoke, attacker),
        doc.document_id.encode(),
    )
    # Bắc Ninh sends one to the province's inbox too.
    other = [stack.pki.key(BAC_NINH, Role.SIGNER), stack.pki.key(BAC_NINH, Role.AGENCY)]
    to_inbox = dataclasses.replace(revoke, sender=BAC_NINH, recipients=(NGHE_AN,))
    await _send(
        stack.settings,
        stack.settings.topics.submitted,
        document_record(to_inbox, other),
        doc.document_id.encode(),
    )
    found = await read_topic(stack.settings, stack.settings.topics.rejected, 3)
    stages = {
        (header(r.headers, "docbus.error.stage") or b"").decode()
        for r in found
        if (r.key or b"").decode() == doc.document_id
        and (header(r.headers, "docbus.error.reason") or b"") == b"policy"
    }
    assert {"archiver", "inbox"} <= stages
    [entry] = stack.archive.find(doc.document_id)
    assert (entry.sender, entry.revision, entry.conflict) == (MINISTRY, 0, False)
    folder = document_folder(stack.inbox_folder(NGHE_AN), MINISTRY, doc.document_id, 0)
    await file_appears(folder / "event.avro")
    assert not document_folder(stack.inbox_folder(NGHE_AN), BAC_NINH, doc.document_id, 1).exists()


async def test_a_key_revoked_while_the_bus_runs_is_refused_within_the_reload_period(
    broker_stack: Stack, tmp_path: Path
) -> None:
    stack = broker_stack
    signer = stack.pki.key(MINISTRY, Role.SIGNER)
    stack.publisher.keys = [signer, stack.ministry[1]]
    before = new_document(MINISTRY, [NGHE_AN], "Trước khi thu hồi khóa")
    await stack.publisher.publish(before)
    assert await _final(stack, before.document_id) is State.ARCHIVED
    cert = tmp_path / "stolen-signer.pem"
    cert.write_bytes(signer.chain[0].public_bytes(Encoding.PEM))
    stack.pki.dev.revoke(cert)  # the operator's `docbus pki revoke`; nothing restarts
    await asyncio.sleep(RELOAD.total_seconds() * 1.5)
    after = new_document(MINISTRY, [NGHE_AN], "Sau khi thu hồi khóa")
    await stack.publisher.publish(after)
    assert await _final(stack, after.document_id, seconds=45) is State.REJECTED
    entry = stack.publisher.outbox.get(after.document_id)
    assert entry is not None and entry.reason == "certificate_revoked"
