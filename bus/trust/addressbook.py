"""The address book: recipients' encryption certificates, checked before anything is sealed.

The certificates come from the national directory (DESIGN §13: agency code → PEM chain),
or, offline, from a folder where each agency's are ``CODE/encryption.cert.pem`` (the layout
``docbus pki`` writes), ``CODE.pem`` or ``CODE.cert.pem``. Either way a certificate that
does not chain to the trust store, is expired or revoked, or names another agency is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from bus.trust.chain import ChainBuilder
from bus.trust.sealing import RecipientKey, recipient_key
from bus.trust.signing import agency_code, load_certificates
from bus.trust.truststore import TrustStore, is_ca
from bus.wire.errors import DocbusError, Reason


def _encryption_key(key: object) -> None:
    if not isinstance(key, x25519.X25519PublicKey | mlkem.MLKEM768PublicKey):
        raise DocbusError(
            Reason.WEAK_ALGORITHM, f"{type(key).__name__} is not an X25519 or ML-KEM-768 key"
        )


class AddressBook:
    """Looks up and checks recipients' encryption certificates in a folder."""

    def __init__(
        self, folder: Path | None, trust: TrustStore, directory: Mapping[str, str] | None = None
    ) -> None:
        if folder is not None and not folder.is_dir():
            raise DocbusError(Reason.POLICY, f"address book {folder} is not a folder")
        self.folder = folder
        self.directory = directory or {}
        self._chains = ChainBuilder(trust, _encryption_key, "key_agreement")

    def _certificates(self, agency: str) -> tuple[str, bytes]:
        """Where ``agency``'s certificates come from (for messages), and their PEM."""
        if agency in self.directory:
            return f"the directory's entry for {agency}", self.directory[agency].encode()
        if self.folder is None:
            raise DocbusError(
                Reason.POLICY, f"the directory names no encryption certificate for {agency}"
            )
        path = self._file(self.folder, agency)
        return str(path), path.read_bytes()

    @staticmethod
    def _file(folder: Path, agency: str) -> Path:
        for candidate in (
            folder / agency / "encryption.cert.pem",
            folder / f"{agency}.pem",
            folder / f"{agency}.cert.pem",
        ):
            if candidate.is_file():
                return candidate
        raise DocbusError(Reason.POLICY, f"no encryption certificate for {agency} in {folder}")

    def recipient(self, agency: str, at: datetime) -> RecipientKey:
        """The checked encryption key of ``agency`` at ``at``; DocbusError says why not."""
        path, pem = self._certificates(agency)
        try:
            certs = load_certificates(pem)
        except ValueError as exc:
            raise DocbusError(Reason.POLICY, f"{path}: not PEM certificates ({exc})") from exc
        leaves = [c for c in certs if not is_ca(c)]
        issuers = [c for c in certs if is_ca(c)]
        if not leaves:
            raise DocbusError(Reason.POLICY, f"{path} holds no encryption certificate")
        for leaf in leaves:
            named = agency_code(leaf)
            if named != agency:
                raise DocbusError(
                    Reason.SENDER_MISMATCH, f"{path}: the certificate names {named}, not {agency}"
                )
            ders = [c.public_bytes(serialization.Encoding.DER) for c in (leaf, *issuers)]
            self._chains.chain(ders).check_at(at, f"{agency}'s encryption certificate: ")
        return recipient_key(agency, leaves)
