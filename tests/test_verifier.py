"""The verifier: every rejection reason of DESIGN §7 that signatures and trust can give."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.kafka.records import document_record
from bus.registry import Registry
from bus.trust.pki import (
    CertRole,
    DevPki,
    KeyAlgorithm,
    generate_key,
    make_intermediate,
    make_leaf,
    make_root,
)
from bus.trust.signing import SigningKey, key_id, pae, sign_bytes
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Policy, Rejected, Verified, Verifier
from bus.wire.codec import default_codec
from bus.wire.errors import Reason
from bus.wire.model import (
    DOCUMENT_TYPE,
    Algorithm,
    Attachment,
    Document,
    Role,
    Signature,
    SignedEvent,
    now_ms,
)
from tests.conftest import MINISTRY, PROVINCE, Pki


def _doc(**changes: object) -> Document:
    content = "Quyết định số 57-NQ/TW về đột phá phát triển khoa học".encode()
    base = Document(
        document_id="6f1c2a9e-0000-4000-8000-000000000001",
        sender=MINISTRY,
        recipients=(PROVINCE,),
        subject="V/v kết nối, liên thông phần mềm quản lý văn bản",
        issued_at=now_ms(),
        attachments=(
            Attachment(
                "qd.txt", "text/plain", len(content), hashlib.sha256(content).hexdigest(), content
            ),
        ),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _reason(verdict: Verified | Rejected) -> Reason | None:
    return verdict.reason if isinstance(verdict, Rejected) else None


@pytest.fixture
def verifier(pki: Pki, registry: Registry) -> Verifier:
    return Verifier(pki.trust, registry=registry)


def test_a_document_signed_by_signer_and_seal_verifies(
    verifier: Verifier, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    verdict = verifier.verify(document_record(_doc(), ministry_keys), now_ms())
    assert isinstance(verdict, Verified), verdict
    assert [s.role for s in verdict.signers] == [Role.SIGNER, Role.AGENCY]
    assert [s.alg for s in verdict.signers] == [Algorithm.ED25519, Algorithm.ECDSA_P256_SHA256]
    assert all(s.agency == MINISTRY for s in verdict.signers)
    assert isinstance(verdict.payload, Document) and verdict.payload.subject == _doc().subject


@pytest.mark.parametrize("alg", list(KeyAlgorithm))
def test_every_accepted_algorithm_signs_and_verifies(
    pki: Pki, verifier: Verifier, ministry_keys: tuple[SigningKey, SigningKey], alg: KeyAlgorithm
) -> None:
    signer = pki.key(MINISTRY, Role.SIGNER, alg)
    verdict = verifier.verify(document_record(_doc(), [signer, ministry_keys[1]]), now_ms())
    assert isinstance(verdict, Verified), verdict


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_a_tampered_payload_byte_is_a_bad_signature(
    verifier: Verifier, ministry_keys: tuple[SigningKey, SigningKey], data: st.DataObject
) -> None:
    codec = default_codec()
    event = codec.decode_event(document_record(_doc(), ministry_keys))
    i = data.draw(st.integers(0, len(event.payload) - 1))
    bit = data.draw(st.integers(0, 7))
    payload = bytearray(event.payload)
    payload[i] ^= 1 << bit
    tampered = codec.encode_event(dataclasses.replace(event, payload=bytes(payload)))
    assert _reason(verifier.verify(tampered, now_ms())) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("which", [0, 1])
def test_a_tampered_signature_byte_is_a_bad_signature(
    verifier: Verifier, ministry_keys: tuple[SigningKey, SigningKey], which: int
) -> None:
    codec = default_codec()
    event = codec.decode_event(document_record(_doc(), ministry_keys))
    sigs = list(event.signatures)
    raw = bytearray(sigs[which].sig)
    raw[len(raw) // 2] ^= 0x01
    sigs[which] = dataclasses.replace(sigs[which], sig=bytes(raw))
    tampered = codec.encode_event(dataclasses.replace(event, signatures=tuple(sigs)))
    assert _reason(verifier.verify(tampered, now_ms())) is Reason.BAD_SIGNATURE


def test_a_tampered_payload_type_is_a_bad_signature(
    verifier: Verifier, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    codec = default_codec()
    event = codec.decode_event(document_record(_doc(), ministry_keys))
    # PAE covers the type: the same payload presented under another type does not verify.
    moved = dataclasses.replace(event, payload_type=DOCUMENT_TYPE + ";v=2")
    assert _reason(verifier.verify_event(moved, now_ms())) is Reason.BAD_SIGNATURE


def test_a_certificate_from_another_ca_is_untrusted(
    tmp_path: Path, verifier: Verifier, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    other = DevPki(tmp_path / "other")
    other.init()
    key, cert = other.issue(MINISTRY, CertRole.SIGNER, KeyAlgorithm.ED25519)
    stranger = SigningKey.load(Role.SIGNER, key, cert)
    record = document_record(_doc(), [stranger, ministry_keys[1]])
    assert _reason(verifier.verify(record, now_ms())) is Reason.UNTRUSTED_CERTIFICATE


def test_an_expired_certificate_is_rejected_even_with_a_back_dated_issued_at(
    tmp_path: Path,
) -> None:
    start = datetime.now(UTC) - timedelta(days=60)
    root = make_root(not_before=start - timedelta(days=1))
    inter = make_intermediate(root)
    (tmp_path / "root.pem").write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
    keys = []
    for role, cert_role in ((Role.SIGNER, CertRole.SIGNER), (Role.AGENCY, CertRole.AGENCY)):
        private = generate_key(KeyAlgorithm.ED25519)
        cert = make_leaf(inter, MINISTRY, cert_role, private, start, start + timedelta(days=30))
        keys.append(SigningKey(role, private, (cert, inter.cert)))
    back_dated = _doc(issued_at=(start + timedelta(days=10)).replace(microsecond=0))
    record = document_record(back_dated, keys)
    verifier = Verifier(TrustStore.load(tmp_path))
    verdict = verifier.verify(record, now_ms())
    assert _reason(verdict) is Reason.CERTIFICATE_EXPIRED, verdict
    # Verified as received while the certificate was valid, the same bytes pass.
    assert isinstance(verifier.verify(record, start + timedelta(days=10, minutes=1)), Verified)


def test_a_revoked_certificate_is_rejected_from_its_revocation_on(
    pki: Pki, registry: Registry, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    key_path, cert_path = pki.dev.issue(
        MINISTRY, CertRole.SIGNER, KeyAlgorithm.ED25519, replace=True
    )
    signer = SigningKey.load(Role.SIGNER, key_path, cert_path)
    before = now_ms()
    record = document_record(_doc(issued_at=before), [signer, ministry_keys[1]])
    assert isinstance(Verifier(pki.trust, registry=registry).verify(record, before), Verified)
    pki.dev.revoke(cert_path)
    fresh = Verifier(TrustStore.load(pki.dev.trust_dir), registry=registry)
    assert (
        _reason(fresh.verify(record, now_ms() + timedelta(seconds=1))) is Reason.CERTIFICATE_REVOKED
    )
    # Received before the revocation, it stays valid (an archived document remains verifiable).
    assert isinstance(fresh.verify(record, before - timedelta(seconds=1)), Verified)


def test_a_sender_other_than_the_certificates_agency_is_a_mismatch(
    verifier: Verifier, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    record = document_record(_doc(sender=PROVINCE, recipients=(MINISTRY,)), ministry_keys)
    assert _reason(verifier.verify(record, now_ms())) is Reason.SENDER_MISMATCH


def test_a_missing_seal_is_a_missing_role(
    verifier: Verifier, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    record = document_record(_doc(), [ministry_keys[0]])
    verdict = verifier.verify(record, now_ms())
    assert _reason(verdict) is Reason.MISSING_SIGNATURE_ROLE
    assert "AGENCY" in verdict.message  # type: ignore[union-attr]


def test_an_event_without_signatures_is_a_missing_role(verifier: Verifier) -> None:
    codec = default_codec()
    event = SignedEvent(DOCUMENT_TYPE, codec.encode_document(_doc()), ())
    assert (
        _reason(verifier.verify(codec.encode_event(event), now_ms()))
        is Reason.MISSING_SIGNATURE_ROLE
    )


def test_rsa_1024_is_a_weak_algorithm(
    pki: Pki, verifier: Verifier, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    cert = make_leaf(pki.dev.issuer(), MINISTRY, CertRole.SIGNER, weak)
    codec = default_codec()
    payload = codec.encode_document(_doc())
    sig = Signature(
        role=Role.SIGNER,
        alg=Algorithm.RSA_PSS_SHA256,
        key_id=key_id(cert),
        cert_chain=(cert.public_bytes(serialization.Encoding.DER),),
        sig=sign_bytes(weak, pae(DOCUMENT_TYPE, payload)),
    )
    event = SignedEvent(
        DOCUMENT_TYPE, payload, (sig, ministry_keys[1].sign(DOCUMENT_TYPE, payload))
    )
    assert _reason(verifier.verify(codec.encode_event(event), now_ms())) is Reason.WEAK_ALGORITHM


def test_a_signature_claiming_another_algorithm_than_its_key_is_bad(
    verifier: Verifier, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    codec = default_codec()
    event = codec.decode_event(document_record(_doc(), ministry_keys))
    sigs = (dataclasses.replace(event.signatures[0], alg=Algorithm.ML_DSA_65), event.signatures[1])
    assert _reason(
        verifier.verify_event(dataclasses.replace(event, signatures=sigs), now_ms())
    ) is (Reason.BAD_SIGNATURE)


def test_an_unknown_recipient_is_rejected(
    verifier: Verifier, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    record = document_record(_doc(recipients=(PROVINCE, "000.00.00.H99")), ministry_keys)
    verdict = verifier.verify(record, now_ms())
    assert _reason(verdict) is Reason.UNKNOWN_RECIPIENT
    assert "000.00.00.H99" in verdict.message  # type: ignore[union-attr]


def test_an_attachment_whose_content_does_not_match_its_hash(
    verifier: Verifier, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    good = _doc().attachments[0]
    bad = dataclasses.replace(good, content=b"X" + good.content[1:])  # type: ignore[index]
    record = document_record(_doc(attachments=(bad,)), ministry_keys)
    assert _reason(verifier.verify(record, now_ms())) is Reason.ATTACHMENT_HASH_MISMATCH


def test_issued_at_far_from_the_receipt_time_breaks_policy(
    verifier: Verifier, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    record = document_record(_doc(issued_at=now_ms() - timedelta(days=3)), ministry_keys)
    assert _reason(verifier.verify(record, now_ms())) is Reason.POLICY


def test_a_post_quantum_policy_demands_an_ml_dsa_cosignature(
    pki: Pki, registry: Registry, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    strict = Verifier(pki.trust, Policy(require_post_quantum=True), registry)
    classical = document_record(_doc(), ministry_keys)
    assert _reason(strict.verify(classical, now_ms())) is Reason.POLICY
    pq = pki.key(MINISTRY, Role.AGENCY, KeyAlgorithm.ML_DSA_65)
    hybrid = document_record(_doc(), [*ministry_keys, pq])
    verdict = strict.verify(hybrid, now_ms())
    assert isinstance(verdict, Verified), verdict
    assert Algorithm.ML_DSA_65 in {s.alg for s in verdict.signers}


def test_garbage_is_malformed_not_a_crash(verifier: Verifier) -> None:
    assert _reason(verifier.verify(b"\x00\x01garbage", now_ms())) is Reason.MALFORMED


def test_an_intermediate_left_out_of_the_event_is_found_in_the_trust_store(
    pki: Pki, verifier: Verifier, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    signer, seal = ministry_keys
    leaf_only = SigningKey(Role.SIGNER, signer.key, signer.chain[:1])
    assert isinstance(
        verifier.verify(document_record(_doc(), [leaf_only, seal]), now_ms()), Verified
    )


def test_a_key_usage_without_digital_signature_is_untrusted(
    tmp_path: Path, ministry_keys: tuple[SigningKey, SigningKey]
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ed25519

    root = make_root()
    inter = make_intermediate(root)
    (tmp_path / "root.pem").write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
    key = ed25519.Ed25519PrivateKey.generate()
    usage = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(x509.oid.NameOID.ORGANIZATION_IDENTIFIER, MINISTRY)])
        )
        .issuer_name(inter.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - timedelta(days=1))
        .not_valid_after(datetime.now(UTC) + timedelta(days=1))
        .add_extension(usage, critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(inter.key.public_key()),
            critical=False,
        )
        .sign(inter.key, hashes.SHA256())
    )
    signer = SigningKey(Role.SIGNER, key, (cert, inter.cert))
    seal_key = ed25519.Ed25519PrivateKey.generate()
    seal = SigningKey(
        Role.AGENCY, seal_key, (make_leaf(inter, MINISTRY, CertRole.AGENCY, seal_key), inter.cert)
    )
    v = Verifier(TrustStore.load(tmp_path))
    assert isinstance(
        v.verify(document_record(_doc(), [seal, seal]), now_ms()), Rejected
    )  # no SIGNER
    verdict = v.verify(document_record(_doc(), [signer, seal]), now_ms())
    assert _reason(verdict) is Reason.UNTRUSTED_CERTIFICATE
    assert "digitalSignature" in verdict.message  # type: ignore[union-attr]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def test_keys_and_certificates_made_by_openssl_sign_and_verify(
    tmp_path: Path, registry: Registry
) -> None:
    """An agency whose PKI is openssl: an ECDSA root and issuing CA, Ed25519 keys, and
    leaves made by plain `x509 -req` (no SAN, no EKU; X.509 v1 with openssl 3.0)."""
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=tmp_path)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-days",
        "30",
        "-subj",
        "/CN=Agency Root CA",
        "-out",
        "ca.pem",
        cwd=tmp_path,
    )
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "i.key", cwd=tmp_path)
    _openssl(
        "req",
        "-new",
        "-key",
        "i.key",
        "-subj",
        "/CN=Agency Issuing CA",
        "-out",
        "i.csr",
        cwd=tmp_path,
    )
    (tmp_path / "ca.ext").write_text(
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "i.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "20",
        "-extfile",
        "ca.ext",
        "-out",
        "i.pem",
        cwd=tmp_path,
    )
    for role, ca in (("signer", "i"), ("seal", "ca")):
        _openssl("genpkey", "-algorithm", "ed25519", "-out", f"{role}.key", cwd=tmp_path)
        _openssl(
            "req",
            "-new",
            "-key",
            f"{role}.key",
            "-out",
            f"{role}.csr",
            "-subj",
            f"/CN=Van phong Chinh phu {role}/OU={role}/organizationIdentifier={MINISTRY}",
            cwd=tmp_path,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{role}.csr",
            "-CA",
            f"{ca}.pem",
            "-CAkey",
            f"{ca}.key",
            "-CAcreateserial",
            "-days",
            "10",
            "-out",
            f"{role}.pem",
            cwd=tmp_path,
        )
    # The signer's file carries its chain (leaf first), as agencies ship them.
    (tmp_path / "signer-chain.pem").write_bytes(
        (tmp_path / "signer.pem").read_bytes() + (tmp_path / "i.pem").read_bytes()
    )
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "ca.pem").write_bytes((tmp_path / "ca.pem").read_bytes())
    # This PKI issues no docbus role EKU: policy.toml maps its certificates to roles.
    (trust / "policy.toml").write_text(
        '[[role]]\nrole = "SIGNER"\nsubject_ou = "signer"\n'
        '[[role]]\nrole = "AGENCY"\nsubject_ou = "seal"\n',
        "utf-8",
    )
    signer = SigningKey.load(Role.SIGNER, tmp_path / "signer.key", tmp_path / "signer-chain.pem")
    seal = SigningKey.load(Role.AGENCY, tmp_path / "seal.key", tmp_path / "seal.pem")
    verifier = Verifier(TrustStore.load(trust), registry=registry)
    verdict = verifier.verify(document_record(_doc(), [signer, seal]), now_ms())
    assert isinstance(verdict, Verified), verdict
    assert [s.agency for s in verdict.signers] == [MINISTRY, MINISTRY]
    # The same path still refuses a leaf whose issuer is not in the trust store.
    orphan = SigningKey(Role.SIGNER, signer.key, signer.chain[:1])
    assert _reason(verifier.verify(document_record(_doc(), [orphan, seal]), now_ms())) is (
        Reason.UNTRUSTED_CERTIFICATE
    )


def test_a_crl_past_its_next_update_fails_closed_unless_the_policy_allows(
    tmp_path: Path, registry: Registry
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    dev = DevPki(tmp_path / "pki")
    dev.init()
    keys = [
        SigningKey.load(r, *dev.issue(MINISTRY, CertRole(r.value.lower()), KeyAlgorithm.ED25519))
        for r in (Role.SIGNER, Role.AGENCY)
    ]
    record = document_record(_doc(), keys)
    assert isinstance(
        Verifier(TrustStore.load(dev.trust_dir), registry=registry).verify(record, now_ms()),
        Verified,
    )
    issuer = dev.issuer()
    long_ago = now_ms() - timedelta(days=40)
    stale = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(long_ago)
        .next_update(long_ago + timedelta(days=7))
        .sign(issuer.key, hashes.SHA256())
    )
    dev.crl_path.write_bytes(stale.public_bytes(serialization.Encoding.PEM))
    verdict = Verifier(TrustStore.load(dev.trust_dir), registry=registry).verify(record, now_ms())
    assert _reason(verdict) is Reason.REVOCATION_UNKNOWN
    policy = dev.trust_dir / "policy.toml"
    policy.write_text(policy.read_text() + "\n[revocation]\nallow_stale_crl = true\n")
    lenient = Verifier(TrustStore.load(dev.trust_dir), registry=registry)
    assert isinstance(lenient.verify(record, now_ms()), Verified)


def test_a_running_verifier_reads_a_new_crl_without_a_restart(
    tmp_path: Path, registry: Registry
) -> None:
    dev = DevPki(tmp_path / "pki")
    dev.init()
    signer_files = dev.issue(MINISTRY, CertRole.SIGNER, KeyAlgorithm.ED25519)
    keys = [
        SigningKey.load(Role.SIGNER, *signer_files),
        SigningKey.load(Role.AGENCY, *dev.issue(MINISTRY, CertRole.AGENCY, KeyAlgorithm.ED25519)),
    ]
    running = Verifier(TrustStore.load(dev.trust_dir), registry=registry, reload_every=timedelta(0))
    assert isinstance(running.verify(document_record(_doc(), keys), now_ms()), Verified)
    dev.revoke(signer_files[1])
    later = document_record(_doc(), keys)
    assert _reason(running.verify(later, now_ms() + timedelta(seconds=1))) is (
        Reason.CERTIFICATE_REVOKED
    )
