"""The address book: recipients' encryption certificates, checked before anything is sealed.

A folder where each agency's certificates are ``CODE/encryption.cert.pem`` (the layout
``docbus pki`` writes), ``CODE.pem`` or ``CODE.cert.pem``. A certificate that does not
chain to the trust store, is expired or revoked, or names another agency is refused.
"""

from __future__ import annotations

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

    def __init__(self, folder: Path, trust: TrustStore) -> None:
        if not folder.is_dir():
            raise DocbusError(Reason.POLICY, f"address book {folder} is not a folder")
        self.folder = folder
        self._chains = ChainBuilder(trust, _encryption_key, "key_agreement")

    def _file(self, agency: str) -> Path:
        for candidate in (
            self.folder / agency / "encryption.cert.pem",
            self.folder / f"{agency}.pem",
            self.folder / f"{agency}.cert.pem",
        ):
            if candidate.is_file():
                return candidate
        raise DocbusError(Reason.POLICY, f"no encryption certificate for {agency} in {self.folder}")

    def recipient(self, agency: str, at: datetime) -> RecipientKey:
        """The checked encryption key of ``agency`` at ``at``; DocbusError says why not."""
        path = self._file(agency)
        certs = load_certificates(path.read_bytes())
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
