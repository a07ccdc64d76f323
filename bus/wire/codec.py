"""Avro single-object encoding (DESIGN §3) for every docbus record.

A record is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of the writer
schema's parsing canonical form + the Avro binary body. Decoding finds the writer schema
among every version under ``schemas/`` (current and ``history/``) and resolves it to the
current reader schema of the same name.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any, TypeVar, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from bus.wire.errors import DocbusError, Reason
from bus.wire.limits import MAX_RECORD_BYTES
from bus.wire.model import DOCUMENT_TYPE, STATUS_TYPE, Document, SignedEvent, Status

MAGIC = b"\xc3\x01"
HEADER_SIZE = 10

T = TypeVar("T")

SIGNED_EVENT = "docbus.SignedEvent"
DOCUMENT = "docbus.Document"
STATUS = "docbus.Status"


@dataclass(frozen=True)
class _Schema:
    name: str
    fingerprint: bytes
    parsed: Any


def _load(text: str) -> _Schema:
    raw = json.loads(text)
    parsed = cast(dict[str, Any], parse_schema(raw, named_schemas={}))
    canonical = to_parsing_canonical_form(parsed)
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    return _Schema(name=parsed["name"], fingerprint=fp, parsed=parsed)


def _avsc_files(folder: Traversable) -> list[Traversable]:
    return sorted((f for f in folder.iterdir() if f.name.endswith(".avsc")), key=lambda f: f.name)


class Codec:
    """Encodes and decodes single-object Avro records against a set of known schemas."""

    def __init__(self, schema_dir: Traversable, max_record_bytes: int = MAX_RECORD_BYTES):
        self.max_record_bytes = max_record_bytes
        self._current: dict[str, _Schema] = {}
        self._writers: dict[bytes, _Schema] = {}
        for f in _avsc_files(schema_dir):
            s = _load(f.read_text(encoding="utf-8"))
            self._current[s.name] = s
            self._writers[s.fingerprint] = s
        history = schema_dir / "history"
        if history.is_dir():
            for f in _avsc_files(history):
                s = _load(f.read_text(encoding="utf-8"))
                self._writers.setdefault(s.fingerprint, s)

    def with_limit(self, max_record_bytes: int) -> Codec:
        """The same codec with another record size limit (the schemas are shared)."""
        other = copy.copy(self)
        other.max_record_bytes = max_record_bytes
        return other

    def fingerprint(self, name: str) -> bytes:
        """The fingerprint of the current schema called ``name``."""
        return self._current[name].fingerprint

    def encode(self, name: str, datum: dict[str, Any]) -> bytes:
        """Encode ``datum`` with the current schema ``name`` (e.g. ``docbus.Document``)."""
        schema = self._current[name]
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(schema.fingerprint)
        try:
            schemaless_writer(out, schema.parsed, datum, strict=True)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DocbusError(Reason.MALFORMED, f"cannot encode {name}: {exc}") from exc
        return out.getvalue()

    def decode(self, data: bytes, expected: str) -> dict[str, Any]:
        """Decode one record whose writer schema must be a version of ``expected``.

        Raises DocbusError with reason ``too_large``, ``malformed`` or ``unknown_schema``;
        never anything else, whatever the bytes.
        """
        if len(data) > self.max_record_bytes:
            raise DocbusError(
                Reason.TOO_LARGE, f"record of {len(data)} bytes over {self.max_record_bytes}"
            )
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise DocbusError(Reason.MALFORMED, "not an Avro single-object record (bad magic)")
        writer = self._writers.get(bytes(data[2:HEADER_SIZE]))
        if writer is None:
            raise DocbusError(
                Reason.UNKNOWN_SCHEMA, f"unknown schema fingerprint {data[2:HEADER_SIZE].hex()}"
            )
        if writer.name != expected:
            raise DocbusError(Reason.MALFORMED, f"expected {expected}, got {writer.name}")
        body = io.BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            datum = schemaless_reader(body, writer.parsed, self._current[expected].parsed)
        except Exception as exc:  # fastavro raises many types on hostile bytes
            raise DocbusError(Reason.MALFORMED, f"cannot decode {expected}: {exc!r}") from exc
        if body.tell() != len(data):
            raise DocbusError(Reason.MALFORMED, f"{len(data) - body.tell()} trailing bytes")
        if not isinstance(datum, dict):
            raise DocbusError(Reason.MALFORMED, f"{expected} did not decode to a record")
        return datum

    def encode_event(self, event: SignedEvent) -> bytes:
        """The exact record value of a signed event."""
        return self.encode(SIGNED_EVENT, event.to_avro())

    def decode_event(self, data: bytes) -> SignedEvent:
        """Decode a record value into a signed event (payload left as its signed bytes)."""
        return _typed(SignedEvent.from_avro, self.decode(data, SIGNED_EVENT), SIGNED_EVENT)

    def encode_document(self, document: Document) -> bytes:
        return self.encode(DOCUMENT, document.to_avro())

    def decode_document(self, data: bytes) -> Document:
        return _typed(Document.from_avro, self.decode(data, DOCUMENT), DOCUMENT)

    def encode_status(self, status: Status) -> bytes:
        return self.encode(STATUS, status.to_avro())

    def decode_status(self, data: bytes) -> Status:
        return _typed(Status.from_avro, self.decode(data, STATUS), STATUS)

    def claims(self, record: bytes) -> Document | Status | None:
        """What a record says it carries, unverified (None if it does not decode): for a
        reader to skip what is plainly not for it before paying for verification."""
        try:
            return self.decode_payload(self.decode_event(record))
        except DocbusError:
            return None

    def decode_payload(self, event: SignedEvent) -> Document | Status:
        """Decode the payload of ``event`` according to its payload type."""
        if event.payload_type == DOCUMENT_TYPE:
            return self.decode_document(event.payload)
        if event.payload_type == STATUS_TYPE:
            return self.decode_status(event.payload)
        raise DocbusError(Reason.MALFORMED, f"unknown payload type {event.payload_type!r}")


def _typed(build: Callable[[dict[str, Any]], T], datum: dict[str, Any], name: str) -> T:
    try:
        return build(datum)
    except (ValueError, KeyError) as exc:  # e.g. an enum symbol newer than this reader
        raise DocbusError(Reason.MALFORMED, f"bad {name}: {exc}") from exc


@cache
def default_codec() -> Codec:
    """The codec over the schemas shipped with the package."""
    return Codec(files("bus") / "schemas")
