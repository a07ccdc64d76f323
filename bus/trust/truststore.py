"""The trust store: a folder of anchors, intermediates and revocation lists (DESIGN §4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.verification import Store

from bus.trust.policy import TrustPolicy
from bus.trust.signing import load_certificates
from bus.wire.errors import DocbusError, Reason

_CERT_SUFFIXES = {".pem", ".crt", ".cer", ".der"}


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def folder_stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a file of the trust folder is added, removed or rewritten."""
    try:
        return tuple(
            (p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.iterdir())
        )
    except OSError:
        return ()


def is_ca(cert: x509.Certificate) -> bool:
    """Whether ``cert`` may issue certificates: basicConstraints CA, and keyCertSign when
    it has a KeyUsage extension (RFC 5280 §4.2.1.9)."""
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True


def _load_crl(data: bytes) -> x509.CertificateRevocationList:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return bool(crl.is_signature_valid(issuer.public_key()))  # type: ignore[arg-type]
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False


@dataclass(frozen=True)
class TrustStore:
    """Trust anchors (self-signed CAs), intermediates and CRLs read from one folder."""

    anchors: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...]
    policy: TrustPolicy = field(default_factory=TrustPolicy)
    folder: Path | None = None
    stamp: tuple[tuple[str, int, int], ...] = ()

    @classmethod
    def load(cls, folder: Path) -> TrustStore:
        """Read every certificate and ``*.crl`` file in ``folder``.

        Raises DocbusError(untrusted_certificate) for a folder with no anchor or an
        unreadable file, naming it.
        """
        if not folder.is_dir():
            raise DocbusError(Reason.UNTRUSTED_CERTIFICATE, f"trust store {folder} is not a folder")
        anchors: list[x509.Certificate] = []
        intermediates: list[x509.Certificate] = []
        crls: list[x509.CertificateRevocationList] = []
        for path in sorted(folder.iterdir()):
            suffix = path.suffix.lower()
            try:
                if suffix == ".crl":
                    crls.append(_load_crl(path.read_bytes()))
                elif suffix in _CERT_SUFFIXES:
                    for cert in load_certificates(path.read_bytes()):
                        (anchors if _self_signed(cert) else intermediates).append(cert)
            except ValueError as exc:
                raise DocbusError(
                    Reason.UNTRUSTED_CERTIFICATE, f"cannot read {path}: {exc}"
                ) from exc
        if not anchors:
            raise DocbusError(Reason.UNTRUSTED_CERTIFICATE, f"no trust anchor in {folder}")
        return cls(
            anchors=tuple(anchors),
            intermediates=tuple(intermediates),
            crls=tuple(crls),
            policy=TrustPolicy.load(folder),
            folder=folder,
            stamp=folder_stamp(folder),
        )

    def reloaded(self) -> TrustStore | None:
        """The folder read again if anything in it changed since, else None.

        A folder that no longer loads keeps the store as it was (DocbusError is raised
        only by :meth:`load`): a half-written CRL must not stop a running service.
        """
        if self.folder is None or folder_stamp(self.folder) == self.stamp:
            return None
        return TrustStore.load(self.folder)

    def store(self) -> Store:
        """The anchors as a store for cryptography's chain builder."""
        return Store(list(self.anchors))

    def revoked_at(self, cert: x509.Certificate, issuer: x509.Certificate) -> datetime | None:
        """When ``issuer`` revoked ``cert`` according to a CRL it signed, or None."""
        for crl in self.crls:
            if crl.issuer != issuer.subject or not _crl_signed_by(crl, issuer):
                continue
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                return entry.revocation_date_utc
        return None

    def crl_next_update(self, issuer: x509.Certificate) -> datetime | None:
        """Until when ``issuer``'s CRLs say anything (the earliest nextUpdate), or None."""
        found = [
            crl.next_update_utc
            for crl in self.crls
            if crl.issuer == issuer.subject
            and crl.next_update_utc is not None
            and _crl_signed_by(crl, issuer)
        ]
        return min(found) if found else None
