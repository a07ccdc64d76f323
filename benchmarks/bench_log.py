"""The transparency log at scale, and replay + audit throughput on the embedded broker.

Run: python -m benchmarks.bench_log [--entries N] [--replay M]

1. Appends N entries (128-byte events, batches of 1,000, one transaction each) to an
   SQLite archive and its log, and reports the append rate at the start and at the end,
   the time to compute the root and an inclusion proof at N entries, and bare SHA-256
   over the same bytes measured in the same run.
2. Puts M signed 4 KiB documents on a delivery topic, archives them, then replays the
   topic and checks each event against the archive (verify signatures, find the entry,
   check its inclusion proof against the signed checkpoint); beside it, a bare consume
   of the same topic.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from bus.audit.replay import read_topics, replay
from bus.kafka.broker import EmbeddedBroker
from bus.kafka.records import document_record
from bus.kafka.topics import Topics, ensure_topics
from bus.registry import load_registry
from bus.store.archive import SqliteArchive
from bus.store.blobs import BlobStore
from bus.store.documents import NewEntry
from bus.trust.pki import CertRole, DevPki, KeyAlgorithm
from bus.trust.signing import SigningKey
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Policy, Verifier
from bus.wire.model import Role, attachment, now_ms
from consumers.archiver import Archiver
from producers.document import new_document
from tests.records import delivered, receipt_headers


def append(folder: Path, n: int) -> None:
    archive = SqliteArchive(folder / "log.sqlite")
    at = now_ms()
    rates, done, batch = [], 0, 1000
    bare_start = time.perf_counter()
    for i in range(min(n, 100_000)):
        hashlib.sha256(b"\x00" + i.to_bytes(8, "big") + b"x" * 120).digest()
    bare = min(n, 100_000) / (time.perf_counter() - bare_start)
    while done < n:
        entries = [
            NewEntry(
                document_id=f"doc-{done + i}",
                revision=0,
                digest=hashlib.sha256(str(done + i).encode()).hexdigest(),
                payload_digest=hashlib.sha256(str(done + i).encode()).hexdigest(),
                sender="s",
                recipients=("r",),
                subject="",
                confidentiality="NONE",
                topic="t",
                received_at=at,
                event=(done + i).to_bytes(8, "big") + b"x" * 120,
            )
            for i in range(batch)
        ]
        start = time.perf_counter()
        archive.store(entries)
        rates.append(batch / (time.perf_counter() - start))
        done += batch
    size = archive.log_size()
    start = time.perf_counter()
    root = archive.root(size)
    root_ms = (time.perf_counter() - start) * 1000
    proof_ms = []
    for index in random.sample(range(size), 1000):
        start = time.perf_counter()
        archive.inclusion_proof(index, size)
        proof_ms.append((time.perf_counter() - start) * 1000)
    archive.close()
    print(f"log of {size:,} entries, root {root.hex()[:16]}…")
    first, last = statistics.median(rates[:10]), statistics.median(rates[-10:])
    print(f"append rate, first 10 batches           {first:>10,.0f} entries/s")
    print(f"append rate, last 10 batches            {last:>10,.0f} entries/s")
    print(f"bare SHA-256 of the same leaves         {bare:>10,.0f} /s")
    print(f"root at {size:,}                        {root_ms:>10.2f} ms")
    print(
        f"inclusion proof at {size:,}, p50 / p99  {statistics.median(proof_ms):>6.2f} / "
        f"{sorted(proof_ms)[989]:.2f} ms"
    )


def replay_rate(folder: Path, m: int) -> None:
    pki = DevPki(folder / "pki")
    pki.init()
    keys = [
        SigningKey.load(r, *pki.issue("000.00.00.G22", c, KeyAlgorithm.ED25519))
        for r, c in ((Role.SIGNER, CertRole.SIGNER), (Role.AGENCY, CertRole.AGENCY))
    ]
    archiver_key = SigningKey.load(
        Role.SERVICE, *pki.issue("docbus.archiver", CertRole.SERVICE, KeyAlgorithm.ED25519)
    )
    body = os.urandom(4096)
    records = []
    for i in range(m):
        doc = new_document("000.00.00.G22", ["000.00.00.H41"], f"Văn bản {i}")
        doc = dataclasses.replace(doc, attachments=(attachment("a.bin", body),))
        records.append(document_record(doc, keys))
    archive = SqliteArchive(folder / "archive.sqlite")
    topic = Topics().deliver("nghe-an")
    gateway = SigningKey.load(
        Role.SERVICE, *pki.issue("docbus.gateway", CertRole.SERVICE, KeyAlgorithm.ED25519)
    )
    trusted = Verifier(TrustStore.load(pki.trust_dir), Policy(), load_registry())
    archiver = Archiver(archive, archiver_key, Topics(), trusted, BlobStore(folder / "blobs"))
    for start in range(0, m, 500):
        asyncio.run(
            archiver.handle(
                [
                    delivered(v, gateway, start + i, topic)
                    for i, v in enumerate(records[start : start + 500])
                ]
            )
        )
    verifier = Verifier(
        TrustStore.load(pki.trust_dir), Policy(issued_at_tolerance=None), load_registry()
    )
    with EmbeddedBroker() as broker:
        settings = broker.settings()

        async def load() -> None:
            await ensure_topics(settings, [topic], 3)
            producer = settings.producer()
            await producer.start()
            sent = [
                await producer.send(
                    topic, v, key=str(i).encode(), headers=receipt_headers(v, gateway)
                )
                for i, v in enumerate(records)
            ]
            await asyncio.gather(*sent)
            await producer.stop()

        async def bare() -> float:
            start, n = time.perf_counter(), 0
            async for _ in read_topics(settings, [topic], None, None):
                n += 1
            return n / (time.perf_counter() - start)

        async def audited() -> tuple[float, bool]:
            start = time.perf_counter()
            report = await replay(settings, topic, verifier, archive)
            return report.counts["records read"] / (time.perf_counter() - start), report.clean

        asyncio.run(load())
        bare_rate = asyncio.run(bare())
        audit_rate, clean = asyncio.run(audited())
    archive.close()
    print(
        f"replay + audit of {m:,} documents         {audit_rate:>10,.0f} events/s (clean: {clean})"
    )
    print(f"bare read of the same topic             {bare_rate:>10,.0f} records/s")
    print("(both include about one second of waiting for the topic to stay quiet at the end)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--replay", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        append(Path(tmp), args.entries)
        replay_rate(Path(tmp), args.replay)


if __name__ == "__main__":
    main()
