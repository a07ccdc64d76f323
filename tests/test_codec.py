"""The Avro single-object codec: round trips, schema history, hostile bytes."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime
from importlib.resources import files

import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.schema import parse as avro_parse
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.wire.codec import DOCUMENT, MAGIC, STATUS, Codec, default_codec
from bus.wire.errors import DocbusError, Reason
from bus.wire.model import (
    Action,
    Algorithm,
    Attachment,
    Confidentiality,
    Document,
    Priority,
    Role,
    Signature,
    SignedEvent,
    Status,
    StatusCode,
)

VIETNAMESE = "ăâđêôơưàảãáạằẳẵắặầẩẫấậèẻẽéẹềểễếệìỉĩíịòỏõóọồổỗốộờởỡớợùủũúụừửữứựỳỷỹýỵĐƯƠ"
text = st.text(alphabet=st.sampled_from(VIETNAMESE) | st.characters(codec="utf-8"), max_size=40)
codes = st.from_regex(r"\A[0-9]{3}\.[0-9]{2}\.[0-9]{2}\.[GH][0-9]{2}\Z")
millis = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
attachments = st.builds(
    Attachment,
    name=text,
    media_type=text,
    size=st.integers(0, 2**40),
    sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
    content=st.none() | st.binary(max_size=200),
    location=st.none() | text,
)
documents = st.builds(
    Document,
    document_id=text,
    sender=codes,
    recipients=st.lists(codes, min_size=1, max_size=4).map(tuple),
    subject=text,
    issued_at=millis,
    revision=st.integers(0, 2**31 - 1),
    action=st.sampled_from([a for a in Action if a is not Action.UNKNOWN]),
    cc=st.lists(codes, max_size=3).map(tuple),
    code_number=st.none() | text,
    document_type=st.none() | text,
    promulgated_at=st.none() | st.dates(date(1900, 1, 1), date(2200, 1, 1)),
    promulgation_place=st.none() | text,
    signer_name=st.none() | text,
    signer_title=st.none() | text,
    priority=st.sampled_from(Priority),
    confidentiality=st.sampled_from(
        [c for c in Confidentiality if c is not Confidentiality.UNKNOWN]
    ),
    due_date=st.none() | st.dates(date(1900, 1, 1), date(2200, 1, 1)),
    response_for=st.none() | text,
    attachments=st.lists(attachments, max_size=3).map(tuple),
    extra=st.dictionaries(text, text, max_size=3),
)


@given(documents)
def test_documents_round_trip_exactly(doc: Document) -> None:
    codec = default_codec()
    assert codec.decode_document(codec.encode_document(doc)) == doc


def test_vietnamese_text_survives_byte_for_byte() -> None:
    subject = "V/v kết nối, liên thông phần mềm quản lý văn bản — Thừa Thiên Huế"
    doc = Document(
        "x", "000.00.00.G22", ("000.00.00.H41",), subject, datetime(2025, 7, 1, tzinfo=UTC)
    )
    record = default_codec().encode_document(doc)
    assert subject.encode("utf-8") in record
    assert default_codec().decode_document(record).subject == subject


@given(
    st.builds(
        Status,
        document_id=text,
        code=st.sampled_from([c for c in StatusCode if c is not StatusCode.UNKNOWN]),
        by=text,
        at=millis,
        reason=st.none() | text,
        rerouted=st.dictionaries(codes, codes, max_size=2),
    )
)
def test_statuses_round_trip(status: Status) -> None:
    codec = default_codec()
    assert codec.decode_status(codec.encode_status(status)) == status


def test_record_header_is_magic_and_little_endian_fingerprint() -> None:
    codec = default_codec()
    record = codec.encode_status(Status("d", StatusCode.DELIVERED, "gw", datetime.now(UTC)))
    schema = json.loads((files("bus") / "schemas" / "Status.avsc").read_text("utf-8"))
    canonical = to_parsing_canonical_form(parse_schema(schema, named_schemas={}))
    assert record[:2] == MAGIC == b"\xc3\x01"
    assert record[2:10] == bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def test_fingerprint_matches_the_avro_specification_vector() -> None:
    # Avro spec: the CRC-64-AVRO of "null" is 0x63dd24e7cc258f8a, written little-endian.
    assert bytes.fromhex(fingerprint('"null"', "CRC-64-AVRO")) == (0x63DD24E7CC258F8A).to_bytes(
        8, "little"
    )


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_typed_error(data: bytes) -> None:
    codec = default_codec()
    for name in (DOCUMENT, STATUS, "docbus.SignedEvent"):
        try:
            codec.decode(data, name)
        except DocbusError as exc:
            assert exc.reason in (Reason.MALFORMED, Reason.UNKNOWN_SCHEMA)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bodies_behind_a_known_header_give_a_typed_error(body: bytes) -> None:
    codec = default_codec()
    header = MAGIC + codec.fingerprint(DOCUMENT)
    with pytest.raises(DocbusError) as info:
        codec.decode_document(header + body)
    assert info.value.reason is Reason.MALFORMED


def test_every_truncation_of_a_record_is_malformed() -> None:
    codec = default_codec()
    doc = Document(
        "id-1", "000.00.00.G22", ("000.00.00.H41",), "Về việc", datetime(2025, 1, 1, tzinfo=UTC)
    )
    record = codec.encode_document(doc)
    for cut in range(len(record)):
        with pytest.raises(DocbusError) as info:
            codec.decode_document(record[:cut])
        assert info.value.reason is Reason.MALFORMED


def test_a_length_prefix_claiming_gigabytes_is_malformed_without_allocating() -> None:
    codec = default_codec()
    huge = 8 * 2**30  # 8 GiB, zig-zag varint encoded
    zigzag, varint = huge << 1, bytearray()
    while zigzag > 0x7F:
        varint.append(zigzag & 0x7F | 0x80)
        zigzag >>= 7
    varint.append(zigzag)
    with pytest.raises(DocbusError) as info:
        codec.decode_document(MAGIC + codec.fingerprint(DOCUMENT) + bytes(varint) + b"abc")
    assert info.value.reason is Reason.MALFORMED


def test_unknown_fingerprint_and_wrong_magic() -> None:
    codec = default_codec()
    with pytest.raises(DocbusError) as info:
        codec.decode_document(MAGIC + b"\x01" * 8 + b"\x00")
    assert info.value.reason is Reason.UNKNOWN_SCHEMA
    with pytest.raises(DocbusError) as info:
        codec.decode_document(b"\xc3\x02" + codec.fingerprint(DOCUMENT) + b"\x00")
    assert info.value.reason is Reason.MALFORMED


def test_a_record_over_the_size_limit_is_too_large() -> None:
    codec = Codec(files("bus") / "schemas", max_record_bytes=100)
    with pytest.raises(DocbusError) as info:
        codec.decode_document(b"\xc3\x01" + b"\x00" * 200)
    assert info.value.reason is Reason.TOO_LARGE


def test_a_status_record_is_not_taken_for_a_document() -> None:
    codec = default_codec()
    record = codec.encode_status(Status("d", StatusCode.DELIVERED, "gw", datetime.now(UTC)))
    with pytest.raises(DocbusError) as info:
        codec.decode_document(record)
    assert info.value.reason is Reason.MALFORMED


def test_trailing_bytes_are_malformed() -> None:
    codec = default_codec()
    record = codec.encode_status(Status("d", StatusCode.DELIVERED, "gw", datetime.now(UTC)))
    with pytest.raises(DocbusError):
        codec.decode_status(record + b"\x00")


def test_signed_events_round_trip() -> None:
    codec = default_codec()
    event = SignedEvent(
        "application/vnd.docbus.document+avro",
        b"\x00payload",
        (Signature(Role.SIGNER, Algorithm.ED25519, "ab" * 32, (b"der1", b"der2"), b"sig"),),
    )
    assert codec.decode_event(codec.encode_event(event)) == event


def _history(name: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(
        (files("bus") / "schemas" / "history" / name).read_text("utf-8")
    )
    return loaded


def test_a_reader_on_current_schemas_reads_data_written_with_version_1() -> None:
    v1 = parse_schema(_history("Document.v1.avsc"), named_schemas={})
    datum = {
        "document_id": "000.00.00.G22,2015/09/30,7816/VPCP-TTĐT",
        "revision": 0,
        "action": "NEW",
        "sender": "000.00.00.G22",
        "recipients": ["000.00.00.H41"],
        "code_number": "7816/VPCP-TTĐT",
        "document_type": "Công văn",
        "subject": "V/v kết nối, liên thông phần mềm quản lý văn bản",
        "promulgated_at": date(2015, 9, 30),
        "promulgation_place": "Hà Nội",
        "signer_name": None,
        "signer_title": None,
        "priority": "URGENT",
        "confidentiality": "NONE",
        "issued_at": datetime(2015, 9, 30, 8, tzinfo=UTC),
        "attachments": [],
        "sealed": None,
    }
    out = io.BytesIO()
    out.write(MAGIC + bytes.fromhex(fingerprint(to_parsing_canonical_form(v1), "CRC-64-AVRO")))
    schemaless_writer(out, v1, datum)
    doc = default_codec().decode_document(out.getvalue())
    assert doc.subject == datum["subject"]
    assert doc.priority is Priority.URGENT
    assert doc.cc == () and doc.extra == {} and doc.due_date is None and doc.response_for is None


def test_every_schema_is_full_transitive_compatible_with_its_history() -> None:
    schemas = files("bus") / "schemas"
    checker = ReaderWriterCompatibilityChecker()
    checked = 0
    for old_file in (schemas / "history").iterdir():
        if not old_file.name.endswith(".avsc"):
            continue
        current_name = old_file.name.split(".")[0] + ".avsc"
        old = avro_parse(old_file.read_text("utf-8"))
        new = avro_parse((schemas / current_name).read_text("utf-8"))
        for reader, writer in ((new, old), (old, new)):
            result = checker.get_compatibility(reader, writer)
            assert result.compatibility is SchemaCompatibilityType.compatible, (
                f"{old_file.name} vs {current_name}: {result.messages}"
            )
        checked += 1
    assert checked >= 1
