"""Signed records: a payload encoded, signed by every key, and encoded as the record value."""

from __future__ import annotations

from collections.abc import Sequence

from bus.codec import Codec, default_codec
from bus.headers import cloudevent
from bus.kafka import Topics
from bus.model import DOCUMENT_TYPE, STATUS_TYPE, Document, Status
from bus.runtime import Output
from bus.signing import SigningKey, sign_event


def document_record(
    document: Document, keys: Sequence[SigningKey], codec: Codec | None = None
) -> bytes:
    """The exact Kafka record value of ``document`` signed by ``keys``."""
    c = codec or default_codec()
    return c.encode_event(sign_event(DOCUMENT_TYPE, c.encode_document(document), keys))


def status_record(status: Status, keys: Sequence[SigningKey], codec: Codec | None = None) -> bytes:
    """The exact Kafka record value of ``status`` signed by ``keys``."""
    c = codec or default_codec()
    return c.encode_event(sign_event(STATUS_TYPE, c.encode_status(status), keys))


def status_output(status: Status, key: SigningKey, topics: Topics) -> Output:
    """A signed status, ready for the runtime to publish on the status topic."""
    return Output(
        topic=topics.status,
        key=status.document_id.encode(),
        value=status_record(status, [key]),
        headers=cloudevent(status, status.by, status.at),
    )
