"""DSSE-style signatures over events: PAE, the accepted algorithms, signing keys.

Pure logic: keys and certificates come in as objects or bytes; reading them from files is
the caller's (or :meth:`SigningKey.load`'s) one I/O step.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, padding, rsa
from cryptography.x509.oid import NameOID

from bus.tlog.checkpoint import Checkpoint
from bus.tlog.note import NoteSigner
from bus.wire.errors import DocbusError, Misconfigured, Reason
from bus.wire.model import Algorithm, Role, Signature, SignedEvent

PrivateKey = (
    ed25519.Ed25519PrivateKey
    | ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | mldsa.MLDSA65PrivateKey
)
PublicKey = (
    ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey | mldsa.MLDSA65PublicKey
)

MIN_RSA_BITS = 2048
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of a payload and its type."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def algorithm_of(key: object) -> Algorithm:
    """The signature algorithm a public or private key signs with.

    Raises DocbusError(weak_algorithm) for keys the bus does not accept (RSA under 2048
    bits, curves other than P-256, DSA, ...).
    """
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return Algorithm.ED25519
    if isinstance(key, mldsa.MLDSA65PublicKey | mldsa.MLDSA65PrivateKey):
        return Algorithm.ML_DSA_65
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if isinstance(key.curve, ec.SECP256R1):
            return Algorithm.ECDSA_P256_SHA256
        raise DocbusError(Reason.WEAK_ALGORITHM, f"curve {key.curve.name} is not accepted")
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size >= MIN_RSA_BITS:
            return Algorithm.RSA_PSS_SHA256
        raise DocbusError(Reason.WEAK_ALGORITHM, f"RSA-{key.key_size} is under {MIN_RSA_BITS} bits")
    raise DocbusError(Reason.WEAK_ALGORITHM, f"key type {type(key).__name__} is not accepted")


def sign_bytes(key: PrivateKey, data: bytes) -> bytes:
    """Sign ``data`` with the algorithm that ``key`` implies."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, _PSS, hashes.SHA256())
    return key.sign(data)


def signature_valid(key: PublicKey, sig: bytes, data: bytes) -> bool:
    """Whether ``sig`` is ``key``'s signature over ``data``."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(sig, data, _PSS, hashes.SHA256())
        else:
            key.verify(sig, data)
    except InvalidSignature:
        return False
    return True


def key_id(cert: x509.Certificate) -> str:
    """The hex SHA-256 of a certificate's DER encoding."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def agency_code(cert: x509.Certificate) -> str | None:
    """The agency code bound into a certificate (subject organizationIdentifier)."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, or the one certificate of a DER file."""
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def load_private_key(data: bytes, password: bytes | None = None) -> PrivateKey:
    """A PEM or DER (PKCS#8) private key of an accepted type; ``password`` opens an
    encrypted one (a key that is not encrypted needs none and ignores it).

    Raises DocbusError(policy) for an encrypted key without its password, or with the
    wrong one; DocbusError(weak_algorithm) for a key type the bus does not sign with.
    """
    load = (
        serialization.load_pem_private_key
        if b"-----BEGIN" in data
        else serialization.load_der_private_key
    )
    try:
        try:
            key = load(data, password=password)
        except TypeError:
            if password is None:
                raise
            key = load(data, password=None)  # not encrypted: the password is not its
    except TypeError as exc:
        raise DocbusError(
            Reason.POLICY, "the key is encrypted: give its password (DOCBUS_KEY_PASSWORD_FILE)"
        ) from exc
    except ValueError as exc:
        if password is not None:
            raise DocbusError(Reason.POLICY, "the key does not open with that password") from exc
        raise
    if not isinstance(
        key,
        ed25519.Ed25519PrivateKey
        | ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | mldsa.MLDSA65PrivateKey,
    ):
        raise DocbusError(Reason.WEAK_ALGORITHM, f"key type {type(key).__name__} is not accepted")
    return key


@dataclass(frozen=True)
class SigningKey:
    """A private key, its certificate chain (leaf first) and the role it signs in."""

    role: Role
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        if not self.chain:
            raise Misconfigured("a signing key needs its certificate")
        leaf_key = self.chain[0].public_key()
        mine = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        theirs = leaf_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if mine != theirs:
            raise Misconfigured("the private key does not match the certificate")

    @classmethod
    def load(
        cls, role: Role, key_path: Path, cert_path: Path, password: bytes | None = None
    ) -> SigningKey:
        """Read a PKCS#8 key and a certificate file (a PEM file may carry the chain too)."""
        key = load_private_key(key_path.read_bytes(), password)
        chain = tuple(load_certificates(cert_path.read_bytes()))
        return cls(role=role, key=key, chain=chain)

    @property
    def agency(self) -> str | None:
        return agency_code(self.chain[0])

    @functools.cached_property
    def chain_der(self) -> tuple[bytes, ...]:
        """The certificate chain as DER, leaf first (what signatures and logs carry)."""
        return tuple(c.public_bytes(serialization.Encoding.DER) for c in self.chain)

    @functools.cached_property
    def _template(self) -> Signature:
        """Everything of a signature but the signature (the same for every event)."""
        return Signature(
            role=self.role,
            alg=algorithm_of(self.key),
            key_id=key_id(self.chain[0]),
            cert_chain=self.chain_der,
            sig=b"",
        )

    def sign(self, payload_type: str, payload: bytes) -> Signature:
        """This key's signature over PAE(payload_type, payload)."""
        return dataclasses.replace(
            self._template, sig=sign_bytes(self.key, pae(payload_type, payload))
        )


def sign_event(payload_type: str, payload: bytes, keys: Sequence[SigningKey]) -> SignedEvent:
    """An event carrying ``payload`` as-is, signed by every key in ``keys``."""
    return SignedEvent(
        payload_type=payload_type,
        payload=payload,
        signatures=tuple(k.sign(payload_type, payload) for k in keys),
    )


def note_signer(key: SigningKey) -> NoteSigner:
    """The C2SP note signer of a SERVICE key: its agency code names it; Ed25519 only."""
    if not isinstance(key.key, ed25519.Ed25519PrivateKey) or key.agency is None:
        raise DocbusError(
            Reason.WEAK_ALGORITHM, "a log's checkpoints are signed with an Ed25519 service key"
        )
    return NoteSigner(key.agency, key.key)


def sign_checkpoint(checkpoint: Checkpoint, key: SigningKey) -> bytes:
    """A checkpoint as a C2SP signed note, signed by ``key`` (its origin)."""
    return checkpoint.sign(note_signer(key))
