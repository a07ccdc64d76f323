"""Confidential documents (DESIGN §5): sealed to their recipients, readable by nobody else.

Only what routing needs stays readable: sender, recipients, ids, revision, action,
priority, confidentiality and dates. The subject, code number, document type, signer,
place, ``extra``, and every attachment's name, media type and content are encrypted with
AES-256-GCM under a fresh content key (the text in a sealed manifest); the content key is
sealed to each recipient with HPKE (RFC 9180; X25519 with HKDF-SHA256 by default,
ML-KEM-768+X25519 on request). The associated data binds every sealed part to the sender,
document id, revision and recipient list, and each sealed key also to the manifest, so
nothing can be re-sent under another sender, to other recipients or with another
manifest. Attachment hashes in the event cover the ciphertext (the bus checks them); the
plaintext hashes travel inside the manifest (the recipient checks them). Pure logic: keys
come in as objects or bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bus.wire.errors import DocbusError, Misconfigured, Reason
from bus.wire.model import (
    Attachment,
    Confidentiality,
    Document,
    SealedKey,
    Sealing,
    SealSuite,
)

NONCE = 12
SUITES = {
    SealSuite.X25519_SHA256_AES256GCM: (
        hpke.KEM.X25519,
        hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    ),
    SealSuite.MLKEM768X25519_SHA256_AES256GCM: (
        hpke.KEM.MLKEM768_X25519,
        hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    ),
}


@dataclass(frozen=True)
class RecipientKey:
    """A recipient agency's public encryption key(s), from its encryption certificate(s)."""

    agency: str
    key_id: str
    dh: x25519.X25519PublicKey
    kem: mlkem.MLKEM768PublicKey | None = None

    def public(self, suite: SealSuite) -> x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey:
        if suite is SealSuite.X25519_SHA256_AES256GCM:
            return self.dh
        if self.kem is None:
            raise DocbusError(Reason.POLICY, f"{self.agency} has no ML-KEM-768 encryption key")
        return hpke.MLKEM768X25519PublicKey(self.kem, self.dh)


@dataclass(frozen=True)
class EncryptionKey:
    """A recipient's private encryption key(s)."""

    dh: x25519.X25519PrivateKey
    kem: mlkem.MLKEM768PrivateKey | None = None

    @classmethod
    def from_pem(cls, data: bytes) -> EncryptionKey:
        """An X25519 key, optionally followed by an ML-KEM-768 key, as PKCS#8 PEM blocks."""
        blocks = [b"-----BEGIN" + b for b in data.split(b"-----BEGIN")[1:]]
        found: dict[type, object] = {}
        for block in blocks:
            try:
                key = serialization.load_pem_private_key(block, password=None)
            except ValueError:
                continue
            found[type(key)] = key
        x = next((k for k in found.values() if isinstance(k, x25519.X25519PrivateKey)), None)
        m = next((k for k in found.values() if isinstance(k, mlkem.MLKEM768PrivateKey)), None)
        if x is None:
            raise Misconfigured("no X25519 encryption key in the file")
        return cls(x, m)

    def private(self, suite: SealSuite) -> x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey:
        if suite is SealSuite.X25519_SHA256_AES256GCM:
            return self.dh
        if self.kem is None:
            raise DocbusError(Reason.POLICY, "this key has no ML-KEM-768 part")
        return hpke.MLKEM768X25519PrivateKey(self.kem, self.dh)


def recipient_key(agency: str, leaves: Sequence[x509.Certificate]) -> RecipientKey:
    """A RecipientKey from an agency's encryption certificate(s) (already checked)."""
    x = next((c for c in leaves if isinstance(c.public_key(), x25519.X25519PublicKey)), None)
    m = next((c for c in leaves if isinstance(c.public_key(), mlkem.MLKEM768PublicKey)), None)
    if x is None:
        raise DocbusError(Reason.POLICY, f"no X25519 encryption certificate for {agency}")
    kid = hashlib.sha256(x.public_bytes(serialization.Encoding.DER)).hexdigest()
    return RecipientKey(agency, kid, x.public_key(), None if m is None else m.public_key())  # type: ignore[arg-type]


def parties(doc: Document) -> list[str]:
    """Everyone a document is sealed to: recipients and copies, once each, sorted."""
    return sorted({*doc.recipients, *doc.cc})


def _context(doc: Document) -> bytes:
    identity = [doc.sender, doc.document_id, doc.revision, parties(doc)]
    return b"docbus-seal-v2\x00" + json.dumps(identity, ensure_ascii=False).encode()


def _key_info(context: bytes, agency: str, manifest: bytes) -> bytes:
    """What a sealed key is bound to: the document, its recipient and the sealed manifest."""
    return context + agency.encode() + b"\x00" + hashlib.sha256(manifest).digest()


#: Text fields a sealed document carries only inside its manifest.
_SEALED_TEXT = (
    "subject",
    "code_number",
    "document_type",
    "promulgation_place",
    "signer_name",
    "signer_title",
)


def _encrypt(aes: AESGCM, data: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE)
    return nonce + aes.encrypt(nonce, data, aad)


def _decrypt(aes: AESGCM, blob: bytes, aad: bytes, what: str) -> bytes:
    try:
        return aes.decrypt(blob[:NONCE], blob[NONCE:], aad)
    except InvalidTag:
        raise DocbusError(
            Reason.ATTACHMENT_HASH_MISMATCH,
            f"{what} was altered or belongs to another document or recipient list",
        ) from None


def seal(
    doc: Document,
    recipients: Sequence[RecipientKey],
    suite: SealSuite = SealSuite.X25519_SHA256_AES256GCM,
) -> Document:
    """The document with its subject and attachment contents sealed to every party."""
    if doc.confidentiality in (Confidentiality.NONE, Confidentiality.UNKNOWN):
        raise DocbusError(Reason.POLICY, "only a confidential document is sealed")
    by_agency = {r.agency: r for r in recipients}
    missing = [p for p in parties(doc) if p not in by_agency]
    if missing:
        raise DocbusError(Reason.POLICY, f"no encryption key for {', '.join(missing)}")
    context = _context(doc)
    cek = AESGCM.generate_key(bit_length=256)
    aes = AESGCM(cek)
    manifest, sealed_parts = [], []
    for i, a in enumerate(doc.attachments):
        if a.content is None:
            raise DocbusError(Reason.POLICY, f"attachment {a.name!r} has no content to seal")
        ct = _encrypt(aes, a.content, context + b"attachment:%d" % i)
        manifest.append(
            {"sha256": a.sha256, "size": a.size, "name": a.name, "media_type": a.media_type}
        )
        sealed_parts.append(
            Attachment(
                name=f"sealed-{i}",
                media_type="application/octet-stream",
                size=len(ct),
                sha256=hashlib.sha256(ct).hexdigest(),
                content=ct,
            )
        )
    text = {name: getattr(doc, name) for name in _SEALED_TEXT}
    body = json.dumps(
        {**text, "extra": doc.extra, "attachments": manifest}, ensure_ascii=False
    ).encode()
    sealed_manifest = _encrypt(aes, body, context + b"manifest")
    kem, hpke_suite = SUITES[suite]
    keys = []
    for agency in parties(doc):
        r = by_agency[agency]
        info = _key_info(context, agency, sealed_manifest)
        blob = hpke_suite.encrypt(cek, r.public(suite), info=info)
        n = kem.enc_length()
        keys.append(SealedKey(agency, r.key_id, blob[:n], blob[n:]))
    return dataclasses.replace(
        doc,
        subject="",
        code_number=None,
        document_type=None,
        promulgation_place=None,
        signer_name=None,
        signer_title=None,
        extra={},
        attachments=tuple(sealed_parts),
        sealed=Sealing(suite, sealed_manifest, tuple(keys)),
    )


def open_sealed(
    doc: Document, key: EncryptionKey, agency: str | None = None
) -> tuple[str, Document]:
    """Open a sealed document with a recipient's key: (the agency it opened for, plaintext).

    With ``agency`` only that recipient's entry is tried; without, every entry is, and the
    one the key opens names the recipient. Raises DocbusError with a message saying why
    it cannot be opened: not sealed, not a recipient's key, a part altered or moved.
    """
    sealed = doc.sealed
    if sealed is None:
        raise DocbusError(Reason.POLICY, "the document is not sealed")
    if sealed.suite not in SUITES:
        raise DocbusError(Reason.POLICY, f"unknown sealing suite {sealed.suite.value}")
    entries = [k for k in sealed.keys if agency is None or k.agency == agency]
    if not entries:
        raise DocbusError(Reason.POLICY, f"{agency} is not a recipient: no sealed key for it")
    context = _context(doc)
    _, hpke_suite = SUITES[sealed.suite]
    private = key.private(sealed.suite)
    cek = None
    for entry in entries:
        try:
            cek = hpke_suite.decrypt(
                entry.enc + entry.sealed_key,
                private,
                info=_key_info(context, entry.agency, sealed.subject),
            )
        except Exception:  # wrong key or altered entry: try the next one
            continue
        opened_for = entry.agency
        break
    if cek is None:
        raise DocbusError(
            Reason.POLICY,
            "this key opens none of the sealed keys: it is not a recipient's key, "
            "or the document's sender, id, revision, recipients or manifest were altered",
        )
    aes = AESGCM(cek)
    manifest = json.loads(
        _decrypt(aes, sealed.subject, context + b"manifest", "the sealed subject")
    )
    plain = []
    for i, (a, meta) in enumerate(zip(doc.attachments, manifest["attachments"], strict=True)):
        content = _decrypt(
            aes, a.content or b"", context + b"attachment:%d" % i, f"attachment {a.name!r}"
        )
        if hashlib.sha256(content).hexdigest() != meta["sha256"] or len(content) != meta["size"]:
            raise DocbusError(
                Reason.ATTACHMENT_HASH_MISMATCH, f"attachment {a.name!r} does not match"
            )
        plain.append(
            Attachment(
                name=str(meta["name"]),
                media_type=str(meta["media_type"]),
                size=len(content),
                sha256=meta["sha256"],
                content=content,
            )
        )
    return opened_for, dataclasses.replace(
        doc,
        subject=str(manifest.get("subject", "")),
        code_number=manifest.get("code_number"),
        document_type=manifest.get("document_type"),
        promulgation_place=manifest.get("promulgation_place"),
        signer_name=manifest.get("signer_name"),
        signer_title=manifest.get("signer_title"),
        extra=dict(manifest.get("extra", {})),
        attachments=tuple(plain),
    )
