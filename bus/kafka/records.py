"""Signed records: a payload encoded, signed by every key, and encoded as the record value;
and sending one such record on its own."""

from __future__ import annotations

from collections.abc import Sequence

from bus.kafka.clients import KafkaSettings
from bus.kafka.runtime import Output
from bus.kafka.topics import Topics
from bus.trust.signing import SigningKey, sign_event
from bus.wire.codec import Codec, default_codec
from bus.wire.headers import cloudevent
from bus.wire.limits import check_bounds, check_record_size
from bus.wire.model import DOCUMENT_TYPE, STATUS_TYPE, Document, Status
from bus.wire.names import check_names


def document_record(
    document: Document, keys: Sequence[SigningKey], codec: Codec | None = None
) -> bytes:
    """The exact Kafka record value of ``document`` signed by ``keys``.

    This is where documents are made, so the bounds are checked here: ``too_large`` before
    anything is signed or sent (DESIGN §7).
    """
    check_bounds(document)
    check_names(document)
    c = codec or default_codec()
    record = c.encode_event(sign_event(DOCUMENT_TYPE, c.encode_document(document), keys))
    check_record_size(len(record))
    return record


def status_record(status: Status, keys: Sequence[SigningKey], codec: Codec | None = None) -> bytes:
    """The exact Kafka record value of ``status`` signed by ``keys``."""
    c = codec or default_codec()
    return c.encode_event(sign_event(STATUS_TYPE, c.encode_status(status), keys))


def status_output(status: Status, key: SigningKey, topics: Topics, audience: str) -> Output:
    """A signed status, ready for the runtime to publish on the status topic, keyed by
    ``audience``: the agency it is for (the document's sender; a recipient, for what the
    sender asks of it). Its node reads only the partition that key lands on (DESIGN §8)."""
    return Output(
        topic=topics.status,
        key=audience.encode(),
        value=status_record(status, [key]),
        headers=cloudevent(status, status.by, status.at),
    )


async def send_once(settings: KafkaSettings, output: Output) -> None:
    """Send one record with acks=all from a short-lived producer (a command's one message)."""
    await send_outputs(settings, [output])


async def send_outputs(settings: KafkaSettings, outputs: Sequence[Output]) -> None:
    """Send records in order with acks=all from one short-lived producer."""
    producer = settings.producer()
    await producer.start()
    try:
        for output in outputs:
            await producer.send_and_wait(
                output.topic, output.value, key=output.key, headers=output.headers
            )
    finally:
        await producer.stop()
