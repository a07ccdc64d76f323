"""Encode+sign and decode+verify rates for Ed25519-signed documents, beside bare Ed25519.

Run: python -m benchmarks.bench_signing [--seconds S] [--repeats N]
Prints one line per measurement (median of the repeats) and the ratio that
benchmarks/README.md records.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path

from benchmarks.timing import rate
from bus.kafka.records import document_record
from bus.registry import load_registry
from bus.trust.pki import CertRole, DevPki, KeyAlgorithm
from bus.trust.signing import SigningKey, pae
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Verified, Verifier
from bus.wire.codec import default_codec
from bus.wire.model import DOCUMENT_TYPE, Role, attachment, now_ms
from producers.document import new_document

SENDER, RECIPIENT = "000.00.00.G22", "000.00.00.H41"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pki = DevPki(Path(tmp))
        pki.init()
        keys = [
            SigningKey.load(role, *pki.issue(SENDER, cert_role, KeyAlgorithm.ED25519))
            for role, cert_role in ((Role.SIGNER, CertRole.SIGNER), (Role.AGENCY, CertRole.AGENCY))
        ]
        verifier = Verifier(TrustStore.load(pki.trust_dir), registry=load_registry())
    print(f"{'size':>8} {'operation':<36} {'per second':>12}")
    for size in (4 * 1024, 256 * 1024):
        figures = measure(size, keys, verifier, args.seconds, args.repeats)
        for name, value in figures.items():
            print(f"{size // 1024:>6}Ki {name:<36} {value:>12,.0f}")
        ratio = figures[VERIFY] / figures[BARE]
        print(f"{size // 1024:>6}Ki {'decode+verify / bare verify':<36} {ratio:>12.2f}")


VERIFY = "decode + verify (2 x Ed25519)"
BARE = "bare Ed25519 verify x 2, same bytes"


def measure(
    size: int, keys: list[SigningKey], verifier: Verifier, seconds: float, repeats: int
) -> dict[str, float]:
    """Rates for one attachment size."""
    doc = new_document(SENDER, [RECIPIENT], "V/v thử nghiệm hiệu năng")
    doc = dataclasses.replace(doc, attachments=(attachment("a.bin", os.urandom(size)),))
    record = document_record(doc, keys)
    event = default_codec().decode_event(record)
    at = now_ms()
    assert isinstance(verifier.verify(record, at), Verified)
    signed = pae(DOCUMENT_TYPE, event.payload)
    pairs = [(k.key.public_key(), s.sig) for k, s in zip(keys, event.signatures, strict=True)]

    def bare_verify_both() -> None:
        for key, sig in pairs:
            key.verify(sig, signed)  # type: ignore[call-arg]

    return {
        "encode + sign (2 x Ed25519)": rate(lambda: document_record(doc, keys), seconds, repeats),
        VERIFY: rate(lambda: verifier.verify(record, at), seconds, repeats),
        BARE: rate(bare_verify_both, seconds, repeats),
    }


if __name__ == "__main__":
    main()
