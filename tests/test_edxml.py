"""The edXML bridge on the real samples (tests/data/edxml, copied from shared/samples)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from bus.kafka.broker import EmbeddedBroker
from bus.kafka.topics import all_topics, ensure_topics
from bus.registry import Registry
from bus.trust.pki import CertRole, KeyAlgorithm
from bus.wire.codec import default_codec
from bus.wire.edxml import NS_2016, ORIGINAL, EdxmlError, leaf_paths, parse
from bus.wire.model import Action, Document, Priority, Role, Status, StatusCode
from consumers.edxml import document_to_edxml, status_to_edxml
from producers.edxml import import_edxml
from tests.conftest import MINISTRY, Pki

DATA = Path(__file__).parent / "data" / "edxml"
HEADER = "edXMLEnvelope/edXMLHeader/MessageHeader"
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _doc(name: str) -> Document:
    payload = import_edxml((DATA / name).read_bytes())
    assert isinstance(payload, Document)
    return payload


def test_a_new_document_lands_field_by_field() -> None:
    doc = _doc("edoc_new.edxml")
    assert doc.document_id == "000.00.00.G22,2015/09/30,7816/VPCP-TTĐT"
    assert doc.sender == "002.00.20.H13" and doc.recipients == ("28.22.H17",)
    assert doc.action is Action.NEW
    assert doc.code_number == "74fass22/VPCP-TTĐT"
    assert doc.promulgation_place == "Hà Nội" and doc.promulgated_at == date(2019, 1, 16)
    assert doc.document_type == "Công văn"
    assert doc.subject == "V/v kết nối, liên thông phần mềm quản lý văn bản"
    assert doc.signer_name == "Nguyen Thanh Phuc"
    assert doc.signer_title == "Cuc truong cuc ung dung cong nghe thong tin"
    assert doc.due_date == date(2018, 9, 28) and doc.priority is Priority.NORMAL
    e = doc.extra
    assert e[f"{HEADER}/Content"] == doc.subject
    assert e[f"{HEADER}/SignerInfo/Competence"] == "TL. BO TRUONG"
    assert e[f"{HEADER}/OtherInfo/SphereOfPromulgation"] == "Liên thông văn bản quốc gia"
    assert (
        e[f"{HEADER}/OtherInfo/PromulgationAmount"] == "2"
        and e[f"{HEADER}/OtherInfo/PageAmount"] == "22"
    )
    assert e[f"{HEADER}/SteeringType"] == "1"
    assert e[f"{HEADER}/ToPlaces/Place[2]"] == "Uy ban nhan dan cac tinh, TP"
    assert e[f"{HEADER}/OtherInfo/Appendixes/Appendix"].startswith("Công văn về việc")
    assert (
        e["edXMLEnvelope/edXMLHeader/TraceHeaderList/Bussiness/BussinessDocReason"]
        == "Văn bản điện tử mới"
    )
    assert (
        e["edXMLEnvelope/edXMLHeader/TraceHeaderList/Bussiness/StaffInfo/Staff"]
        == "Nguyễn Thị Ngọc Trâm"
    )
    assert e["edxml.signature.algorithm"] == "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
    assert e["edxml.signature.subject"] == "CN=user05"
    [file, original] = doc.attachments
    assert file.name == "1896_QD-TTg_m_294779.doc" and file.media_type == "application/zip"
    assert (
        file.size == len(file.content or b"")
        and file.sha256 == hashlib.sha256(file.content or b"").hexdigest()
    )
    assert (file.content or b"")[:2] == b"PK"  # the base64 really was a zip
    assert original.name == ORIGINAL and original.content == (DATA / "edoc_new.edxml").read_bytes()


def test_a_revocation_keeps_its_recipients_response_and_business_type() -> None:
    doc = _doc("edoc_revocation.edxml")
    assert doc.action is Action.REVOKE
    assert doc.recipients == ("000.00.00.H41", "000.00.00.H14", "000.00.00.G17")
    assert doc.response_for == "000.00.04.G14,2012/08/06,267/VPCP-TTĐT"
    assert doc.code_number == "7816/VPCP-TTĐT"
    assert doc.extra[f"{HEADER}/To[2]/OrganName"] == "UBND Tỉnh Cao Bằng"
    assert doc.extra[f"{HEADER}/ResponseFor/Code"] == "267/VPCP-TTĐT"


@pytest.mark.parametrize(
    ("name", "code", "edxml_code"),
    [
        ("status_inbox_01.edxml", StatusCode.RECEIVED, "01"),
        ("status_rejection_02.edxml", StatusCode.REJECTED, "02"),
        ("status_acceptance_03.edxml", StatusCode.ACCEPTED, "03"),
        ("status_finish_06.edxml", StatusCode.COMPLETED, "06"),
    ],
)
def test_status_codes_map_both_ways(name: str, code: StatusCode, edxml_code: str) -> None:
    status = import_edxml((DATA / name).read_bytes())
    assert isinstance(status, Status) and status.code is code
    assert status.document_id == "000.00.00.G22,2015/09/30,7816/VPCP-TTĐT"
    assert status.by == "000.00.00.H41"
    assert status.at.isoformat() == "2015-09-20T11:08:36+07:00"
    assert status.extra[f"{HEADER}/StaffInfo/Staff"].lower() == "nguyen thi ngoc tram"
    out = status_to_edxml(status)
    assert f"<edXML:StatusCode>{edxml_code}</edXML:StatusCode>".encode() in out


def _comparable(payload: Document | Status) -> Document | Status:
    """What an import keeps of a message: not the bridge's receipt time, not the kept
    original bytes, not the record of the XML signature (an export carries none)."""
    extra = {k: v for k, v in payload.extra.items() if not k.startswith("edxml.signature.")}
    if isinstance(payload, Status):
        return dataclasses.replace(payload, extra=extra)
    files = tuple(a for a in payload.attachments if a.name != ORIGINAL)
    return dataclasses.replace(payload, issued_at=EPOCH, attachments=files, extra=extra)


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.edxml")))
def test_import_export_import_gives_the_same_payload(name: str) -> None:
    first = import_edxml((DATA / name).read_bytes())
    out = document_to_edxml(first) if isinstance(first, Document) else status_to_edxml(first)
    assert out.startswith(b'<?xml version="1.0" encoding="UTF-8"?>') and NS_2016.encode() in out
    again = import_edxml(out)
    assert _comparable(again) == _comparable(first)


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016">&lol3;</edXML>"""
EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE edXML [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016">&xxe;</edXML>"""


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (BOMB, "refused"),
        (EXTERNAL, "refused"),
        (b'<edXML xmlns="http://example.org/other"/>', "unknown namespace"),
        (b"<html/>", "root element is html"),
        (b"garbage<edXML/>", "does not start with '<'"),
        (
            b"<edXML xmlns='http://www.mic.gov.vn/TBT/QCVN_102_2016'><unclosed></edXML>",
            "not well-formed",
        ),
    ],
)
def test_hostile_or_wrong_xml_gives_a_clear_error(data: bytes, says: str) -> None:
    with pytest.raises(EdxmlError, match=says):
        import_edxml(data)


def test_a_hundred_megabyte_attribute_is_refused_before_parsing() -> None:
    huge = (
        b'<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016" a="'
        + b"x" * (100 * 1024 * 1024)
        + b'"/>'
    )
    with pytest.raises(EdxmlError, match="over the"):
        import_edxml(huge)


def test_a_missing_organ_id_names_its_path() -> None:
    text = (DATA / "edoc_revocation.edxml").read_text("utf-8")
    broken = text.replace("<edXML:OrganId>000.00.00.G22</edXML:OrganId>", "", 1).encode()
    with pytest.raises(EdxmlError, match=f"{HEADER}/From/OrganId: missing"):
        import_edxml(broken)
    bad_date = text.replace(
        "2018/09/28</edXML:PromulgationDate>", "2018/13/45</edXML:PromulgationDate>", 1
    )
    with pytest.raises(EdxmlError, match="PromulgationInfo/PromulgationDate: '2018/13/45'"):
        import_edxml(bad_date.encode())


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "bus", *map(str, args)], capture_output=True, text=True, timeout=120
    )
    assert "Traceback" not in done.stderr
    return done


def test_bridge_commands_sign_as_the_registered_agency_only(pki: Pki, tmp_path: Path) -> None:
    pki.key(MINISTRY, Role.AGENCY)
    agencies = pki.dev.root / "agencies"
    bridge = pki.dev.issue("bridge.vpcp", CertRole.SERVICE, KeyAlgorithm.ED25519, replace=True)
    signer = f"{bridge[0]},{bridge[1]}"
    seal = f"{agencies / MINISTRY / 'agency.key.pem'},{agencies / MINISTRY / 'agency.cert.pem'}"
    # the new-document sample comes from 002.00.20.H13, not from this bridge's agency
    done = _run(
        "edxml",
        "import",
        DATA / "edoc_new.edxml",
        "--signer",
        signer,
        "--seal",
        seal,
        "--output",
        tmp_path / "no.avro",
    )
    assert done.returncode == 1 and "sender_mismatch" in done.stderr
    event = tmp_path / "revocation.avro"
    done = _run(
        "edxml",
        "import",
        DATA / "edoc_revocation.edxml",
        "--signer",
        signer,
        "--seal",
        seal,
        "--output",
        event,
    )
    assert done.returncode == 0, done.stderr
    verdict = json.loads(_run("verify", event, "--trust", pki.dev.trust_dir, "--json").stdout)
    # signed by the bridge's SERVICE key and the agency's seal; G17 is not in the registry
    assert verdict["reason"] == "unknown_recipient" and "000.00.00.G17" in verdict["message"]
    done = _run("edxml", "export", event, "--out", tmp_path / "back.edxml")
    assert done.returncode == 0
    back = import_edxml((tmp_path / "back.edxml").read_bytes())
    assert _comparable(back) == _comparable(_doc("edoc_revocation.edxml"))


def test_signed_extras_never_speak_for_another_agency_in_the_exported_edxml() -> None:
    # A province signs a document whose ``extra`` tries to name the ministry as sender, add
    # a recipient, change the code and make it a revocation, in every spelling of a path.
    header = "edXMLEnvelope/edXMLHeader/MessageHeader"
    doc = Document(
        document_id="000.00.00.H41,2026/11/25,7/UBND",
        sender="000.00.00.H41",
        recipients=("000.00.00.H06",),
        subject="Văn bản của tỉnh",
        issued_at=datetime(2026, 11, 25, tzinfo=UTC),
        code_number="7/UBND",
        extra={
            f"{header}/From/OrganId": MINISTRY,
            "edXMLEnvelope[1]/edXMLHeader/MessageHeader/From[2]/OrganId": MINISTRY,
            f"{header}/From[2]/OrganName": "Văn phòng Chính phủ",
            f"{header}/To[2]/OrganId": MINISTRY,
            f"{header}/Code[1]/CodeNumber": "99",
            "edXMLEnvelope/edXMLHeader/TraceHeaderList/Bussiness[2]/BussinessDocType": "1",
            f"{header}/DocumentId": f"{MINISTRY},2026/11/25,1/VPCP",
        },
    )
    exported = document_to_edxml(doc)
    assert MINISTRY.encode() not in exported and "Văn phòng Chính phủ".encode() not in exported
    back = import_edxml(exported)
    assert isinstance(back, Document)
    assert (back.sender, back.recipients, back.document_id, back.code_number, back.action) == (
        doc.sender,
        doc.recipients,
        doc.document_id,
        doc.code_number,
        Action.NEW,
    )


def test_an_extra_naming_a_huge_index_never_builds_a_huge_message() -> None:
    # 2.3 KB of signed extras once made the inbox write a 39 MB .edxml.
    doc = Document(
        document_id="000.00.00.H41,2026/11/25,8/UBND",
        sender="000.00.00.H41",
        recipients=("000.00.00.H06",),
        subject="Đệm",
        issued_at=datetime(2026, 11, 25, tzinfo=UTC),
        extra={
            "edXMLEnvelope/Pad[3000000]": "x",
            **{f"edXMLEnvelope/Pad{i}[19999]": "y" for i in range(100)},
            "edXMLEnvelope/Kept": "z",
            "not a path/[": "w",
        },
    )
    exported = document_to_edxml(doc)
    assert len(exported) < 2 * 1024 * 1024
    back = import_edxml(exported)
    assert isinstance(back, Document) and back.extra["edXMLEnvelope/Kept"] == "z"


def _nested(depth: int) -> bytes:
    return (
        f'<edXML:edXML xmlns:edXML="{NS_2016}">'.encode()
        + b"<a>" * depth
        + b"x"
        + b"</a>" * depth
        + b"</edXML:edXML>"
    )


def test_deep_nesting_is_refused_by_name_not_by_recursion_error() -> None:
    with pytest.raises(EdxmlError, match="nested deeper"):
        import_edxml(_nested(100_000))


def test_many_siblings_each_keep_their_own_path() -> None:
    # Paths are numbered in one pass (the old walk counted names per child: quadratic).
    n = 30_000
    body = b"".join(b"<Note>%d</Note>" % i for i in range(n))
    with pytest.raises(EdxmlError, match="OrganId"):  # still a document with no sender
        import_edxml(
            f'<edXML:edXML xmlns:edXML="{NS_2016}"><edXMLEnvelope>'.encode()
            + body
            + b"</edXMLEnvelope></edXML:edXML>"
        )
    root, _ = parse(f'<edXML:edXML xmlns:edXML="{NS_2016}">'.encode() + body + b"</edXML:edXML>")
    paths = leaf_paths(root)
    assert len(paths) == n
    assert paths[0][0] == "Note[1]" and paths[-1][0] == f"Note[{n}]"
    assert paths[12345][1].text == "12345"


def test_a_bridged_status_answers_the_exact_record_it_names(pki: Pki, tmp_path: Path) -> None:
    # Without the digest the sender's outbox cannot tell which bytes the feedback is about.
    pki.key("000.00.00.H41", Role.AGENCY)
    agencies = pki.dev.root / "agencies"
    bridge = pki.dev.issue("bridge.nghe-an", CertRole.SERVICE, KeyAlgorithm.ED25519, replace=True)
    seal = agencies / "000.00.00.H41"
    answered = tmp_path / "event.avro"
    answered.write_bytes(b"the exact record the inbox kept")
    out = tmp_path / "status.avro"
    done = _run(
        "edxml",
        "import",
        DATA / "status_inbox_01.edxml",
        *("--signer", f"{bridge[0]},{bridge[1]}"),
        *("--seal", f"{seal / 'agency.key.pem'},{seal / 'agency.cert.pem'}"),
        *("--answers", answered, "--output", out),
    )
    assert done.returncode == 0, done.stderr
    codec = default_codec()
    status = codec.decode_payload(codec.decode_event(out.read_bytes()))
    assert isinstance(status, Status)
    assert status.event_digest == hashlib.sha256(answered.read_bytes()).digest()


@pytest.mark.integration
def test_a_bulk_import_takes_each_message_or_says_why_not_with_its_progress(
    pki: Pki, tmp_path: Path, broker: EmbeddedBroker, registry: Registry
) -> None:
    asyncio.run(ensure_topics(broker.settings(), all_topics(broker.settings().topics, registry), 1))
    pki.key(MINISTRY, Role.AGENCY)
    agencies = pki.dev.root / "agencies"
    bridge = pki.dev.issue("bridge.vpcp", CertRole.SERVICE, KeyAlgorithm.ED25519, replace=True)
    garbled = tmp_path / "garbled.edxml"
    garbled.write_bytes(b"<edXMLEnvelope><unclosed")
    outbox = tmp_path / "outbox.sqlite"
    done = _run(
        *("edxml", "import", DATA / "edoc_revocation.edxml", DATA / "edoc_new.edxml", garbled),
        *("--signer", f"{bridge[0]},{bridge[1]}"),
        *(
            "--seal",
            f"{agencies / MINISTRY / 'agency.key.pem'},{agencies / MINISTRY / 'agency.cert.pem'}",
        ),
        *("--bootstrap", broker.bootstrap, "--trust", pki.dev.trust_dir, "--outbox", outbox),
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 of 3 messages taken onto the bus" in done.stdout
    refused = [line for line in done.stderr.splitlines() if ": refused: " in line]
    assert len(refused) == 2 and "sender_mismatch" in refused[0] and "garbled" in refused[1]
    steps = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    last = [s for s in steps if s.get("event") == "progress"][-1]
    assert last["finished"] and last["done"] == last["total"] == 3
    listed = json.loads(_run("outbox", "list", "--outbox", outbox, "--all", "--json").stdout)
    assert len(listed) == 1  # only the message its bridge may speak for was sent
