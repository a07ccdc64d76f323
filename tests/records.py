"""Records as the broker would hand them to a handler, for broker-free handler tests."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord

from bus.kafka.records import status_record
from bus.trust.signing import SigningKey
from bus.wire.codec import default_codec
from bus.wire.headers import RECEIPT
from bus.wire.model import Status, StatusCode, event_digest, now_ms


def delivered(
    value: bytes, gateway: SigningKey, offset: int, topic: str = "docbus.deliver.nghe-an"
) -> ConsumerRecord[bytes, bytes]:
    """``value`` on a delivery topic with the gateway's signed receipt beside it."""
    headers = tuple(receipt_headers(value, gateway))
    return ConsumerRecord(topic, 0, offset, 0, 0, None, value, None, 0, len(value), headers)


def receipt_headers(value: bytes, gateway: SigningKey) -> list[tuple[str, bytes]]:
    """The header a gateway puts beside a record it delivers: its signed receipt."""
    codec = default_codec()
    doc = codec.decode_document(codec.decode_event(value).payload)
    assert gateway.agency is not None
    receipt = Status(
        doc.document_id,
        StatusCode.DELIVERED,
        gateway.agency,
        now_ms(),
        doc.revision,
        event_digest=event_digest(value),
    )
    return [(RECEIPT, status_record(receipt, [gateway]))]
