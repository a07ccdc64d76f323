"""The one verifier (DESIGN §4): decode, chain, validity, revocation, signature, policy.

Checks run in the order DESIGN §4 fixes, and the first failure decides the reason code.
Chain building is cached per certificate chain, so a busy gateway pays for X.509 path
validation once per signer rather than once per event.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, VerificationError

from bus.codec import Codec, default_codec
from bus.errors import DocbusError, Reason
from bus.model import Algorithm, Document, Role, SignedEvent, Status
from bus.registry import Registry
from bus.signing import PublicKey, agency_code, algorithm_of, key_id, pae, signature_valid
from bus.truststore import TrustStore

_CHAIN_CACHE_SIZE = 4096
_ONE_SECOND = timedelta(seconds=1)
_MAX_DEPTH = 8


@dataclass(frozen=True)
class Policy:
    """What a verifier demands beyond valid signatures.

    ``issued_at_tolerance`` bounds how far the sender's ``issued_at`` may lie from the
    verification time (None: not checked, as for an offline check of an old file).
    """

    document_roles: frozenset[Role] = frozenset({Role.SIGNER, Role.AGENCY})
    status_roles: frozenset[Role] = frozenset()
    require_post_quantum: bool = False
    issued_at_tolerance: timedelta | None = timedelta(hours=24)
    check_recipients: bool = True


@dataclass(frozen=True)
class SignerInfo:
    """One verified signature: who signed, in which role, with what."""

    role: Role
    alg: Algorithm
    key_id: str
    subject: str
    agency: str | None


@dataclass(frozen=True)
class Verified:
    """An event whose every check passed."""

    event: SignedEvent
    payload: Document | Status
    signers: tuple[SignerInfo, ...]
    at: datetime


@dataclass(frozen=True)
class Rejected:
    """An event that failed a check: the first failing check's reason code and message.

    ``payload`` is what the event claims to carry, decoded when possible so that the
    sender can be told; it is not verified.
    """

    reason: Reason
    message: str
    event: SignedEvent | None = None
    payload: Document | Status | None = field(default=None)


@dataclass(frozen=True)
class _Chain:
    """A certificate chain that builds to an anchor, with what verification needs of it."""

    key: PublicKey
    alg: Algorithm
    subject: str
    agency: str | None
    key_id: str
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None


class Verifier:
    """Verifies signed events against a trust store, a policy and the registry.

    :param trust: anchors, intermediates and CRLs.
    :param policy: required roles, post-quantum demand, time tolerance.
    :param registry: resolves recipients; without it recipients are not checked.
    :param codec: decodes records (the shipped schemas by default).
    """

    def __init__(
        self,
        trust: TrustStore,
        policy: Policy | None = None,
        registry: Registry | None = None,
        codec: Codec | None = None,
    ) -> None:
        self.trust = trust
        self.policy = policy or Policy()
        self.registry = registry
        self.codec = codec or default_codec()
        self._chains: OrderedDict[bytes, _Chain | DocbusError] = OrderedDict()
        ee = ExtensionPolicy.permit_all()  # agency certificates often lack SAN/EKU
        ca = ExtensionPolicy.webpki_defaults_ca()
        self._builder = (
            PolicyBuilder().store(trust.store()).extension_policies(ca_policy=ca, ee_policy=ee)
        )

    def verify(self, record: bytes, at: datetime) -> Verified | Rejected:
        """Verify one record value as received at ``at`` (the bus's receipt time)."""
        try:
            event = self.codec.decode_event(record)
        except DocbusError as exc:
            return Rejected(exc.reason, exc.message)
        return self.verify_event(event, at)

    def verify_event(self, event: SignedEvent, at: datetime) -> Verified | Rejected:
        """Verify an already decoded event as received at ``at``."""
        payload: Document | Status | None = None
        try:
            signers = self._check_signatures(event, at)
            payload = self.codec.decode_payload(event)
            self._check_payload(payload, signers, at)
        except DocbusError as exc:
            return Rejected(exc.reason, exc.message, event, payload or self._identify(event))
        return Verified(event=event, payload=payload, signers=signers, at=at)

    def _identify(self, event: SignedEvent) -> Document | Status | None:
        """The unverified payload, only to tell a rejected sender why (never to act on)."""
        try:
            return self.codec.decode_payload(event)
        except DocbusError:
            return None

    def _check_signatures(self, event: SignedEvent, at: datetime) -> tuple[SignerInfo, ...]:
        if not event.signatures:
            raise DocbusError(Reason.MISSING_SIGNATURE_ROLE, "the event carries no signature")
        signed = pae(event.payload_type, event.payload)
        signers = []
        for n, sig in enumerate(event.signatures):
            if sig.alg is Algorithm.UNKNOWN:
                raise DocbusError(Reason.WEAK_ALGORITHM, f"signature {n}: unknown algorithm")
            chain = self._chain(sig.cert_chain)
            if sig.alg is not chain.alg:
                raise DocbusError(
                    Reason.BAD_SIGNATURE,
                    f"signature {n}: says {sig.alg.value}, its key is {chain.alg.value}",
                )
            if not chain.not_before <= at <= chain.not_after:
                raise DocbusError(
                    Reason.CERTIFICATE_EXPIRED,
                    f"signature {n}: {chain.subject} is valid from {chain.not_before:%Y-%m-%d} "
                    f"to {chain.not_after:%Y-%m-%d}, not at {at:%Y-%m-%d %H:%M:%S}",
                )
            if chain.revoked_at is not None and chain.revoked_at <= at:
                raise DocbusError(
                    Reason.CERTIFICATE_REVOKED,
                    f"signature {n}: {chain.subject} revoked on {chain.revoked_at:%Y-%m-%d}",
                )
            if not signature_valid(chain.key, sig.sig, signed):
                raise DocbusError(
                    Reason.BAD_SIGNATURE, f"signature {n} ({sig.role.value}) does not verify"
                )
            signers.append(SignerInfo(sig.role, sig.alg, chain.key_id, chain.subject, chain.agency))
        return tuple(signers)

    def _check_payload(
        self, payload: Document | Status, signers: tuple[SignerInfo, ...], at: datetime
    ) -> None:
        if isinstance(payload, Document):
            speaker, bound, required = (
                payload.sender,
                {Role.SIGNER, Role.AGENCY},
                (self.policy.document_roles),
            )
        else:
            speaker, bound, required = payload.by, set(Role), self.policy.status_roles
        for s in signers:
            if s.role in bound and s.agency != speaker:
                raise DocbusError(
                    Reason.SENDER_MISMATCH,
                    f"{s.role.value} certificate is for {s.agency or 'no agency'}, "
                    f"the event speaks for {speaker}",
                )
        missing = required - {s.role for s in signers}
        if missing:
            names = ", ".join(sorted(r.value for r in missing))
            raise DocbusError(Reason.MISSING_SIGNATURE_ROLE, f"no {names} signature")
        if self.policy.require_post_quantum and not any(
            s.alg is Algorithm.ML_DSA_65 for s in signers
        ):
            raise DocbusError(Reason.POLICY, "the policy demands an ML-DSA-65 co-signature")
        if isinstance(payload, Document):
            self._check_document(payload, at)

    def _check_document(self, doc: Document, at: datetime) -> None:
        tolerance = self.policy.issued_at_tolerance
        if tolerance is not None and abs(doc.issued_at - at) > tolerance:
            raise DocbusError(
                Reason.POLICY,
                f"issued_at {doc.issued_at.isoformat()} is more than {tolerance} "
                f"from the receipt time {at.isoformat()}",
            )
        if not doc.document_id or not doc.sender or not doc.recipients:
            raise DocbusError(Reason.MALFORMED, "document_id, sender and recipients are required")
        if doc.due_date and doc.promulgated_at and doc.due_date < doc.promulgated_at:
            raise DocbusError(Reason.MALFORMED, "due_date lies before promulgated_at")
        if self.registry is not None and self.policy.check_recipients:
            on = doc.issued_at.date()
            for code in (*doc.recipients, *doc.cc):
                self.registry.resolve(code, on)
        for a in doc.attachments:
            if a.content is None:
                if a.location is None:
                    raise DocbusError(Reason.MALFORMED, f"attachment {a.name!r} has no content")
                continue
            if len(a.content) != a.size or hashlib.sha256(a.content).hexdigest() != a.sha256:
                raise DocbusError(
                    Reason.ATTACHMENT_HASH_MISMATCH,
                    f"attachment {a.name!r} does not match its hash",
                )

    def _chain(self, ders: tuple[bytes, ...]) -> _Chain:
        cache_key = hashlib.sha256(b"".join(hashlib.sha256(d).digest() for d in ders)).digest()
        found = self._chains.get(cache_key)
        if found is None:
            found = self._build(ders)
            self._chains[cache_key] = found
            if len(self._chains) > _CHAIN_CACHE_SIZE:
                self._chains.popitem(last=False)
        else:
            self._chains.move_to_end(cache_key)
        if isinstance(found, DocbusError):
            raise found
        return found

    def _build(self, ders: tuple[bytes, ...]) -> _Chain | DocbusError:
        """Build and check a chain once, independent of the verification time."""
        if not ders:
            return DocbusError(Reason.UNTRUSTED_CERTIFICATE, "the signature carries no certificate")
        try:
            certs = [x509.load_der_x509_certificate(d) for d in ders]
        except ValueError as exc:
            return DocbusError(Reason.UNTRUSTED_CERTIFICATE, f"unreadable certificate: {exc}")
        leaf = certs[0]
        subject = leaf.subject.rfc4514_string()
        try:
            key = leaf.public_key()
            alg = algorithm_of(key)
        except DocbusError as exc:
            return exc
        except ValueError as exc:
            return DocbusError(Reason.WEAK_ALGORITHM, f"{subject}: {exc}")
        try:
            usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
            if not usage.digital_signature:
                return DocbusError(
                    Reason.UNTRUSTED_CERTIFICATE, f"{subject}: key usage lacks digitalSignature"
                )
        except x509.ExtensionNotFound:
            pass  # no KeyUsage extension: any usage (RFC 5280 §4.2.1.3)
        built = self._path(leaf, certs[1:])
        if built is None:
            return DocbusError(
                Reason.UNTRUSTED_CERTIFICATE, f"{subject} does not chain to a trust anchor"
            )
        revoked = [
            r
            for cert, issuer in itertools.pairwise(built)
            if (r := self.trust.revoked_at(cert, issuer)) is not None
        ]
        return _Chain(
            key=key,  # type: ignore[arg-type]
            alg=alg,
            subject=subject,
            agency=agency_code(leaf),
            key_id=key_id(leaf),
            not_before=max(c.not_valid_before_utc for c in built),
            not_after=min(c.not_valid_after_utc for c in built),
            revoked_at=min(revoked) if revoked else None,
        )

    def _path(
        self, leaf: x509.Certificate, given: list[x509.Certificate]
    ) -> list[x509.Certificate] | None:
        """The chain from ``leaf`` to an anchor, or None.

        The verification time is left out on purpose: the chain is built at moments when
        it can be valid, and each event is then checked against the chain's validity window.
        """
        intermediates = [*given, *self.trust.intermediates]
        if leaf.version is x509.Version.v1:
            return self._v1_path(leaf, intermediates)
        for moment in _moments(leaf, intermediates):
            verifier = self._builder.time(moment).build_client_verifier()
            try:
                return list(verifier.verify(leaf, intermediates).chain)
            except VerificationError:
                continue
        return None

    def _v1_path(
        self, cert: x509.Certificate, pool: list[x509.Certificate], depth: int = 0
    ) -> list[x509.Certificate] | None:
        """cryptography's builder refuses X.509 v1 leaves, which openssl 3.0's ``x509 -req``
        still makes: walk issuer by issuer (name, CA flag, signature) to an anchor here."""
        if depth > _MAX_DEPTH:
            return None
        for issuer in (*self.trust.anchors, *pool):
            anchor = issuer in self.trust.anchors
            if issuer.subject != cert.issuer or issuer == cert or not (anchor or _is_ca(issuer)):
                continue
            try:
                cert.verify_directly_issued_by(issuer)
            except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
                continue
            rest = [issuer] if anchor else self._v1_path(issuer, pool, depth + 1)
            if rest is not None:
                return [cert, *rest]
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True


def _moments(leaf: x509.Certificate, others: list[x509.Certificate]) -> list[datetime]:
    """Times inside the leaf's validity at which a chain through ``others`` may be valid."""
    lo, hi = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    edges = {lo + _ONE_SECOND, hi - _ONE_SECOND}
    for c in others:
        edges.update((c.not_valid_before_utc + _ONE_SECOND, c.not_valid_after_utc - _ONE_SECOND))
    return sorted(t for t in edges if lo <= t <= hi)
