"""Seal and open rates for confidential documents to three recipients, beside bare AES-GCM.

Run: python -m benchmarks.bench_sealing [--seconds S] [--repeats N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from functools import partial
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from benchmarks.timing import rate
from bus.trust.addressbook import AddressBook
from bus.trust.pki import DevPki, KemAlgorithm
from bus.trust.sealing import EncryptionKey, open_sealed, seal
from bus.trust.truststore import TrustStore
from bus.wire.model import Confidentiality, SealSuite, attachment, now_ms
from producers.document import new_document

RECIPIENTS = ("000.00.00.H41", "000.00.00.H06", "000.00.00.H21")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pki = DevPki(Path(tmp))
        pki.init()
        for agency in RECIPIENTS:
            pki.issue_encryption(agency, KemAlgorithm.MLKEM768_X25519)
        book = AddressBook(pki.root / "agencies", TrustStore.load(pki.trust_dir))
        recipients = [book.recipient(a, now_ms()) for a in RECIPIENTS]
        key = EncryptionKey.from_pem(
            (pki.root / "agencies" / RECIPIENTS[1] / "encryption.key.pem").read_bytes()
        )
    print(f"{'size':>8} {'suite':<34} {'seal /s':>10} {'open /s':>10} {'bare AES-GCM /s':>16}")
    for size in (4 * 1024, 1024 * 1024):
        body = os.urandom(size)
        doc = new_document(
            "000.00.00.G22", RECIPIENTS, "Kế hoạch mật", confidentiality=Confidentiality.SECRET
        )
        doc = dataclasses.replace(doc, attachments=(attachment("mat.bin", body),))
        aes, nonce = AESGCM(AESGCM.generate_key(bit_length=256)), os.urandom(12)
        bare = rate(partial(aes.encrypt, nonce, body, b"aad"), args.seconds, args.repeats)
        for suite in (SealSuite.X25519_SHA256_AES256GCM, SealSuite.MLKEM768X25519_SHA256_AES256GCM):
            sealed = seal(doc, recipients, suite)
            sealing = rate(partial(seal, doc, recipients, suite), args.seconds, args.repeats)
            opening = rate(
                partial(open_sealed, sealed, key, RECIPIENTS[1]), args.seconds, args.repeats
            )
            figures = f"{sealing:>10,.0f} {opening:>10,.0f} {bare:>16,.0f}"
            print(f"{size // 1024:>6}Ki {suite.value:<34} {figures}")


if __name__ == "__main__":
    main()
