"""Kafka headers: CloudEvents binary mode, W3C traceparent, dead-letter error headers.

Headers are for tooling and tracing only: nothing is decided on an unsigned header.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime

from bus.wire.model import Document, Status

Headers = list[tuple[str, bytes]]

ERROR_PREFIX = "docbus.error."
#: On a rejected record too large to copy: where its exact bytes are kept (the blob store
#: by SHA-256), their size and the topic it was bound for.
KEPT_PREFIX = "docbus.kept."
#: The gateway's signed DELIVERED status for a delivered record: its signed receipt time.
RECEIPT = "docbus.receipt"


#: Beside a checkpoint on the checkpoint topic: its log key's certificates (DER, leaf first)
#: and a consistency proof from the log's previous checkpoint, for witnesses to check.
LOG_CERT = "docbus.log_cert"
CONSISTENCY_FROM = "docbus.consistency_from"
CONSISTENCY = "docbus.consistency"
#: Beside a cosigned checkpoint: the witness and its certificates (DER, leaf first).
COSIGNED_BY = "docbus.cosigned_by"
WITNESS_CERT = "docbus.witness_cert"


def log_headers(chain: Sequence[bytes], since: int, proof: Sequence[bytes]) -> Headers:
    """What a witness needs beside a checkpoint note (nothing here is trusted unchecked)."""
    return [
        *((LOG_CERT, der) for der in chain),
        (CONSISTENCY_FROM, str(since).encode()),
        (CONSISTENCY, b"".join(proof)),
    ]


def headers_all(headers: Headers | tuple[tuple[str, bytes], ...], name: str) -> list[bytes]:
    """Every value of header ``name``, in order."""
    return [value for key, value in headers if key == name]


def traceparent() -> bytes:
    """A fresh W3C trace context (version 00, sampled)."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01".encode()


def cloudevent(payload: Document | Status, source: str, time: datetime) -> Headers:
    """CloudEvents Kafka binding headers (binary mode) for a document or status event."""
    kind = "docbus.document.v1" if isinstance(payload, Document) else "docbus.status.v1"
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", f"{payload.document_id}:{payload.revision}".encode()),
        ("ce_source", f"urn:docbus:agency:{source}".encode()),
        ("ce_type", kind.encode()),
        ("ce_time", time.isoformat().encode()),
        ("content-type", b"application/avro"),
        ("traceparent", traceparent()),
    ]


def header(headers: Headers | tuple[tuple[str, bytes], ...], name: str) -> bytes | None:
    """The last value of header ``name``, or None."""
    found = None
    for key, value in headers:
        if key == name:
            found = value
    return found


def record_time(timestamp_ms: int) -> datetime:
    """A Kafka record's own timestamp (set by its producer: a hint, never proof)."""
    return datetime.fromtimestamp(timestamp_ms / 1000).astimezone()


def error_headers(
    reason: str,
    stage: str,
    topic: str,
    partition: int,
    offset: int,
    message: str,
    attempts: int,
    first_failure: datetime,
) -> Headers:
    """Dead-letter headers shaped like Kafka Connect's, under the docbus.error. prefix."""
    fields = {
        "reason": reason,
        "stage": stage,
        "topic": topic,
        "partition": str(partition),
        "offset": str(offset),
        "message": message[:2000],
        "attempts": str(attempts),
        "first_failure": first_failure.isoformat(),
    }
    return [(ERROR_PREFIX + k, v.encode()) for k, v in fields.items()]
