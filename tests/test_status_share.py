"""Each status goes to whom it is for (DESIGN §8): statuses are keyed by the agency they are
for, and a node reads only the partition its key lands on and hands its handler only records
keyed for it. Tried on the embedded broker with a status topic of eight partitions, with
junk and forgeries from someone who can write to the topic."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from bus.kafka.broker import EmbeddedBroker
from bus.kafka.metrics import RECORDS_IN
from bus.kafka.records import send_outputs, status_record
from bus.kafka.runtime import Output
from bus.kafka.topics import partition_of
from bus.registry import Registry
from bus.store.outbox import State
from bus.wire.headers import header
from bus.wire.model import Role, Status, StatusCode, event_digest, now_ms
from producers.document import new_document
from tests.conftest import MINISTRY, PROVINCE, Pki
from tests.stack import read_topic, running_stack

PARTITIONS = 8


@given(key=st.binary(min_size=1, max_size=40), count=st.integers(min_value=1, max_value=512))
def test_a_reader_finds_the_partition_the_producer_writes_to(key: bytes, count: int) -> None:
    # The node computes where its key lands as Kafka's producers place it (murmur2).
    assert partition_of(key, count) == DefaultPartitioner()(key, list(range(count)), [])


async def test_a_node_fetches_its_share_and_decodes_only_what_is_keyed_for_it(
    pki: Pki, registry: Registry, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path, partitions=8) as stack:
        topic = stack.settings.topics.status
        fetched = RECORDS_IN.labels("outbox", topic)
        before = fetched._value.get()
        # 400 records for 100 other agencies: never the ministry's node's to decode.
        others = [f"000.00.{n // 100:02d}.X{n % 100:02d}".encode() for n in range(100)]
        junk = [Output(topic, key, b"junk for " + key) for key in others for _ in range(4)]
        # A forged ARCHIVED about the ministry's document, keyed for it: read and refused.
        doc = new_document(MINISTRY, [PROVINCE], "Phần của mỗi nút")
        record = await stack.publisher.publish(doc)
        forged = Status(
            doc.document_id,
            StatusCode.ARCHIVED,
            PROVINCE,
            now_ms(),
            event_digest=event_digest(record),
        )
        signed = status_record(forged, [pki.key(PROVINCE, Role.AGENCY)])
        await send_outputs(stack.settings, [*junk, Output(topic, MINISTRY.encode(), signed)])
        async with asyncio.timeout(60):
            entry = await stack.publisher.wait(doc.document_id)
        assert entry.state is State.ARCHIVED  # the genuine statuses, keyed for it, arrived
        rejected = await read_topic(stack.settings, stack.settings.topics.rejected, 1, 10)
        assert [r.value for r in rejected] == [signed]  # the forgery; never the junk
        assert header(rejected[0].headers, "docbus.error.reason") is not None
        ours = partition_of(MINISTRY.encode(), PARTITIONS)
        landed = sum(partition_of(o.key or b"", PARTITIONS) == ours for o in junk)
        # Only its partition is fetched: the junk that happens to share it, its own records.
        assert fetched._value.get() - before <= landed + 10 < len(junk) / 2
