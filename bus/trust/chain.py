"""Certificate chains: built to a trust anchor once, checked against a time per use.

Chain building is cached per certificate chain, so a busy service pays for X.509 path
validation once per signer or recipient rather than once per event. Whether a chain is
valid *at* a given time is decided per use from the chain's validity window and the
revocation time the CRLs give.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, VerificationError

from bus.trust.signing import agency_code, key_id
from bus.trust.truststore import TrustStore, is_ca
from bus.wire.errors import DocbusError, Reason
from bus.wire.model import Role

_CACHE_SIZE = 4096
_ONE_SECOND = timedelta(seconds=1)
_MAX_DEPTH = 8
_RFC_NAMES = {"digital_signature": "digitalSignature", "key_agreement": "keyAgreement"}


@dataclass(frozen=True)
class Chain:
    """A certificate chain that builds to an anchor, with what its users need of it."""

    leaf: x509.Certificate
    key: Any
    subject: str
    agency: str | None
    key_id: str
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None
    role: Role | None
    path: tuple[x509.Certificate, ...]
    #: Until when the CRLs of the chain's issuers speak (None: no CRL covers it).
    revocation_known_until: datetime | None = None

    def check_at(self, at: datetime, context: str = "") -> None:
        """Raise certificate_expired or certificate_revoked unless valid at ``at``."""
        if not self.not_before <= at <= self.not_after:
            raise DocbusError(
                Reason.CERTIFICATE_EXPIRED,
                f"{context}{self.subject} is valid from {self.not_before:%Y-%m-%d} "
                f"to {self.not_after:%Y-%m-%d}, not at {at:%Y-%m-%d %H:%M:%S}",
            )
        if self.revoked_at is not None and self.revoked_at <= at:
            raise DocbusError(
                Reason.CERTIFICATE_REVOKED,
                f"{context}{self.subject} revoked on {self.revoked_at:%Y-%m-%d}",
            )


class ChainBuilder:
    """Builds and caches chains to the anchors of one trust store.

    :param trust: anchors, intermediates and CRLs.
    :param key_check: raises DocbusError for a leaf key this use does not accept.
    :param usage: the KeyUsage bit the leaf must have when it has the extension
        (``digital_signature``, ``key_agreement``).
    """

    def __init__(self, trust: TrustStore, key_check: Callable[[Any], None], usage: str) -> None:
        self.trust = trust
        self._key_check = key_check
        self._usage = usage
        self._chains: OrderedDict[tuple[bytes, ...], Chain | DocbusError] = OrderedDict()
        ee = ExtensionPolicy.permit_all()  # agency certificates often lack SAN/EKU
        ca = ExtensionPolicy.webpki_defaults_ca()
        self._builder = (
            PolicyBuilder().store(trust.store()).extension_policies(ca_policy=ca, ee_policy=ee)
        )

    def chain(self, ders: Sequence[bytes]) -> Chain:
        """The checked chain for a leaf-first list of DER certificates (cached).

        Raises DocbusError: untrusted_certificate, weak_algorithm (from the key check).
        """
        cache_key = tuple(ders)  # the DER bytes themselves: no hashing per use
        found = self._chains.get(cache_key)
        if found is None:
            found = self._build(tuple(ders))
            self._chains[cache_key] = found
            if len(self._chains) > _CACHE_SIZE:
                self._chains.popitem(last=False)
        else:
            self._chains.move_to_end(cache_key)
        if isinstance(found, DocbusError):
            raise DocbusError(found.reason, found.message)  # a fresh one: no growing traceback
        return found

    def _build(self, ders: tuple[bytes, ...]) -> Chain | DocbusError:
        """Build and check a chain once, independent of the verification time."""
        if not ders:
            return DocbusError(Reason.UNTRUSTED_CERTIFICATE, "no certificate given")
        try:
            certs = [x509.load_der_x509_certificate(d) for d in ders]
            for c in certs:  # parsed lazily: a bad field would raise later, anywhere
                c.subject, c.issuer, c.extensions  # noqa: B018
        # Malformed DER surfaces as ValueError, DuplicateExtension, UnsupportedGeneralNameType…
        except Exception as exc:
            return DocbusError(Reason.UNTRUSTED_CERTIFICATE, f"unreadable certificate: {exc}")
        leaf = certs[0]
        subject = leaf.subject.rfc4514_string()
        try:
            key = leaf.public_key()
            self._key_check(key)
        except DocbusError as exc:
            return exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            return DocbusError(Reason.WEAK_ALGORITHM, f"{subject}: {exc}")
        try:
            usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
            if not getattr(usage, self._usage):
                return DocbusError(
                    Reason.UNTRUSTED_CERTIFICATE,
                    f"{subject}: key usage lacks {_RFC_NAMES[self._usage]}",
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
        known = [
            t
            for _, issuer in itertools.pairwise(built)
            if (t := self.trust.crl_next_update(issuer))
        ]
        return Chain(
            leaf=leaf,
            key=key,
            subject=subject,
            agency=agency_code(leaf),
            key_id=key_id(leaf),
            not_before=max(c.not_valid_before_utc for c in built),
            not_after=min(c.not_valid_after_utc for c in built),
            revoked_at=min(revoked) if revoked else None,
            role=self.trust.policy.role_of(leaf),
            path=tuple(built),
            revocation_known_until=min(known) if known else None,
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
            if issuer.subject != cert.issuer or issuer == cert or not (anchor or is_ca(issuer)):
                continue
            try:
                cert.verify_directly_issued_by(issuer)
            except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
                continue
            rest = [issuer] if anchor else self._v1_path(issuer, pool, depth + 1)
            if rest is not None:
                return [cert, *rest]
        return None


def _moments(leaf: x509.Certificate, others: list[x509.Certificate]) -> list[datetime]:
    """Times inside the leaf's validity at which a chain through ``others`` may be valid."""
    lo, hi = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    edges = {lo + _ONE_SECOND, hi - _ONE_SECOND}
    for c in others:
        edges.update((c.not_valid_before_utc + _ONE_SECOND, c.not_valid_after_utc - _ONE_SECOND))
    return sorted(t for t in edges if lo <= t <= hi)
