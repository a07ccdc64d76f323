"""The whole pipeline: publish → gateway → archiver → ARCHIVED, on the embedded broker or on
a three-broker Apache Kafka cluster (``deploy/kafka/cluster up DIR``, then ``--cluster DIR``).

Run: python -m benchmarks.bench_pipeline [--documents N] [--latency-seconds S] [--cluster DIR]

The gateway and the archiver run as separate ``docbus serve`` processes, as deployed; on the
cluster each logs in as its own principal (SASL_SSL, the ACLs of deploy/acls.txt) and the
load client and the bare figures use the admin's mTLS session.
Documents (4 KiB attachment, signed by a SIGNER and an AGENCY key, Ed25519) are signed
before the clock starts; the figures are for the bus. Beside them, measured in the same
run: the bare broker's produce+consume rate for records of the same size, and the
in-process cost of the same cryptographic work (decode + verify both signatures + sign
the DELIVERED and ARCHIVED receipts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from aiokafka import AIOKafkaConsumer

from bus.kafka.broker import EmbeddedBroker
from bus.kafka.clients import KafkaSettings
from bus.kafka.records import document_record, status_record
from bus.kafka.topics import all_topics, ensure_topics
from bus.registry import load_registry
from bus.trust.pki import CertRole, DevPki, KeyAlgorithm
from bus.trust.signing import SigningKey
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Verified, Verifier
from bus.wire.codec import default_codec
from bus.wire.model import Role, Status, StatusCode, attachment, event_digest, now_ms
from producers.document import new_document
from tests.kafka_cluster import KafkaCluster

SENDER, RECIPIENT = "000.00.00.G22", "000.00.00.H41"


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_documents(n: int, keys: list[SigningKey]) -> list[tuple[str, bytes]]:
    body = os.urandom(4096)
    out = []
    for i in range(n):
        doc = new_document(SENDER, [RECIPIENT], f"Văn bản thử nghiệm {i}")
        doc = dataclasses.replace(doc, attachments=(attachment("a.bin", body),))
        out.append((doc.document_id, document_record(doc, keys)))
    return out


async def archived_watcher(
    settings: KafkaSettings, wanted: set[str], seen: dict[str, float], ready: asyncio.Event
) -> None:
    """Record when each wanted document's ARCHIVED status arrives; ``ready`` once positioned."""
    codec = default_codec()
    consumer = AIOKafkaConsumer(
        settings.topics.status,
        **settings.common(),
        auto_offset_reset="latest",
        fetch_max_wait_ms=5,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    await consumer.seek_to_end()
    for tp in consumer.assignment():
        await consumer.position(tp)
    ready.set()
    try:
        async with asyncio.timeout(600):
            while len(seen) < len(wanted):
                batch = await consumer.getmany(timeout_ms=100, max_records=5000)
                for record in (r for part in batch.values() for r in part):
                    status = codec.decode_status(codec.decode_event(record.value or b"").payload)
                    if status.code is StatusCode.ARCHIVED and status.document_id in wanted:
                        seen.setdefault(status.document_id, time.perf_counter())
    finally:
        await consumer.stop()


async def throughput(
    settings: KafkaSettings, docs: list[tuple[str, bytes]], pids: dict[str, int]
) -> dict[str, object]:
    seen: dict[str, float] = {}
    ready = asyncio.Event()
    rss: dict[str, list[float]] = {name: [] for name in pids}
    start = 0.0

    async def send() -> None:
        nonlocal start
        await ready.wait()
        producer = settings.producer()
        await producer.start()
        start = time.perf_counter()
        futures = []
        for i, (doc_id, record) in enumerate(docs):
            futures.append(
                await producer.send(settings.topics.submitted, record, key=doc_id.encode())
            )
            if i % 5000 == 4999:
                await asyncio.gather(*futures)
                futures = []
                for name, pid in pids.items():
                    rss[name].append(rss_mb(pid))
        await asyncio.gather(*futures)
        await producer.stop()

    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    await asyncio.gather(archived_watcher(settings, {d for d, _ in docs}, seen, ready), send())
    elapsed = max(seen.values()) - start
    for name, pid in pids.items():
        rss[name].append(rss_mb(pid))
    per_doc = {
        name: (cpu_seconds(pid) - cpu[name]) * 1000 / len(docs) for name, pid in pids.items()
    }
    return {"docs_per_s": len(docs) / elapsed, "elapsed": elapsed, "rss": rss, "cpu_ms": per_doc}


async def latency(
    settings: KafkaSettings, docs: list[tuple[str, bytes]], rate: float
) -> list[float]:
    seen: dict[str, float] = {}
    ready = asyncio.Event()
    sent_at: dict[str, float] = {}

    async def send() -> None:
        await ready.wait()
        producer = settings.producer(linger_ms=0)
        await producer.start()
        start = time.perf_counter()
        for i, (doc_id, record) in enumerate(docs):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            sent_at[doc_id] = time.perf_counter()
            await producer.send(settings.topics.submitted, record, key=doc_id.encode())
        await producer.stop()

    await asyncio.gather(archived_watcher(settings, {d for d, _ in docs}, seen, ready), send())
    return sorted((seen[d] - sent_at[d]) * 1000 for d in sent_at)


async def bare_round_trip(
    settings: KafkaSettings, size: int, rate: float, n: int, replication: int
) -> list[float]:
    """Milliseconds from produce to consume of single records sent at a steady ``rate``, on
    the bare broker (the floor under each of the pipeline's hops)."""
    topic = "bench.roundtrip"
    await ensure_topics(settings, [topic], partitions=1, replication=replication)
    consumer = AIOKafkaConsumer(
        topic, **settings.common(), auto_offset_reset="latest", fetch_max_wait_ms=5
    )
    producer = settings.producer(linger_ms=0)
    await consumer.start()
    await producer.start()
    await consumer.seek_to_end()
    for tp in consumer.assignment():
        await consumer.position(tp)
    sent: dict[bytes, float] = {}
    times: list[float] = []

    async def receive() -> None:
        while len(times) < n:
            for part in (await consumer.getmany(timeout_ms=100)).values():
                now = time.perf_counter()
                times.extend((now - sent[r.key]) * 1000 for r in part if r.key in sent)

    reader = asyncio.create_task(receive())
    value = os.urandom(size)
    start = time.perf_counter()
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        key = str(i).encode()
        sent[key] = time.perf_counter()
        await producer.send(topic, value, key=key)
    async with asyncio.timeout(60):
        await reader
    await producer.stop()
    await consumer.stop()
    return sorted(times)


async def bare_broker(settings: KafkaSettings, size: int, n: int, replication: int) -> float:
    topic = "bench.bare"
    await ensure_topics(settings, [topic], partitions=3, replication=replication)
    value = os.urandom(size)
    producer = settings.producer()
    consumer = AIOKafkaConsumer(
        topic,
        **settings.common(),
        auto_offset_reset="earliest",
        fetch_max_wait_ms=5,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await producer.start()
    await consumer.start()
    start = time.perf_counter()

    async def consume() -> None:
        got = 0
        while got < n:
            for part in (await consumer.getmany(timeout_ms=100, max_records=5000)).values():
                got += len(part)

    reader = asyncio.create_task(consume())
    futures = [await producer.send(topic, value, key=str(i).encode()) for i in range(n)]
    await asyncio.gather(*futures)
    await reader
    elapsed = time.perf_counter() - start
    await producer.stop()
    await consumer.stop()
    return n / elapsed


def crypto_in_process(
    docs: list[tuple[str, bytes]], verifier: Verifier, gateway: SigningKey, archiver: SigningKey
) -> float:
    """The cryptography both services do per document, in one process on one core: the
    gateway verifies and signs its receipt, the archiver verifies receipt and document
    again and signs ARCHIVED."""
    start = time.perf_counter()
    for _, record in docs:
        verdict = verifier.verify(record, now_ms())
        assert isinstance(verdict, Verified)
        doc_id = verdict.payload.document_id
        receipt = status_record(
            Status(doc_id, StatusCode.DELIVERED, "docbus.gateway", now_ms(),
                   event_digest=event_digest(record)),
            [gateway],
        )  # fmt: skip
        again = verifier.verify_delivered(record, receipt)
        assert isinstance(again, Verified), again
        status_record(Status(doc_id, StatusCode.ARCHIVED, "docbus.archiver", now_ms()), [archiver])
    return len(docs) / (time.perf_counter() - start)


@contextlib.contextmanager
def fresh_database(server: str | None) -> Iterator[str | None]:
    """A new, empty database on the PostgreSQL ``server`` (dropped afterwards), or None."""
    if server is None:
        yield None
        return
    import psycopg

    name = f"docbus_bench_{os.getpid()}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@dataclasses.dataclass(frozen=True)
class Bus:
    """Where the benchmark runs: the load client's settings, each principal's environment."""

    settings: KafkaSettings
    env: Callable[[str], dict[str, str]]
    replication: int
    name: str
    brokers: dict[str, int]  # name → pid, for CPU per document


@contextlib.contextmanager
def running_bus(cluster: Path | None) -> Iterator[Bus]:
    if cluster is None:
        with EmbeddedBroker() as broker:
            pids = {"broker": broker.pid} if broker.pid else {}
            yield Bus(broker.settings(), lambda _: broker.client_env(), 1, "embedded broker", pids)
        return
    kafka = KafkaCluster(cluster, "")
    yield Bus(
        kafka.settings("admin"),
        lambda principal: {**os.environ, **kafka.env(principal)},
        3,
        "three-broker Kafka cluster, SASL_SSL",
        {
            f"broker-{path.stem.removeprefix('kafka-')}": int(path.read_text())
            for path in sorted((cluster / "run").glob("kafka-*.pid"))
        },
    )


def serve(
    bus: Bus, principal: str, args: list[str], extra: dict[str, str]
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bus", "serve", *args],
        env={**bus.env(principal), **extra},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_services(
    bus: Bus, args: argparse.Namespace, pki: DevPki, keys: dict[str, tuple[Path, Path]],
    database: str | None, folder: Path,
) -> dict[str, subprocess.Popen[bytes]]:  # fmt: skip
    extra = (
        {} if args.fetch_wait_ms is None else {"DOCBUS_FETCH_MAX_WAIT_MS": str(args.fetch_wait_ms)}
    )
    trust = ["--trust", str(pki.trust_dir)]
    gk, gc = keys["docbus.gateway"]
    ak, ac = keys["docbus.archiver"]
    procs = {"gateway": serve(bus, "gateway", ["gateway", *trust, "--key", f"{gk},{gc}"], extra)}
    for i in range(args.archivers):
        store = ["--database", database] if database else []
        procs[f"archiver-{i}"] = serve(
            bus, "archiver",
            ["archiver", "--data-dir", str(folder / f"archive-{i}"), *store, *trust,
             "--key", f"{ak},{ac}"],
            extra,
        )  # fmt: skip
    return procs


@dataclasses.dataclass(frozen=True)
class BenchKeys:
    """A development PKI of the benchmark's own, the sender's keys and the services'."""

    folder: Path
    pki: DevPki
    sender: list[SigningKey]
    services: dict[str, tuple[Path, Path]]


def bench_keys(prefix: str) -> BenchKeys:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    pki = DevPki(folder / "pki")
    pki.init()
    sender = [
        SigningKey.load(r, *pki.issue(SENDER, c, KeyAlgorithm.ED25519))
        for r, c in ((Role.SIGNER, CertRole.SIGNER), (Role.AGENCY, CertRole.AGENCY))
    ]
    services = {
        name: pki.issue(name, CertRole.SERVICE, KeyAlgorithm.ED25519)
        for name in ("docbus.gateway", "docbus.archiver")
    }
    return BenchKeys(folder, pki, sender, services)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--archivers", type=int, default=1, help="archiver processes")
    parser.add_argument(
        "--fetch-wait-ms",
        type=int,
        help="the services' DOCBUS_FETCH_MAX_WAIT_MS (default: each service's own)",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="archive in a fresh database on this PostgreSQL server (default: SQLite)",
    )
    parser.add_argument(
        "--cluster",
        metavar="DIR",
        type=Path,
        help="run on the Kafka cluster `deploy/kafka/cluster up DIR` made (default: embedded)",
    )
    args = parser.parse_args()
    if args.archivers > 1 and not args.postgres:
        parser.error("several archivers share one PostgreSQL archive: give --postgres")
    return args


def main() -> None:
    args = arguments()
    keys = bench_keys("docbus-bench-")
    n_latency = int(args.latency_seconds * args.rate)
    print(f"signing {args.documents + n_latency} documents ...", flush=True)
    docs = make_documents(args.documents + n_latency, keys.sender)
    record_size = len(docs[0][1])

    with running_bus(args.cluster) as bus, fresh_database(args.postgres) as database:
        settings = bus.settings
        topics = all_topics(settings.topics, load_registry())
        asyncio.run(ensure_topics(settings, topics, 3, bus.replication))
        procs = start_services(bus, args, keys.pki, keys.services, database, keys.folder)
        pids = {**{n: p.pid for n, p in procs.items()}, **bus.brokers, "load client": os.getpid()}
        try:
            time.sleep(3)
            asyncio.run(throughput(settings, docs[:200], {}))  # warm up
            result = asyncio.run(throughput(settings, docs[200 : args.documents], pids))
            lat = asyncio.run(latency(settings, docs[args.documents :], args.rate))
        finally:
            for p in procs.values():
                p.terminate()
                p.wait(timeout=30)
        bare = asyncio.run(bare_broker(settings, record_size, args.documents, bus.replication))
        trip = asyncio.run(
            bare_round_trip(settings, record_size, args.rate, n_latency, bus.replication)
        )

    gateway = SigningKey.load(Role.SERVICE, *keys.services["docbus.gateway"])
    archiver = SigningKey.load(Role.SERVICE, *keys.services["docbus.archiver"])
    verifier = Verifier(TrustStore.load(keys.pki.trust_dir), registry=load_registry())
    crypto = statistics.median(
        crypto_in_process(docs[:2000], verifier, gateway, archiver) for _ in range(3)
    )
    store = f"PostgreSQL, {args.archivers} archiver(s)" if database else "SQLite, 1 archiver"
    print(f"broker                              {bus.name}")
    print(f"archive                             {store}")
    print(f"record size                         {record_size} bytes")
    report(args, result, lat, bare, trip, crypto)


def report(
    args: argparse.Namespace,
    result: dict[str, object],
    lat: list[float],
    bare: float,
    trip: list[float],
    crypto: float,
) -> None:
    p50 = statistics.median(lat)
    p99 = lat[int(len(lat) * 0.99) - 1]
    print(
        f"pipeline publish → ARCHIVED         {result['docs_per_s']:,.0f} documents/s "
        f"({args.documents - 200} documents in {result['elapsed']:.1f}s)"
    )
    print(f"latency at {args.rate:.0f}/s                  p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"                                    ({len(lat)} documents at a steady rate)")
    print(f"bare broker produce+consume         {bare:,.0f} records/s")
    print(
        f"bare broker round trip at {args.rate:.0f}/s     p50 {statistics.median(trip):.1f} ms, "
        f"p99 {trip[int(len(trip) * 0.99) - 1]:.1f} ms"
    )
    print(f"crypto in-process (verify 5 + sign 2) {crypto:,.0f} documents/s (one core)")
    cpu: dict[str, float] = result["cpu_ms"]  # type: ignore[assignment]
    print(
        f"CPU per document                    {sum(cpu.values()):.2f} ms: "
        + ", ".join(f"{name} {ms:.2f}" for name, ms in cpu.items())
    )
    for name, series in result["rss"].items():  # type: ignore[attr-defined]
        print(
            f"RSS {name:<9}                       " + " → ".join(f"{v:.0f}" for v in series) + " MB"
        )


if __name__ == "__main__":
    main()
