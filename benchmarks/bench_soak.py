"""A soak: a million documents through the pipeline on PostgreSQL (DESIGN §7, issue 20).

Run: python -m benchmarks.bench_soak --postgres URL [--cluster DIR] [--documents N]

Gateway and archiver run as ``docbus serve`` processes, archiving to a fresh database on
the PostgreSQL server at URL, on the Kafka cluster ``deploy/kafka/cluster up DIR`` made (or
the embedded broker, which keeps every record in memory: its own memory is no figure). The
documents go in rounds (100,000 by default), each signed before its clock starts; after each
round every docbus process is sampled from /proc: RSS, open file descriptors and CPU seconds
per document. Memory, descriptors and throughput should stay flat from round to round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg

from benchmarks.bench_pipeline import (
    RECIPIENT,
    SENDER,
    Bus,
    bench_keys,
    cpu_seconds,
    fresh_database,
    make_documents,
    rss_mb,
    running_bus,
    start_services,
    throughput,
)
from bus.kafka.topics import all_topics, ensure_topics
from bus.registry import load_registry
from bus.trust.signing import SigningKey


@dataclass(frozen=True)
class Sample:
    rss_mb: float
    fds: int
    cpu_s: float


def sample(pid: int) -> Sample:
    return Sample(rss_mb(pid), len(os.listdir(f"/proc/{pid}/fd")), cpu_seconds(pid))


def folder_mb(path: Path) -> float:
    """Disk used (blocks, not sizes: Kafka's index files are sparse, preallocated)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) / 2**20


def database_mb(url: str) -> float:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return (row[0] if row else 0) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--round", type=int, default=100_000, help="documents per round")
    parser.add_argument("--postgres", metavar="URL", required=True)
    parser.add_argument("--cluster", metavar="DIR", type=Path)
    args = parser.parse_args()
    args.archivers, args.fetch_wait_ms = 1, None

    keys = bench_keys("docbus-soak-")
    print(f"soak: {args.documents:,} documents {SENDER} → {RECIPIENT}, rounds of {args.round:,}")
    with running_bus(args.cluster) as bus, fresh_database(args.postgres) as database:
        assert database is not None
        topics = all_topics(bus.settings.topics, load_registry())
        asyncio.run(ensure_topics(bus.settings, topics, 3, bus.replication))
        procs = start_services(bus, args, keys.pki, keys.services, database, keys.folder)
        try:
            soak(args, bus, procs, database, keys.sender)
        finally:
            for p in procs.values():
                p.terminate()
                p.wait(timeout=60)


def soak(
    args: argparse.Namespace,
    bus: Bus,
    procs: dict[str, subprocess.Popen[bytes]],
    database: str,
    keys: list[SigningKey],
) -> None:
    pids = {name: p.pid for name, p in procs.items()}
    before = {name: sample(pid) for name, pid in pids.items()}
    print(f"broker: {bus.name}; archive: PostgreSQL")
    columns = "  ".join(f"{name[:10]:>10} MB  fds  ms/doc" for name in pids)
    print(f"  round  docs/s  {columns}  database MB  broker disk MB", flush=True)
    done = 0
    while done < args.documents:
        n = min(args.round, args.documents - done)
        docs = make_documents(n, keys)  # signed before the clock starts
        result = asyncio.run(throughput(bus.settings, docs, {}))
        done += n
        now = {name: sample(pid) for name, pid in pids.items()}
        cells = "  ".join(
            f"{now[name].rss_mb:13.0f}  {now[name].fds:3d}  "
            f"{(now[name].cpu_s - before[name].cpu_s) * 1000 / n:6.2f}"
            for name in pids
        )
        disk = folder_mb(args.cluster / "data") if args.cluster else float("nan")
        print(
            f"{done:>7,} {result['docs_per_s']:7,.0f}  {cells}  "
            f"{database_mb(database):11,.0f}  {disk:14,.0f}",
            flush=True,
        )
        before = now
        for name, p in procs.items():
            if p.poll() is not None:
                raise SystemExit(f"{name} exited with {p.returncode}")


if __name__ == "__main__":
    main()
