"""Signed records: a payload encoded, signed by every key, and encoded as the record value."""

from __future__ import annotations

from collections.abc import Sequence

from bus.codec import Codec, default_codec
from bus.model import DOCUMENT_TYPE, STATUS_TYPE, Document, Status
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
