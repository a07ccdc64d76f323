"""The one verifier (DESIGN §4): decode, chain, validity, revocation, signature, policy.

Checks run in the order DESIGN §4 fixes, and the first failure decides the reason code.
Chain building is cached per certificate chain, so a busy gateway pays for X.509 path
validation once per signer rather than once per event.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from bus.registry import Registry, vietnam_date
from bus.tlog.checkpoint import Checkpoint, open_checkpoint
from bus.tlog.merkle import leaf_hash, verify_inclusion
from bus.tlog.note import ALG_COSIGNATURE_V1, ALG_ED25519, NoteVerifier
from bus.trust.chain import Chain, ChainBuilder
from bus.trust.policy import Service
from bus.trust.signing import algorithm_of, pae, signature_valid
from bus.trust.truststore import TrustStore
from bus.wire.codec import Codec, default_codec
from bus.wire.errors import DocbusError, Reason
from bus.wire.limits import check_bounds
from bus.wire.model import (
    STATUS_TYPE,
    Algorithm,
    Confidentiality,
    Document,
    Role,
    SealSuite,
    SignedEvent,
    Status,
    StatusCode,
    blob_location,
    event_digest,
)
from bus.wire.names import check_names

log = structlog.get_logger(__name__)
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Policy:
    """What a verifier demands beyond valid signatures.

    ``issued_at_tolerance`` bounds how far the sender's ``issued_at`` may lie from the
    verification time (None: not checked, as for an offline check of an old file).
    A document needs every role of ``document_roles`` and one of ``document_one_of``:
    the person who signed it, or the SERVICE of a bridge that imported it (edXML).
    """

    document_roles: frozenset[Role] = frozenset({Role.AGENCY})
    document_one_of: frozenset[Role] = frozenset({Role.SIGNER, Role.SERVICE})
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
        reload_every: timedelta = timedelta(seconds=10),
    ) -> None:
        self.policy = policy or Policy()
        self.registry = registry
        self.codec = codec or default_codec()
        self.reload_every = reload_every
        self._use(trust)

    def _use(self, trust: TrustStore) -> None:
        self.trust = trust
        # A new chain cache: every cached chain is built and checked again against the
        # CRLs just read (DESIGN §4, revocation is live).
        self._chains = ChainBuilder(trust, _signing_key, "digital_signature")
        self._witnesses = tuple(NoteVerifier.parse(key) for key in trust.policy.witnesses.values())
        self._checked = time.monotonic()

    def use_registry(self, registry: Registry) -> None:
        """Check recipients against ``registry`` from the next record on (DESIGN §13)."""
        self.registry = registry

    def refresh(self) -> bool:
        """Read the trust folder again if it changed (at most every ``reload_every``);
        whether it did. A folder that fails to load keeps the current trust, logged."""
        if time.monotonic() - self._checked < self.reload_every.total_seconds():
            return False
        self._checked = time.monotonic()
        try:
            fresh = self.trust.reloaded()
        except DocbusError as exc:
            log.error("trust folder not reloaded", error=exc.message)
            return False
        if fresh is None:
            return False
        log.info("trust folder reloaded", crls=len(fresh.crls), anchors=len(fresh.anchors))
        self._use(fresh)
        return True

    def verify(self, record: bytes, at: datetime) -> Verified | Rejected:
        """Verify one record value as received at ``at`` (the bus's receipt time)."""
        self.refresh()
        try:
            event = self.codec.decode_event(record)
        except DocbusError as exc:
            return Rejected(exc.reason, exc.message)
        return self.verify_event(event, at)

    def verify_delivered(self, record: bytes, receipt: bytes | None) -> Verified | Rejected:
        """A record read from a delivery topic, verified at the receipt time the gateway
        signed (its DELIVERED status for these exact bytes, carried beside the record).

        A record without a valid receipt did not pass the gateway: it is rejected however
        well it is signed, so writing straight onto a delivery topic proves nothing.
        """
        if receipt is None:
            return Rejected(Reason.POLICY, "no gateway receipt: the record bypassed the gateway")
        try:
            event = self.codec.decode_event(receipt)
            if event.payload_type != STATUS_TYPE:
                raise DocbusError(Reason.MALFORMED, "it is not a status")
            status = self.codec.decode_status(event.payload)
        except DocbusError as exc:
            return Rejected(exc.reason, f"gateway receipt: {exc.message}")
        self.refresh()
        checked = self.verify_event(event, status.at, status)
        if isinstance(checked, Rejected):
            return Rejected(checked.reason, f"gateway receipt: {checked.message}")
        if status.code is not StatusCode.DELIVERED or status.event_digest != event_digest(record):
            return Rejected(Reason.POLICY, "the gateway receipt is for other bytes")
        return self.verify(record, status.at)

    def verify_event(
        self, event: SignedEvent, at: datetime, decoded: Document | Status | None = None
    ) -> Verified | Rejected:
        """Verify an already decoded event as received at ``at`` (``decoded``: its payload,
        when the caller decoded it from ``event.payload`` already)."""
        payload: Document | Status | None = None
        try:
            signers = self._check_signatures(event, at)
            payload = decoded or self.codec.decode_payload(event)
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
        keys: set[str] = set()
        for n, sig in enumerate(event.signatures):
            if sig.alg is Algorithm.UNKNOWN:
                raise DocbusError(Reason.WEAK_ALGORITHM, f"signature {n}: unknown algorithm")
            chain = self._chains.chain(sig.cert_chain)
            if sig.key_id != chain.key_id:
                raise DocbusError(
                    Reason.BAD_SIGNATURE, f"signature {n}: its key id is not its certificate's"
                )
            alg = algorithm_of(chain.key)
            if sig.alg is not alg:
                raise DocbusError(
                    Reason.BAD_SIGNATURE,
                    f"signature {n}: says {sig.alg.value}, its key is {alg.value}",
                )
            if chain.role is not sig.role:
                raise DocbusError(
                    Reason.ROLE_MISMATCH,
                    f"signature {n} says {sig.role.value}; its certificate is for "
                    f"{chain.role.value if chain.role else 'no docbus role'}",
                )
            if chain.key_id in keys:
                raise DocbusError(
                    Reason.ROLE_MISMATCH, f"signature {n}: one certificate signs an event once"
                )
            keys.add(chain.key_id)
            chain.check_at(at, f"signature {n}: ")
            self._check_revocation_known(chain, at, n)
            if not signature_valid(chain.key, sig.sig, signed):
                raise DocbusError(
                    Reason.BAD_SIGNATURE, f"signature {n} ({sig.role.value}) does not verify"
                )
            signers.append(SignerInfo(sig.role, alg, chain.key_id, chain.subject, chain.agency))
        return tuple(signers)

    def _check_revocation_known(self, chain: Chain, at: datetime, n: int) -> None:
        until = chain.revocation_known_until
        if until is not None and until < at and not self.trust.policy.allow_stale_crl:
            raise DocbusError(
                Reason.REVOCATION_UNKNOWN,
                f"signature {n}: a CRL of its chain is past its nextUpdate "
                f"({until:%Y-%m-%d %H:%M}) at {at:%Y-%m-%d %H:%M:%S}",
            )

    def chain_path(self, chain: Sequence[bytes]) -> tuple[bytes, ...]:
        """The certificates (DER) of the path ``chain`` builds to, leaf first; a
        certificate given but not on the path proves nothing. Raises DocbusError."""
        self.refresh()
        return tuple(c.public_bytes(Encoding.DER) for c in self._chains.chain(chain).path)

    def log_key(self, chain: Sequence[bytes], at: datetime | None = None) -> NoteVerifier:
        """The checkpoint-note key of a log: a pinned archiver's certificate (DER, leaf
        first), chained to an anchor, SERVICE role, Ed25519, valid and not revoked at
        ``at`` (now by default); its agency code is the origin.

        Raises DocbusError.
        """
        return self._pinned_key(chain, at, Service.ARCHIVER, ALG_ED25519)

    def witness_key(self, chain: Sequence[bytes], at: datetime | None = None) -> NoteVerifier:
        """The cosignature key of a pinned witness's certificate (DER, leaf first), valid
        and not revoked at ``at`` (now by default). Raises DocbusError."""
        return self._pinned_key(chain, at, Service.WITNESS, ALG_COSIGNATURE_V1)

    def verify_pinned(self, event: SignedEvent, at: datetime, service: Service) -> SignerInfo:
        """An event of another kind than documents and statuses (a directory), signed once,
        by a certificate pinned as ``service`` in policy.toml. Raises DocbusError."""
        self.refresh()
        signers = self._check_signatures(event, at)
        if len(signers) != 1:
            raise DocbusError(Reason.POLICY, f"signed {len(signers)} times, once expected")
        [signer] = signers
        if signer.role is not Role.SERVICE or not self.trust.policy.is_service(
            service, signer.agency
        ):
            raise DocbusError(
                Reason.POLICY,
                f"{signer.subject} is no pinned {service.value} (policy.toml [services])",
            )
        return signer

    def _pinned_key(
        self, chain: Sequence[bytes], at: datetime | None, service: Service, alg: int
    ) -> NoteVerifier:
        found = self._service_chain(chain, at)
        if found.role is not Role.SERVICE or not self.trust.policy.is_service(
            service, found.agency
        ):
            raise DocbusError(
                Reason.POLICY,
                f"{found.subject} is no pinned {service.value} (policy.toml [services])",
            )
        if not isinstance(found.key, ed25519.Ed25519PublicKey) or found.agency is None:
            raise DocbusError(Reason.WEAK_ALGORITHM, f"a {service.value} key is an Ed25519 key")
        return NoteVerifier(found.agency, alg, found.key)

    def _service_chain(self, chain: Sequence[bytes], at: datetime | None) -> Chain:
        self.refresh()
        found = self._chains.chain(chain)
        moment = at or datetime.now(UTC)
        found.check_at(moment)
        self._check_revocation_known(found, moment, 0)
        return found

    def verify_checkpoint(
        self,
        note: bytes,
        chain: Sequence[bytes],
        witnesses_required: int = 0,
        witnesses: Sequence[NoteVerifier] = (),
        at: datetime | None = None,
        strict: bool = False,
    ) -> Checkpoint:
        """A C2SP checkpoint note signed by the pinned archiver whose certificate is
        ``chain``, with at least ``witnesses_required`` cosignatures of pinned witnesses
        (keys from policy.toml or ``witnesses``, from :meth:`witness_key`). With ``strict``
        every signature line must verify: none may be there that proves nothing.

        Raises DocbusError.
        """
        known = {(w.name, w.hash): w for w in (*self._witnesses, *witnesses)}
        checkpoint, opened = open_checkpoint(note, self.log_key(chain, at), tuple(known.values()))
        if strict and opened.unverified:
            raise DocbusError(Reason.BAD_SIGNATURE, "the checkpoint carries unverifiable lines")
        if len(opened.cosigned_at) < witnesses_required:
            raise DocbusError(
                Reason.POLICY,
                f"the checkpoint of size {checkpoint.size} has {len(opened.cosigned_at)} "
                f"witness cosignatures, {witnesses_required} required",
            )
        return checkpoint

    def check_receipt(self, receipt: Verified, record: bytes) -> Checkpoint:
        """That a verified ARCHIVED receipt proves ``record`` is in the archive's log.

        The checkpoint must be signed by the archiver that signed the receipt (the log of
        the origin it names), the proof must be against that checkpoint, and the inclusion
        proof of the record's leaf must hold. Raises DocbusError otherwise.
        """
        status = receipt.payload
        if not isinstance(status, Status) or status.log is None:
            raise DocbusError(Reason.POLICY, "the receipt carries no inclusion proof")
        proof = status.log
        chains = [s.cert_chain for s in receipt.event.signatures if s.role is Role.SERVICE]
        if not chains:
            raise DocbusError(Reason.POLICY, "the receipt is not signed by a service")
        checkpoint = self.verify_checkpoint(proof.checkpoint, chains[0], at=status.at)
        if checkpoint.origin != status.by:
            raise DocbusError(Reason.POLICY, f"{status.by} cites the log of {checkpoint.origin}")
        if (checkpoint.size, checkpoint.root) != (proof.tree_size, proof.root_hash):
            raise DocbusError(Reason.POLICY, "the proof is not against the checkpoint it names")
        if not verify_inclusion(
            leaf_hash(record), proof.index, proof.tree_size, proof.inclusion_proof, proof.root_hash
        ):
            raise DocbusError(
                Reason.POLICY, f"the inclusion proof for log index {proof.index} does not hold"
            )
        return checkpoint

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
            bridged = isinstance(payload, Document) and s.role is Role.SERVICE
            if bridged and not self.trust.policy.bridge_serves(s.agency, speaker):
                raise DocbusError(
                    Reason.SENDER_MISMATCH,
                    f"SERVICE {s.agency} is no bridge for {speaker} (policy.toml [bridges])",
                )
        if isinstance(payload, Status):
            self._check_status_issuer(payload, signers)
        roles = {s.role for s in signers}
        missing = required - roles
        if missing:
            names = ", ".join(sorted(r.value for r in missing))
            raise DocbusError(Reason.MISSING_SIGNATURE_ROLE, f"no {names} signature")
        one_of = self.policy.document_one_of
        if isinstance(payload, Document) and one_of and not one_of & roles:
            names = " or ".join(sorted(r.value for r in one_of))
            raise DocbusError(Reason.MISSING_SIGNATURE_ROLE, f"no {names} signature")
        if self.policy.require_post_quantum and not any(
            s.alg is Algorithm.ML_DSA_65 for s in signers
        ):
            raise DocbusError(Reason.POLICY, "the policy demands an ML-DSA-65 co-signature")
        if isinstance(payload, Document):
            self._check_document(payload, at)

    def _check_status_issuer(self, status: Status, signers: tuple[SignerInfo, ...]) -> None:
        """Only the party entitled to a status may issue it (DESIGN §4)."""
        policy = self.trust.policy
        services = {s.agency for s in signers if s.role is Role.SERVICE}
        allowed = _ISSUERS.get(status.code)
        agency_feedback = status.code in _ALSO_FROM_AGENCIES and not services
        if allowed is None or agency_feedback:
            if not any(s.role is Role.AGENCY for s in signers):
                raise DocbusError(Reason.POLICY, f"{status.code.value} comes from an agency")
            return
        if not any(policy.is_service(service, a) for service in allowed for a in services):
            names = " or ".join(s.value for s in allowed)
            raise DocbusError(
                Reason.POLICY,
                f"{status.code.value} comes only from a pinned {names}, not {status.by}",
            )

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
        _check_sealing(doc)
        if self.registry is not None:
            on = vietnam_date(doc.issued_at)
            sender = self.registry.agencies.get(doc.sender)
            if sender is None or not sender.in_force(on):
                raise DocbusError(
                    Reason.SENDER_MISMATCH,
                    f"{doc.sender} is no agency in force on {on} (a merged agency's successor "
                    "sends in its stead)",
                )
            if self.policy.check_recipients:
                for code in (*doc.recipients, *doc.cc):
                    self.registry.resolve(code, on)
        check_bounds(doc)
        check_names(doc)
        for a in doc.attachments:
            if not _SHA256.fullmatch(a.sha256) or a.size < 0:
                raise DocbusError(
                    Reason.MALFORMED, f"attachment {a.name!r}: sha256 is not 64 lowercase hex"
                )
            if a.content is None:
                # Content-addressed: a location names the hash, never a place to fetch from.
                if a.location != blob_location(a.sha256):
                    raise DocbusError(
                        Reason.MALFORMED,
                        f"attachment {a.name!r} has no content and no blob-store location",
                    )
                continue
            if a.location is not None:
                raise DocbusError(
                    Reason.MALFORMED, f"attachment {a.name!r} has both content and a location"
                )
            if len(a.content) != a.size or hashlib.sha256(a.content).hexdigest() != a.sha256:
                raise DocbusError(
                    Reason.ATTACHMENT_HASH_MISMATCH,
                    f"attachment {a.name!r} does not match its hash",
                )


def _check_sealing(doc: Document) -> None:
    """A confidential document is sealed, with one sealed key for every party."""
    confidential = doc.confidentiality not in (Confidentiality.NONE, Confidentiality.UNKNOWN)
    if confidential and doc.sealed is None:
        raise DocbusError(Reason.POLICY, f"a {doc.confidentiality.value} document must be sealed")
    if doc.sealed is None:
        return
    if not confidential:
        raise DocbusError(Reason.POLICY, "a sealed document must say how confidential it is")
    if doc.sealed.suite is SealSuite.UNKNOWN:
        raise DocbusError(Reason.POLICY, "unknown sealing suite")
    sealed_to = {k.agency for k in doc.sealed.keys}
    missing = sorted({*doc.recipients, *doc.cc} - sealed_to)
    if missing:
        raise DocbusError(Reason.POLICY, f"no sealed key for {', '.join(missing)}")


#: Statuses only services issue, and which; the rest come from agencies.
_ISSUERS = {
    StatusCode.DELIVERED: (Service.GATEWAY,),
    StatusCode.REJECTED: (Service.GATEWAY, Service.ARCHIVER),
    StatusCode.ARCHIVED: (Service.ARCHIVER,),
}
#: Also an addressed agency's feedback (edXML 02 "refused"): never final for the sender.
_ALSO_FROM_AGENCIES = {StatusCode.REJECTED}


def _signing_key(key: object) -> None:
    algorithm_of(key)  # raises weak_algorithm for keys the bus does not sign with
