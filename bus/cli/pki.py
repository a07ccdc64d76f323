"""``docbus pki init|issue|tls|revoke``: the development PKI."""

from __future__ import annotations

from pathlib import Path

import click

from bus.cli.options import DocbusGroup, choice_option, key_password, path_option
from bus.trust.pki import CertRole, DevPki, KemAlgorithm, KeyAlgorithm, check_code


@click.group(cls=DocbusGroup)
def pki() -> None:
    """A development PKI: CAs, agency and service certificates, revocation."""


@pki.command("init")
@click.option("--dir", "folder", required=True, type=click.Path(path_type=Path))
def pki_init(folder: Path) -> None:
    """Make a root and an issuing CA; keys under DIR/ca, the trust store under DIR/trust."""
    DevPki(folder).init()
    click.echo(f"trust store: {folder / 'trust'}")
    click.echo(f"CA keys:     {folder / 'ca'}")


@pki.command("issue")
@click.option("--dir", "folder", required=True, type=click.Path(path_type=Path))
@click.option("--agency", required=True, help="Agency code, e.g. 000.00.00.G22.")
@click.option("--role", required=True, type=click.Choice([r.value for r in CertRole]))
@choice_option(
    "--alg", choices=KeyAlgorithm, default=KeyAlgorithm.ED25519, help="Signing key type."
)
@choice_option(
    "--kem", choices=KemAlgorithm, default=KemAlgorithm.X25519, help="Encryption key type."
)
@click.option("--days", default=365, show_default=True, type=click.IntRange(min=1))
@click.option("--name", help="File name instead of the role's (a second key in one role).")
@path_option(
    "--password-file",
    exists=True,
    help="Encrypt the key with the password in this file (default: DOCBUS_KEY_PASSWORD_FILE).",
)
def pki_issue(
    folder: Path,
    agency: str,
    role: str,
    alg: str,
    kem: str,
    days: int,
    name: str | None,
    password_file: Path | None,
) -> None:
    """Issue a key and certificate to DIR/agencies/CODE/ROLE.{key,cert}.pem (never over an
    existing key); the key file is readable by its owner only."""
    dev = DevPki(folder)
    if CertRole(role) is CertRole.ENCRYPTION:
        check_code(agency)
        key_path, cert_path = dev.issue_encryption(agency, KemAlgorithm(kem), days)
    else:
        password = key_password(password_file)
        key_path, cert_path = dev.issue(
            agency, CertRole(role), KeyAlgorithm(alg), days, name=name, password=password
        )
    click.echo(key_path)
    click.echo(cert_path)


@pki.command("tls")
@click.option("--dir", "folder", required=True, type=click.Path(path_type=Path))
@click.option("--name", required=True, help="The certificate's CN and file name (kafka-1).")
@click.option(
    "--host", "hosts", multiple=True, required=True, help="A DNS name or IP it answers on."
)
@click.option("--days", default=365, show_default=True, type=click.IntRange(min=1))
def pki_tls(folder: Path, name: str, hosts: tuple[str, ...], days: int) -> None:
    """Issue a TLS certificate (server and client) for a broker, a proxy or a client to
    DIR/tls/NAME.pem: certificate chain and key in one file, readable by its owner only."""
    click.echo(DevPki(folder).issue_tls(name, hosts, days))


@pki.command("revoke")
@click.option("--dir", "folder", required=True, type=click.Path(path_type=Path))
@click.option("--cert", "cert_file", required=True, type=click.Path(exists=True, path_type=Path))
def pki_revoke(folder: Path, cert_file: Path) -> None:
    """Add a certificate to the CRL in DIR/trust."""
    serial = DevPki(folder).revoke(cert_file)
    click.echo(f"revoked serial {serial:x}")
