"""A development PKI: root and intermediate CAs, agency and service certificates, CRLs.

The certificate-making functions are pure; :class:`DevPki` lays them out on disk as the
CLI's ``docbus pki`` commands do (private keys under ``ca/`` and ``agencies/``, the trust
store under ``trust/``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, mlkem, rsa, x25519
from cryptography.x509.oid import NameOID

from bus.trust.policy import ENCRYPTION_EKU, POLICY_FILE, role_eku
from bus.trust.signing import PrivateKey, load_certificates, load_private_key
from bus.wire.errors import BusError
from bus.wire.model import Role


class KeyAlgorithm(StrEnum):
    """Key types ``docbus pki issue --alg`` makes."""

    ED25519 = "ed25519"
    ECDSA_P256 = "ecdsa-p256"
    RSA_PSS = "rsa-pss"
    ML_DSA_65 = "ml-dsa-65"


class CertRole(StrEnum):
    SIGNER = "signer"
    AGENCY = "agency"
    SERVICE = "service"
    ENCRYPTION = "encryption"


class KemAlgorithm(StrEnum):
    """Recipient encryption keys ``docbus pki issue --role encryption --kem`` makes."""

    X25519 = "x25519"
    MLKEM768_X25519 = "mlkem768-x25519"


AnyPrivateKey = PrivateKey | x25519.X25519PrivateKey | mlkem.MLKEM768PrivateKey


def generate_key(alg: KeyAlgorithm) -> PrivateKey:
    """A fresh private key of the given type."""
    if alg is KeyAlgorithm.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if alg is KeyAlgorithm.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if alg is KeyAlgorithm.RSA_PSS:
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return mldsa.MLDSA65PrivateKey.generate()


def _name(common_name: str, agency: str | None = None, unit: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "VN")]
    if agency is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, agency))
    if unit is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


@dataclass(frozen=True)
class Issuer:
    """A CA's key and certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def make_root(
    name: str = "docbus development root CA", days: int = 3650, not_before: datetime | None = None
) -> Issuer:
    """A self-signed ECDSA P-256 root CA (cryptography's verifier refuses Ed25519 CAs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or datetime.now(UTC) - timedelta(minutes=5)
    subject = _name(name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issuer(key, cert)


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_usage(role: CertRole) -> x509.KeyUsage:
    signs = role is not CertRole.ENCRYPTION
    return x509.KeyUsage(
        digital_signature=signs,
        content_commitment=signs,
        key_encipherment=not signs,
        data_encipherment=False,
        key_agreement=not signs,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _role_eku(role: CertRole) -> x509.ObjectIdentifier:
    if role is CertRole.ENCRYPTION:
        return x509.ObjectIdentifier(ENCRYPTION_EKU)
    return role_eku(Role(role.value.upper()))


DEFAULT_POLICY = """# Who may do what on this bus (DESIGN §4). Roles come from the docbus role EKUs
# that `docbus pki issue` writes; [[role]] rules map certificates of other PKIs.
[services]
gateway = ["docbus.gateway"]
archiver = ["docbus.archiver"]
witness = ["docbus.witness"]
# The operator of the national directory (DESIGN §13): it alone signs directories.
directory = ["docbus.directory"]

[bridges]
"bridge.vpcp" = ["000.00.00.G22"]
"""


def _issued(
    issuer: Issuer,
    subject: x509.Name,
    public_key: object,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key),  # type: ignore[arg-type]
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )


def make_intermediate(root: Issuer, name: str = "docbus development issuing CA") -> Issuer:
    """An intermediate CA under ``root`` with the root's remaining lifetime."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _issued(
            root,
            _name(name),
            key.public_key(),
            root.cert.not_valid_before_utc,
            root.cert.not_valid_after_utc,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .sign(root.key, hashes.SHA256())
    )
    return Issuer(key, cert)


def make_leaf(
    issuer: Issuer,
    agency: str,
    role: CertRole,
    key: AnyPrivateKey,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    """An end-entity certificate binding ``agency`` (organizationIdentifier) to ``key``."""
    start = not_before or datetime.now(UTC) - timedelta(minutes=5)
    end = not_after or start + timedelta(days=365)
    return (
        _issued(
            issuer,
            _name(f"{agency} {role.value}", agency, role.value),
            key.public_key(),
            start,
            end,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(role), critical=True)
        .add_extension(x509.ExtendedKeyUsage([_role_eku(role)]), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )


def make_tls(
    issuer: Issuer, name: str, hosts: Sequence[str], key: ec.EllipticCurvePrivateKey, days: int
) -> x509.Certificate:
    """A TLS certificate for a broker, a proxy or a client: CN ``name``, the DNS names and
    IP addresses of ``hosts`` as subjectAltName, usable as server and as client (brokers
    authenticate each other with it)."""
    start = datetime.now(UTC) - timedelta(minutes=5)
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    builder = (
        _issued(issuer, _name(name), key.public_key(), start, start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer.key, hashes.SHA256())


def make_crl(issuer: Issuer, revoked: list[tuple[int, datetime]]) -> x509.CertificateRevocationList:
    """A CRL from ``issuer`` listing (serial number, revocation time) pairs."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + timedelta(days=30))
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(issuer.key, hashes.SHA256())


def pem_key(key: AnyPrivateKey, password: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted with ``password`` if given (production keys live in an HSM)."""
    protection: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, protection
    )


#: Agency codes in the national format (000.00.00.G22), or service ids (docbus.gateway).
AGENCY_CODE = re.compile(r"\d{3}\.\d{2}\.\d{2}\.[A-Z]\d{2}|[a-z][a-z0-9-]*(\.[a-z0-9-]+)+")
_STEM = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_code(agency: str) -> None:
    """PkiError unless ``agency`` is a national agency code or a service id."""
    if not AGENCY_CODE.fullmatch(agency):
        raise PkiError(
            f"{agency!r} is neither an agency code (000.00.00.G22) nor a service id "
            "(docbus.gateway)"
        )


def _write_key(path: Path, data: bytes, replace: bool = False) -> None:
    """Write a private key readable by its owner only, from its first byte on."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    path.chmod(0o600)


def pem_cert(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


class PkiError(BusError):
    """A development PKI operation that cannot be done (missing CA, foreign certificate)."""


@dataclass(frozen=True)
class DevPki:
    """A development PKI laid out in a folder."""

    root: Path

    @property
    def trust_dir(self) -> Path:
        return self.root / "trust"

    @property
    def crl_path(self) -> Path:
        return self.trust_dir / "issuing-ca.crl"

    def init(self) -> None:
        """Make the root and intermediate CAs and an empty CRL; refuses to overwrite."""
        if (self.root / "ca").exists():
            raise PkiError(f"{self.root / 'ca'} exists already")
        root = make_root()
        inter = make_intermediate(root)
        (self.root / "ca").mkdir(parents=True)
        self.trust_dir.mkdir(parents=True, exist_ok=True)
        _write_key(self.root / "ca" / "root-ca.key.pem", pem_key(root.key))
        _write_key(self.root / "ca" / "issuing-ca.key.pem", pem_key(inter.key))
        (self.trust_dir / "root-ca.cert.pem").write_bytes(pem_cert(root.cert))
        (self.trust_dir / "issuing-ca.cert.pem").write_bytes(pem_cert(inter.cert))
        self.crl_path.write_bytes(make_crl(inter, []).public_bytes(serialization.Encoding.PEM))
        (self.trust_dir / POLICY_FILE).write_text(DEFAULT_POLICY, "utf-8")

    def issuer(self) -> Issuer:
        """The intermediate CA that issues agency and service certificates."""
        try:
            key = load_private_key((self.root / "ca" / "issuing-ca.key.pem").read_bytes())
            cert = load_certificates((self.trust_dir / "issuing-ca.cert.pem").read_bytes())[0]
        except FileNotFoundError as exc:
            raise PkiError(
                f"no CA in {self.root}: run `docbus pki init --dir {self.root}`"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError("the issuing CA key is not an ECDSA key")
        return Issuer(key, cert)

    def issue(
        self,
        agency: str,
        role: CertRole,
        alg: KeyAlgorithm,
        days: int = 365,
        *,
        name: str | None = None,
        password: bytes | None = None,
        replace: bool = False,
    ) -> tuple[Path, Path]:
        """Issue a key and certificate to ``agencies/AGENCY/NAME.{key,cert}.pem`` (NAME is
        the role by default); returns (key path, certificate path).

        Refuses a malformed agency code, and an existing key unless ``replace``.
        """
        check_code(agency)
        stem = name or role.value
        if not _STEM.fullmatch(stem):
            raise PkiError(f"{stem!r} is no file name (letters, digits, '-', '_')")
        folder = self.root / "agencies" / agency
        key_path, cert_path = folder / f"{stem}.key.pem", folder / f"{stem}.cert.pem"
        if key_path.exists() and not replace:
            raise PkiError(f"{key_path} exists: a key is never overwritten (choose --name)")
        issuer = self.issuer()
        key = generate_key(alg)
        start = datetime.now(UTC) - timedelta(minutes=5)
        cert = make_leaf(issuer, agency, role, key, start, start + timedelta(days=days))
        folder.mkdir(parents=True, exist_ok=True)
        _write_key(key_path, pem_key(key, password), replace=replace)
        cert_path.write_bytes(pem_cert(cert, issuer.cert))
        return key_path, cert_path

    def issue_tls(
        self, name: str, hosts: Sequence[str], days: int = 365, replace: bool = False
    ) -> Path:
        """A TLS key and certificate for ``name`` in ``tls/NAME.pem``: the certificate, the
        issuing CA's, then the key (PKCS#8), as Kafka's PEM keystores and the embedded
        broker's ``--cert`` read them; readable by its owner only. Clients trust
        ``trust/root-ca.cert.pem``."""
        if not _STEM.fullmatch(name):
            raise PkiError(f"{name!r} is no file name (letters, digits, '-', '_')")
        path = self.root / "tls" / f"{name}.pem"
        if path.exists() and not replace:
            raise PkiError(f"{path} exists: a key is never overwritten")
        issuer = self.issuer()
        key = ec.generate_private_key(ec.SECP256R1())
        cert = make_tls(issuer, name, hosts, key, days)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_key(path, pem_cert(cert, issuer.cert) + pem_key(key), replace=replace)
        return path

    def issue_encryption(
        self, agency: str, kem: KemAlgorithm, days: int = 365
    ) -> tuple[Path, Path]:
        """Issue a recipient encryption key, separate from the agency's signing keys.

        X25519 gives one key and certificate; the ML-KEM-768+X25519 hybrid gives an X25519
        and an ML-KEM-768 key, each certified, in one key file and one certificate file.
        """
        issuer = self.issuer()
        keys: list[AnyPrivateKey] = [x25519.X25519PrivateKey.generate()]
        if kem is KemAlgorithm.MLKEM768_X25519:
            keys.append(mlkem.MLKEM768PrivateKey.generate())
        start = datetime.now(UTC) - timedelta(minutes=5)
        certs = [
            make_leaf(issuer, agency, CertRole.ENCRYPTION, k, start, start + timedelta(days=days))
            for k in keys
        ]
        folder = self.root / "agencies" / agency
        folder.mkdir(parents=True, exist_ok=True)
        key_path, cert_path = folder / "encryption.key.pem", folder / "encryption.cert.pem"
        _write_key(key_path, b"".join(pem_key(k) for k in keys), replace=True)
        cert_path.write_bytes(pem_cert(*certs, issuer.cert))
        return key_path, cert_path

    def revoke(self, cert_file: Path) -> int:
        """Add a certificate to the issuing CA's CRL; returns its serial number."""
        issuer = self.issuer()
        cert = load_certificates(cert_file.read_bytes())[0]
        if cert.issuer != issuer.cert.subject:
            raise PkiError(f"{cert_file} was not issued by this PKI's issuing CA")
        crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        revoked = [(r.serial_number, r.revocation_date_utc) for r in crl]
        if all(serial != cert.serial_number for serial, _ in revoked):
            # A CRL keeps whole seconds: round up, so that the revocation never predates
            # the moment it was made (what was received before it stays valid).
            when = (datetime.now(UTC) + timedelta(seconds=1)).replace(microsecond=0)
            revoked.append((cert.serial_number, when))
        self.crl_path.write_bytes(
            make_crl(issuer, revoked).public_bytes(serialization.Encoding.PEM)
        )
        return cert.serial_number
