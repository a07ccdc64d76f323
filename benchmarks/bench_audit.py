"""verify-archive: time and peak memory as the archive grows (DESIGN §6: bounded memory).

Run: python -m benchmarks.bench_audit [--sizes 2000,10000,30000] [--body 4096]

Signed 4 KiB documents go through the real archiver (each with a gateway receipt, so every
entry is verified again by the audit); at each size ``docbus audit verify-archive`` runs as
its own process and its peak RSS is read from the kernel. Beside it, in the same run: the
bare cost of the signature verifications the audit must do (three Ed25519 per entry:
the receipt, the signer, the seal) in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509

from bus.kafka.records import document_record
from bus.kafka.topics import Topics
from bus.registry import load_registry
from bus.store.archive import open_archive
from bus.store.blobs import BlobStore
from bus.trust.pki import CertRole, DevPki, KeyAlgorithm
from bus.trust.signing import SigningKey, pae
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Policy, Verifier
from bus.wire.codec import default_codec
from bus.wire.model import Role, attachment
from consumers.archiver import Archiver
from producers.document import new_document
from tests.records import delivered

#: Runs the docbus command line and prints its own peak RSS (KiB) on the last stderr line.
PEAK = (
    "import resource, sys\n"
    "from bus.cli import cli\n"
    "try:\n"
    "    cli(sys.argv[1:])\n"
    "except SystemExit:\n"
    "    pass\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
)


def bare_verify(records: list[bytes]) -> float:
    """Entries per second of three bare Ed25519 verifications each (the audit's floor)."""
    codec = default_codec()
    events = [codec.decode_event(r) for r in records]
    keys = [
        [x509.load_der_x509_certificate(s.cert_chain[0]).public_key() for s in e.signatures]
        for e in events
    ]
    start = time.perf_counter()
    for event, pair in zip(events, keys, strict=True):
        signed = pae(event.payload_type, event.payload)
        for sig, key in zip(event.signatures, pair, strict=True):
            key.verify(sig.sig, signed)  # type: ignore[union-attr]
        pair[0].verify(event.signatures[0].sig, signed)  # type: ignore[union-attr]  # the receipt's
    return len(events) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="2000,10000,30000")
    parser.add_argument("--body", type=int, default=4096, help="attachment bytes per document")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="docbus-audit-bench-"))
    pki = DevPki(folder / "pki")
    pki.init()
    keys = [
        SigningKey.load(r, *pki.issue("000.00.00.G22", c, KeyAlgorithm.ED25519))
        for r, c in ((Role.SIGNER, CertRole.SIGNER), (Role.AGENCY, CertRole.AGENCY))
    ]
    service = {
        name: SigningKey.load(
            Role.SERVICE, *pki.issue(name, CertRole.SERVICE, KeyAlgorithm.ED25519)
        )
        for name in ("docbus.gateway", "docbus.archiver")
    }
    verifier = Verifier(TrustStore.load(pki.trust_dir), Policy(), load_registry())
    archive = open_archive(folder / "archive", create=True)
    archiver = Archiver(
        archive, service["docbus.archiver"], Topics(), verifier, BlobStore(folder / "blobs")
    )
    body = os.urandom(args.body)
    done, sample = 0, []
    print("entries   verify-archive   entries/s   peak RSS   bare 3×Ed25519 /s   ratio")
    for size in sizes:
        while done < size:
            n = min(1000, size - done)
            records = [
                document_record(
                    dataclasses.replace(
                        new_document("000.00.00.G22", ["000.00.00.H41"], f"Văn bản {done + i}"),
                        attachments=(attachment("a.bin", body),),
                    ),
                    keys,
                )
                for i in range(n)
            ]
            sample = records
            asyncio.run(
                archiver.handle(
                    [
                        delivered(v, service["docbus.gateway"], done + i)
                        for i, v in enumerate(records)
                    ]
                )
            )
            done += n
        start = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-c", PEAK, "audit", "verify-archive", "--data-dir",
             str(folder / "archive"), "--trust", str(pki.trust_dir)],
            capture_output=True, text=True, env={**os.environ, "DOCBUS_BOOTSTRAP": ""},
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        assert "clean: nothing altered or lost" in run.stdout, run.stdout[-2000:] + run.stderr
        peak = int(run.stderr.strip().splitlines()[-1]) / 1024
        bare = bare_verify(sample)
        print(
            f"{size:>7}   {elapsed:>12.1f} s   {size / elapsed:>9,.0f}   {peak:>6.0f} MB"
            f"   {bare:>17,.0f}   {size / elapsed / bare:>5.2f}"
        )
    archive.close()


if __name__ == "__main__":
    main()
