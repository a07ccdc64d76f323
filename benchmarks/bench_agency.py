"""Documents posted over HTTP to one agency node, on the embedded broker with every service
its own ``docbus`` process (gateway, archiver, one agency node per agency).

Measures, for documents posted to the ministry's node and addressed to Nghệ An:

- throughput: N documents posted by 64 concurrent clients, until the sender's node has
  seen every ARCHIVED and the recipient's node lists every document;
- latency at a steady rate: post → ARCHIVED seen by the sender's node, and post →
  listed by the recipient's node, p50 and p99;
- the CPU per document of every server process over the throughput run (from /proc): the
  broker, the gateway, the archiver, the sender's and the recipient's nodes, and the nodes
  no document is addressed to (Bắc Ninh's, in another jurisdiction; the Nghệ An
  department's, in the recipient's), each beside the sender node's;
- the sender node's RSS every 10,000 documents;
- beside them, bare Kafka produce → consume of the same number of records in the same run.

    python -m benchmarks.bench_agency [--count 5000] [--rate 100] [--seconds 30] [--rss 50000]
        [--status-partitions 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.bench_pipeline import cpu_seconds
from benchmarks.lean_http import LeanClient
from bus.demo.stack import MINISTRY, NGHE_AN, Stack, running
from bus.kafka.topics import ensure_topics

CONCURRENCY = 64


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Watch:
    """When the sender's node saw ARCHIVED, and the recipient's node listed, each document.

    Reads both nodes' SQLite files incrementally (by rowid), so that watching costs little
    beside what it measures."""

    def __init__(self, stack: Stack) -> None:
        self.outbox = sqlite3.connect(stack.node_dir(MINISTRY) / "outbox.sqlite")
        self.received = sqlite3.connect(stack.node_dir(NGHE_AN) / "received.sqlite")
        self.archived: dict[str, float] = {}
        self.listed: dict[str, float] = {}
        self.waiting: set[str] = set()
        self._status_row = 0
        self._received_row = 0

    def expect(self, document_id: str) -> None:
        self.waiting.add(document_id)
        self._settle(document_id)  # both may have been seen before the POST's answer

    def poll(self) -> None:
        now = time.perf_counter()
        for row, document_id in self.outbox.execute(
            "SELECT rowid, document_id FROM statuses WHERE rowid > ? AND code = 'ARCHIVED'",
            (self._status_row,),
        ):
            self.archived.setdefault(document_id, now)
            self._status_row = max(self._status_row, row)
            self._settle(document_id)
        for seq, document_id in self.received.execute(
            "SELECT seq, document_id FROM received WHERE seq > ?", (self._received_row,)
        ):
            self.listed.setdefault(document_id, now)
            self._received_row = max(self._received_row, seq)
            self._settle(document_id)

    def _settle(self, document_id: str) -> None:
        if document_id in self.archived and document_id in self.listed:
            self.waiting.discard(document_id)

    async def all_seen(self, interval: float) -> None:
        while True:
            self.poll()
            if not self.waiting:
                return
            await asyncio.sleep(interval)


async def post(client: LeanClient, i: int) -> tuple[str, float]:
    start = time.perf_counter()
    status, answer = await client.post_json(
        "/v1/documents", {"recipients": [NGHE_AN], "subject": f"Văn bản thử tải số {i}"}
    )
    if status != 202:
        raise RuntimeError(f"POST answered {status}: {answer}")
    return answer["document_id"], start


async def throughput(stack: Stack, client: LeanClient, count: int) -> float:
    watch = Watch(stack)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            document_id, _ = await post(client, queue.get_nowait())
            watch.expect(document_id)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    await watch.all_seen(0.05)
    return count / (time.perf_counter() - start)


async def latency(
    stack: Stack, client: LeanClient, rate: float, seconds: float
) -> tuple[list[float], list[float]]:
    watch = Watch(stack)
    started: dict[str, float] = {}
    tasks = []

    async def one(i: int) -> None:
        document_id, at = await post(client, i)
        started[document_id] = at
        watch.expect(document_id)

    async def watch_until_done() -> None:
        while len(started) < n:  # watch from the first post on, every 5 ms
            watch.poll()
            await asyncio.sleep(0.005)
        await watch.all_seen(0.005)

    n = int(rate * seconds)
    watching = asyncio.create_task(watch_until_done())
    begin = time.perf_counter()
    for i in range(n):
        delay = begin + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    await watching
    archived = [watch.archived[d] - t for d, t in started.items()]
    listed = [watch.listed[d] - t for d, t in started.items()]
    return archived, listed


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else 0.0


async def bare_kafka(stack: Stack, count: int) -> float:
    """Records/s of a bare produce (acks=all) then consume of ``count`` 2 KiB records."""
    settings = stack.settings
    await ensure_topics(settings, ["bench.bare"], partitions=3)
    producer = settings.producer()
    await producer.start()
    start = time.perf_counter()
    try:
        batch = [producer.send("bench.bare", b"x" * 2048, key=b"%d" % i) for i in range(count)]
        await asyncio.gather(*batch)
    finally:
        await producer.stop()
    consumer = settings.consumer("bench.bare.reader")
    consumer.subscribe(["bench.bare"])
    await consumer.start()
    seen = 0
    try:
        while seen < count:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                seen += len(records)
    finally:
        await consumer.stop()
    return count / (time.perf_counter() - start)


def report_cpu(pids: dict[str, int], before: dict[str, float], count: int) -> None:
    """Each process's CPU per document since ``before``, beside the sender node's."""
    spent = {name: (cpu_seconds(pid) - before[name]) * 1000 / count for name, pid in pids.items()}
    sender = spent[f"node-{MINISTRY}"]
    for name, ms in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"  {name:<28} {ms:6.2f} ms CPU/doc  {ms / sender:5.2f}× the sender node's")
    print(f"  {'all server processes':<28} {sum(spent.values()):6.2f} ms CPU/doc", flush=True)


async def measure(stack: Stack, args: argparse.Namespace) -> None:
    token = (stack.node_dir(MINISTRY) / "token").read_text().strip()
    async with LeanClient(stack.node_url(MINISTRY), token, CONCURRENCY) as client:
        sender = stack.processes[f"node-{MINISTRY}"].pid
        pids = {"broker": stack.broker.pid, **{n: p.pid for n, p in stack.processes.items()}}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        client_before = cpu_seconds(os.getpid())
        docs_per_s = await throughput(stack, client, args.count)
        print(f"throughput: {docs_per_s:.0f} documents/s over {args.count} documents", flush=True)
        report_cpu(pids, before, args.count)
        spent = (cpu_seconds(os.getpid()) - client_before) * 1000 / args.count
        print(f"  {'load client and watcher (not counted)':<28} {spent:6.2f} ms CPU/doc")
        bare = await bare_kafka(stack, args.count)
        print(f"bare Kafka produce+consume of as many 2 KiB records: {bare:.0f} records/s")
        archived, listed = await latency(stack, client, args.rate, args.seconds)
        print(
            f"latency at {args.rate:g}/s for {args.seconds:g}s: "
            f"→ ARCHIVED p50 {pct(archived, 50):.0f} ms p99 {pct(archived, 99):.0f} ms; "
            f"→ listed p50 {pct(listed, 50):.0f} ms p99 {pct(listed, 99):.0f} ms"
        )
        done = args.count + int(args.rate * args.seconds)
        print(f"sender node RSS after {done} documents: {rss_mib(sender):.0f} MiB")
        while done < args.rss:
            await throughput(stack, client, 10_000)
            done += 10_000
            print(f"sender node RSS after {done} documents: {rss_mib(sender):.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rss", type=int, default=0, help="go on to this many documents")
    parser.add_argument("--status-partitions", type=int, default=64)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="docbus-agency-bench-"))
    with running(folder, nodes=True, status_partitions=args.status_partitions) as stack:
        asyncio.run(measure(stack, args))


if __name__ == "__main__":
    main()
