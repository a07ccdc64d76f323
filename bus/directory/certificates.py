"""An operator's certificates for the directory, read from a folder laid out as the PKI's
``agencies`` (``AGENCY/encryption.cert.pem``, ``AGENCY/signer.cert.pem``,
``AGENCY/agency.cert.pem``). No key is read."""

from __future__ import annotations

from pathlib import Path

SIGNING_FILES = ("agency.cert.pem", "signer.cert.pem")


def certificates_in(folder: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Each agency's encryption chain, and the chains it signs with."""
    encryption = {p.parent.name: p.read_text("ascii") for p in folder.glob("*/encryption.cert.pem")}
    signing: dict[str, list[str]] = {}
    for name in SIGNING_FILES:
        for path in sorted(folder.glob(f"*/{name}")):
            signing.setdefault(path.parent.name, []).append(path.read_text("ascii"))
    return encryption, signing
