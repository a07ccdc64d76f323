"""Confidential documents: sealed to their recipients, verifiable and routable by the bus."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from bus.kafka.records import document_record
from bus.registry import Registry
from bus.trust.addressbook import AddressBook
from bus.trust.pki import CertRole, DevPki, KemAlgorithm, make_leaf, pem_cert
from bus.trust.sealing import EncryptionKey, open_sealed, seal
from bus.trust.signing import SigningKey
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Rejected, Verified, Verifier
from bus.wire.errors import DocbusError, Reason
from bus.wire.model import Confidentiality, Document, SealSuite, attachment, now_ms
from tests.conftest import MINISTRY, Pki

NGHE_AN, BAC_NINH, OUTSIDER = "000.00.00.H41", "000.00.00.H06", "000.00.01.H41"
SUBJECT = "Kế hoạch bảo vệ bí mật nhà nước năm 2026"
BODY = "Nội dung tuyệt mật: phương án A-17".encode()
SUITES = [SealSuite.X25519_SHA256_AES256GCM, SealSuite.MLKEM768X25519_SHA256_AES256GCM]


@pytest.fixture(scope="module")
def book(pki: Pki) -> AddressBook:
    for agency in (NGHE_AN, BAC_NINH, OUTSIDER):
        pki.dev.issue_encryption(agency, KemAlgorithm.MLKEM768_X25519)
    return AddressBook(pki.dev.root / "agencies", pki.trust)


def _key(pki: Pki, agency: str) -> EncryptionKey:
    return EncryptionKey.from_pem(
        (pki.dev.root / "agencies" / agency / "encryption.key.pem").read_bytes()
    )


def _plain(**changes: object) -> Document:
    doc = Document(
        document_id="sealed-1",
        sender=MINISTRY,
        recipients=(NGHE_AN, BAC_NINH),
        subject=SUBJECT,
        issued_at=now_ms(),
        confidentiality=Confidentiality.SECRET,
        attachments=(attachment("phuong-an.txt", BODY), attachment("phu-luc.txt", b"Phu luc 2")),
    )
    return dataclasses.replace(doc, **changes)  # type: ignore[arg-type]


def _sealed(book: AddressBook, suite: SealSuite, **changes: object) -> Document:
    doc = _plain(**changes)
    return seal(doc, [book.recipient(p, now_ms()) for p in (*doc.recipients, *doc.cc)], suite)


@pytest.mark.parametrize("suite", SUITES)
def test_each_recipient_opens_and_nobody_else(
    pki: Pki, book: AddressBook, suite: SealSuite
) -> None:
    sealed = _sealed(book, suite)
    record = document_record(sealed, [])
    assert SUBJECT.encode() not in record and BODY not in record
    for agency in (NGHE_AN, BAC_NINH):
        opened_for, doc = open_sealed(sealed, _key(pki, agency))
        assert opened_for == agency
        assert doc.subject == SUBJECT and doc.attachments[0].content == BODY
        assert doc.attachments[0].sha256 == _plain().attachments[0].sha256  # the plaintext hash
    with pytest.raises(DocbusError, match="not a recipient"):
        open_sealed(sealed, _key(pki, OUTSIDER))
    with pytest.raises(DocbusError, match="not a recipient"):
        open_sealed(sealed, _key(pki, NGHE_AN), agency=OUTSIDER)


@pytest.mark.parametrize("suite", SUITES)
def test_the_bus_verifies_a_sealed_document_without_opening_it(
    pki: Pki,
    book: AddressBook,
    registry: Registry,
    ministry_keys: tuple[SigningKey, SigningKey],
    suite: SealSuite,
) -> None:
    record = document_record(_sealed(book, suite), ministry_keys)
    verdict = Verifier(pki.trust, registry=registry).verify(record, now_ms())
    assert isinstance(verdict, Verified), verdict


def test_every_bit_flip_in_a_sealed_part_is_detected(pki: Pki, book: AddressBook) -> None:
    sealed = _sealed(book, SealSuite.X25519_SHA256_AES256GCM)
    assert sealed.sealed is not None
    key = _key(pki, NGHE_AN)
    subject = sealed.sealed.subject
    content = sealed.attachments[0].content or b""
    for i in range(0, len(subject), 7):
        flipped = bytes(b ^ (1 if n == i else 0) for n, b in enumerate(subject))
        bad = dataclasses.replace(
            sealed, sealed=dataclasses.replace(sealed.sealed, subject=flipped)
        )
        with pytest.raises(DocbusError, match="altered"):
            open_sealed(bad, key)
    for i in range(0, len(content), 5):
        flipped = bytes(b ^ (0x80 if n == i else 0) for n, b in enumerate(content))
        part = dataclasses.replace(sealed.attachments[0], content=flipped)
        bad = dataclasses.replace(sealed, attachments=(part, *sealed.attachments[1:]))
        with pytest.raises(DocbusError) as info:
            open_sealed(bad, key)
        assert info.value.reason is Reason.ATTACHMENT_HASH_MISMATCH
    entry = sealed.sealed.keys[0]
    bad_entry = dataclasses.replace(
        entry, sealed_key=bytes([entry.sealed_key[0] ^ 1]) + entry.sealed_key[1:]
    )
    bad = dataclasses.replace(
        sealed, sealed=dataclasses.replace(sealed.sealed, keys=(bad_entry, *sealed.sealed.keys[1:]))
    )
    with pytest.raises(DocbusError, match="not a recipient's key"):
        open_sealed(bad, _key(pki, entry.agency), agency=entry.agency)


def test_sealed_parts_cannot_move_between_documents(pki: Pki, book: AddressBook) -> None:
    first = _sealed(book, SealSuite.X25519_SHA256_AES256GCM)
    second = _sealed(book, SealSuite.X25519_SHA256_AES256GCM, document_id="sealed-2")
    assert first.sealed is not None and second.sealed is not None
    key = _key(pki, NGHE_AN)
    swapped_parts = dataclasses.replace(second, attachments=first.attachments)
    with pytest.raises(DocbusError, match="another document"):
        open_sealed(swapped_parts, key)
    swapped_keys = dataclasses.replace(
        second, sealed=dataclasses.replace(second.sealed, keys=first.sealed.keys)
    )
    with pytest.raises(DocbusError, match="not a recipient's key"):
        open_sealed(swapped_keys, key)
    # Attachments swapped inside one document are caught too (their index is bound).
    reordered = dataclasses.replace(first, attachments=tuple(reversed(first.attachments)))
    with pytest.raises(DocbusError, match="another document"):
        open_sealed(reordered, key)


def test_dropping_a_recipient_entry_or_a_recipient_is_detected(
    pki: Pki, book: AddressBook, registry: Registry, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    sealed = _sealed(book, SealSuite.X25519_SHA256_AES256GCM)
    assert sealed.sealed is not None
    kept = tuple(k for k in sealed.sealed.keys if k.agency != BAC_NINH)
    dropped = dataclasses.replace(sealed, sealed=dataclasses.replace(sealed.sealed, keys=kept))
    with pytest.raises(DocbusError, match=f"{BAC_NINH} is not a recipient"):
        open_sealed(dropped, _key(pki, BAC_NINH), agency=BAC_NINH)
    verdict = Verifier(pki.trust, registry=registry).verify(
        document_record(dropped, ministry_keys), now_ms()
    )
    assert isinstance(verdict, Rejected) and verdict.reason is Reason.POLICY
    assert f"no sealed key for {BAC_NINH}" in verdict.message
    fewer = dataclasses.replace(dropped, recipients=(NGHE_AN,))  # the recipient list is bound too
    with pytest.raises(DocbusError, match="recipients or manifest were altered"):
        open_sealed(fewer, _key(pki, NGHE_AN))


def test_a_confidential_document_that_is_not_sealed_is_refused(
    pki: Pki, registry: Registry, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    verdict = Verifier(pki.trust, registry=registry).verify(
        document_record(_plain(), ministry_keys), now_ms()
    )
    assert isinstance(verdict, Rejected) and verdict.reason is Reason.POLICY


def test_the_address_book_refuses_bad_certificates(
    pki: Pki, book: AddressBook, tmp_path: Path
) -> None:
    with pytest.raises(DocbusError, match=r"no encryption certificate for 000\.00\.00\.G10"):
        book.recipient("000.00.00.G10", now_ms())
    issuer = pki.dev.issuer()
    folder = tmp_path / "book"
    folder.mkdir()
    key = x25519.X25519PrivateKey.generate()
    # expired
    start = issuer.cert.not_valid_before_utc + timedelta(minutes=1)
    old = make_leaf(
        issuer, "000.00.00.H21", CertRole.ENCRYPTION, key, start, start + timedelta(days=1)
    )
    (folder / "000.00.00.H21.pem").write_bytes(pem_cert(old, issuer.cert))
    # names another agency
    other = make_leaf(issuer, "000.00.00.H24", CertRole.ENCRYPTION, key)
    (folder / "000.00.00.H22.pem").write_bytes(pem_cert(other, issuer.cert))
    # another CA
    rogue = DevPki(tmp_path / "rogue")
    rogue.init()
    rogue_cert = make_leaf(rogue.issuer(), "000.00.00.H23", CertRole.ENCRYPTION, key)
    (folder / "000.00.00.H23.pem").write_bytes(pem_cert(rogue_cert, rogue.issuer().cert))
    # revoked
    revoked = make_leaf(issuer, "000.00.00.H25", CertRole.ENCRYPTION, key)
    (folder / "000.00.00.H25.pem").write_bytes(pem_cert(revoked, issuer.cert))
    pki.dev.revoke(folder / "000.00.00.H25.pem")
    checked = AddressBook(folder, TrustStore.load(pki.dev.trust_dir))
    expected = {
        "000.00.00.H21": Reason.CERTIFICATE_EXPIRED,
        "000.00.00.H22": Reason.SENDER_MISMATCH,
        "000.00.00.H23": Reason.UNTRUSTED_CERTIFICATE,
        "000.00.00.H25": Reason.CERTIFICATE_REVOKED,
    }
    later = now_ms() + timedelta(days=3)  # the H21 certificate lived one day
    for agency, reason in expected.items():
        with pytest.raises(DocbusError) as info:
            checked.recipient(agency, later)
        assert info.value.reason is reason, (agency, info.value)


def test_only_routing_metadata_travels_in_clear_and_the_sender_is_bound(
    pki: Pki, book: AddressBook, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    sealed = _sealed(
        book,
        SealSuite.X25519_SHA256_AES256GCM,
        code_number="12-KH/BQP",
        signer_name="Nguyễn Văn A",
        extra={"edXMLEnvelope/OtherInfo/Note": "ghi chú mật"},
    )
    record = document_record(sealed, ministry_keys)
    hidden = [SUBJECT, "12-KH/BQP", "phuong-an.txt", "text/plain", "Nguyễn Văn A", "ghi chú mật"]
    for text in hidden:
        assert text.encode() not in record, text
    for text in (MINISTRY, NGHE_AN, BAC_NINH, "sealed-1"):
        assert text.encode() in record, text
    _, opened = open_sealed(sealed, _key(pki, NGHE_AN), NGHE_AN)
    plain = _plain(
        code_number="12-KH/BQP",
        signer_name="Nguyễn Văn A",
        extra={"edXMLEnvelope/OtherInfo/Note": "ghi chú mật"},
    )
    assert (opened.subject, opened.code_number, opened.signer_name, opened.extra) == (
        plain.subject,
        plain.code_number,
        plain.signer_name,
        plain.extra,
    )
    assert [(a.name, a.media_type, a.content) for a in opened.attachments] == [
        (a.name, a.media_type, a.content) for a in plain.attachments
    ]
    # The sealed payload re-sent under another sender does not open: the sender is bound.
    stolen = dataclasses.replace(sealed, sender="000.00.00.H06")
    with pytest.raises(DocbusError, match="sender"):
        open_sealed(stolen, _key(pki, NGHE_AN), NGHE_AN)
