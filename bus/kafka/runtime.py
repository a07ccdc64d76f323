"""The one consumer runtime every docbus reader shares (DESIGN §7).

A loop of: fetch a bounded batch → let the handler process it (its own durable writes
included) → publish the handler's outputs and wait for acks=all → commit the offsets.
Handler failures are retried with backoff while the partitions are paused; after
``max_attempts`` each record is tried alone and those that still fail go to the
rejected topic with the original key, value and headers and the error headers. Broker
failures while publishing or committing are ridden out: publishing is retried, a failed
commit only means the batch is seen again, and every sink is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeAlias

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from bus.kafka.clients import Client, KafkaSettings, connected, partitions_of
from bus.kafka.errors import TooLarge, classified
from bus.kafka.metrics import (
    BROKER_UP,
    LAG,
    RECORD_AGE,
    RECORDS_IN,
    Readiness,
    broker_fresh,
    count_outputs,
    ops_server,
)
from bus.kafka.topics import partition_of
from bus.settings import DEFAULT_BLOBS
from bus.store.blobs import BlobStore
from bus.wire.errors import BusError, DocbusError, Reason, classify
from bus.wire.headers import ERROR_PREFIX, KEPT_PREFIX, Headers, error_headers
from bus.wire.limits import MAX_MESSAGE_BYTES

log = structlog.get_logger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
#: How often a runtime that reads only others' records still commits how far it read.
COMMIT_IDLE_SECONDS = 5.0


@dataclass(frozen=True)
class Output:
    """A record the handler wants published once its batch is done."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers = field(default_factory=list)


@dataclass(frozen=True)
class Reject:
    """A record the handler refuses: it goes to the rejected topic, byte-identical."""

    record: Record
    reason: Reason
    message: str
    attempts: int = 1
    first_failure: datetime = field(default_factory=lambda: datetime.now(UTC))


Result = Output | Reject


def where(record: Record) -> dict[str, object]:
    """A record's place on the bus, for the log lines about it."""
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


class Stopped(Exception):
    """A stop was requested while a transient failure was being waited out."""


def transient(exc: BaseException) -> bool:
    """Whether a failure is the infrastructure's (retried for as long as it takes, never
    dead-lettered) rather than the record's, as the error model classifies it where it was
    raised (:mod:`bus.wire.errors`)."""
    classified = classify(exc)
    return classified is not None and classified.transient


class Handler(Protocol):
    """What a service plugs into the runtime."""

    stage: str

    async def handle(self, records: Sequence[Record]) -> Sequence[Result]:
        """Process a batch; durable writes must be done (and idempotent) before returning."""
        ...


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runtime: ConsumerRuntime) -> None:
        self.runtime = runtime

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.runtime.commit_pending()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        return None


class ConsumerRuntime:
    """Runs one handler over a consumer group.

    :param settings: how to reach Kafka.
    :param handler: the service logic.
    :param group_id: the consumer group.
    :param topics: topics to read, or
    :param pattern: a regular expression of topics to read (e.g. every delivery topic).
    :param max_records: the batch bound (memory stays bounded).
    :param max_attempts: handler attempts before records are rejected one by one.
    :param backoff: first and largest pause between attempts, in seconds.
    :param keep: where a record too large to publish is kept (its bytes, by SHA-256).
    :param max_refusals: publish attempts the broker refuses for good (an ACL) before the
        runtime stops with that error.
    :param audiences: read only the partitions where records keyed by these agency codes
        land, and hand the handler only records so keyed: a node's share of a topic keyed by
        whom each record is for (DESIGN §8). None reads every partition, every record.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        handler: Handler,
        group_id: str,
        topics: Sequence[str] = (),
        pattern: str | None = None,
        max_records: int = 500,
        max_attempts: int = 5,
        backoff: tuple[float, float] = (0.05, 5.0),
        consumer_overrides: dict[str, Any] | None = None,
        keep: BlobStore | None = None,
        max_refusals: int = 10,
        audiences: Iterable[str] | None = None,
    ) -> None:
        if not topics and pattern is None:
            raise ValueError("give topics or a pattern")
        self.settings = settings
        self.handler = handler
        self.group_id = group_id
        self.topics = list(topics)
        self.pattern = pattern
        self.max_records = max_records
        self.max_attempts = max_attempts
        self.backoff = backoff
        self._consumer_overrides = consumer_overrides or {}
        #: Where a record too large for any topic is kept whole (DOCBUS_BLOB_DIR's store).
        self.keep = keep or BlobStore(DEFAULT_BLOBS)
        #: How often a refusal no retry cures is tried before the service stops with it.
        self.max_refusals = max_refusals
        self._largest = MAX_MESSAGE_BYTES
        self._stopping = asyncio.Event()
        self.started = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._pending: dict[TopicPartition, int] = {}
        self.processed = 0
        #: When the broker last answered this runtime's check (monotonic), for readiness.
        self.broker_seen: float | None = None
        #: Whether the broker refuses this runtime's outputs now (an ACL it lacks, a topic
        #: that is gone): the batch is retried, and meanwhile it is not ready.
        self.publish_failing = False
        self.audiences = None if audiences is None else frozenset(a.encode() for a in audiences)
        self._counts: dict[str, int] = {}
        self._committed_at = 0.0

    def follow(self, topics: Sequence[str]) -> None:
        """Consume ``topics`` from now on (the directory moved this consumer's jurisdiction):
        the group rebalances, what is done is committed first, and a topic it keeps carries
        on from its committed offsets."""
        if self.pattern is not None or list(topics) == self.topics:
            return
        self.topics = list(topics)
        if self._consumer is not None:
            self._consumer.subscribe(self.topics, listener=_CommitOnRevoke(self))
        log.info("following", stage=self.handler.stage, topics=self.topics)

    def narrow(self, audiences: Iterable[str]) -> None:
        """Read for ``audiences`` from now on (the directory named new predecessors)."""
        self.audiences = frozenset(a.encode() for a in audiences)
        if self._consumer is not None and self._counts:
            self._consumer.assign(self._share())
        log.info("reading for", stage=self.handler.stage, audiences=sorted(self.audiences))

    def _share(self) -> list[TopicPartition]:
        keys = self.audiences or frozenset()
        return sorted(
            {TopicPartition(t, partition_of(k, n)) for t, n in self._counts.items() for k in keys}
        )

    async def _assign(self, consumer: AIOKafkaConsumer) -> bool:
        """Assign the partitions the audiences' keys land on, once every topic exists; False
        if a stop is requested first."""
        while not self._stopping.is_set():
            found = await partitions_of(consumer, self.topics)
            if len(found) == len(self.topics):
                self._counts = {topic: len(parts) for topic, parts in found.items()}
                consumer.assign(self._share())
                return True
            log.info("waiting for topics", stage=self.handler.stage, topics=self.topics)
            await self._sleep(1.0)
        return False

    def request_stop(self) -> None:
        """Finish the batch in hand, commit, and close."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until :meth:`request_stop`; a broker that is not up yet is waited for."""
        async with contextlib.AsyncExitStack() as stack:
            producer = await self._connect(self.settings.producer, stack)
            if producer is None:
                return  # stopped before the broker came up
            consumer = await self._connect(self._subscribed, stack)
            if consumer is None or (
                self.audiences is not None and not await self._assign(consumer)
            ):
                return
            self._consumer = consumer
            stack.push_async_callback(self._closing)
            watching = asyncio.create_task(self._watch(consumer))
            stack.callback(watching.cancel)
            self.started.set()
            stage = self.handler.stage
            log.info("consuming", stage=stage, group=self.group_id)
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=self.max_records)
                records = [r for part in batch.values() for r in part]
                if not records:
                    continue
                for tp, part in batch.items():
                    RECORDS_IN.labels(stage, tp.topic).inc(len(part))
                mine = records if self.audiences is None else self._for_us(records)
                try:
                    await self._publish(
                        producer, await self._handle(consumer, mine) if mine else []
                    )
                except Stopped:
                    break
                for tp, part in batch.items():
                    self._pending[tp] = part[-1].offset + 1
                self.processed += len(mine)
                if mine or time.monotonic() - self._committed_at > COMMIT_IDLE_SECONDS:
                    await self.commit_pending()
                now = time.time()
                latency = RECORD_AGE.labels(stage)
                for r in mine:
                    latency.observe(max(0.0, now - r.timestamp / 1000))

    def _for_us(self, records: list[Record]) -> list[Record]:
        """The records keyed for our audiences. Skipping by the unsigned key is safe: a
        genuine record for us is keyed so by its genuine writer, and a copy someone writes
        under another key takes nothing away from it (DESIGN §8)."""
        return [r for r in records if r.key in (self.audiences or ())]

    async def _watch(self, consumer: AIOKafkaConsumer, every: float = 5.0) -> None:
        """Every few seconds: does the broker answer (readiness), and how far behind the end
        of each assigned partition is what this group committed (lag)."""
        stage = self.handler.stage
        while True:
            try:
                await asyncio.wait_for(consumer.topics(), every)  # a metadata round trip
            except (KafkaError, TimeoutError, OSError):
                BROKER_UP.labels(stage).set(0)
            else:
                self.broker_seen = time.monotonic()
                BROKER_UP.labels(stage).set(1)
                with contextlib.suppress(KafkaError, TimeoutError, OSError):  # lag: next round
                    async with asyncio.timeout(every):
                        await self._measure_lag(consumer)
            await asyncio.sleep(every)

    async def _measure_lag(self, consumer: AIOKafkaConsumer) -> None:
        assigned = list(consumer.assignment())
        ends = await consumer.end_offsets(assigned)
        for tp in assigned:
            committed = await consumer.committed(tp)
            LAG.labels(self.handler.stage, tp.topic, str(tp.partition)).set(
                max(0, ends.get(tp, 0) - (committed or 0))
            )

    def _subscribed(self) -> AIOKafkaConsumer:
        consumer = self.settings.consumer(self.group_id, **self._consumer_overrides)
        if self.audiences is not None:
            return consumer  # its share is assigned once the topics' partitions are known
        listener = _CommitOnRevoke(self)
        if self.pattern is not None:
            consumer.subscribe(pattern=self.pattern, listener=listener)
        else:
            consumer.subscribe(self.topics, listener=listener)
        return consumer

    async def _connect(
        self, make: Callable[[], Client], stack: contextlib.AsyncExitStack
    ) -> Client | None:
        """A started client (waiting while the broker is down), stopped on exit; None if a
        stop is requested first."""
        client = await connected(self.settings, make, self._stopping, self.handler.stage)
        if client is not None:
            stack.push_async_callback(client.stop)
        return client

    async def _closing(self) -> None:
        """Before the clients stop: commit what is done (aiokafka's stop() does not call the
        rebalance listener)."""
        await self.commit_pending()
        self._consumer = None
        log.info("stopped", stage=self.handler.stage, processed=self.processed)

    async def commit_pending(self) -> None:
        """Commit what has been processed and published; a failure only means re-delivery."""
        consumer, pending = self._consumer, dict(self._pending)
        if consumer is None or not pending:
            return
        # Partitions revoked meanwhile are another member's now: committing them would fail
        # (IllegalStateError) on every later commit; their records are re-delivered there.
        owned = consumer.assignment()
        for tp in [tp for tp in pending if tp not in owned]:
            del pending[tp]
            self._pending.pop(tp, None)
        if not pending:
            return
        try:
            await consumer.commit(pending)
        except KafkaError as exc:
            log.warning("commit failed; the batch will be seen again", error=repr(exc))
            return
        self._committed_at = time.monotonic()
        for tp, offset in pending.items():
            if self._pending.get(tp) == offset:
                del self._pending[tp]

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when a stop is requested."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _pause(self, attempt: int) -> float:
        first, most = self.backoff
        return float(min(most, first * 2 ** (attempt - 1)))

    async def _handle(self, consumer: AIOKafkaConsumer, records: list[Record]) -> list[Result]:
        first_failure: datetime | None = None
        error: Exception | None = None
        attempt = waits = 0
        while attempt < self.max_attempts:
            try:
                return list(await self.handler.handle(records))
            except Exception as exc:  # retried; then, unless transient, isolated per record
                error, first_failure = exc, first_failure or datetime.now(UTC)
                failing = transient(exc)
                if failing:
                    waits += 1
                else:
                    attempt += 1
                log.warning(
                    "batch failed",
                    stage=self.handler.stage,
                    attempt=attempt,
                    transient=failing,
                    error=repr(exc),
                )
                if failing and self._stopping.is_set():
                    raise Stopped from exc  # the batch stays uncommitted: seen again later
                if failing or attempt < self.max_attempts:
                    paused = consumer.assignment()
                    consumer.pause(*paused)
                    jitter = random.uniform(0.8, 1.2)
                    await self._sleep(self._pause(waits if failing else attempt) * jitter)
                    consumer.resume(*paused)
        assert error is not None and first_failure is not None
        results: list[Result] = []
        for record in records:
            try:
                results.extend(await self.handler.handle([record]))
            except Exception as exc:  # this record alone fails: it is rejected, not lost
                if transient(exc):
                    raise  # the infrastructure, not the record: never dead-lettered
                reason = exc.reason if isinstance(exc, DocbusError) else Reason.MALFORMED
                results.append(
                    Reject(record, reason, repr(exc), self.max_attempts + 1, first_failure)
                )
        return results

    def _to_output(self, result: Result) -> Output:
        if isinstance(result, Output):
            return result
        r = result.record
        # Every refusal, whichever service made it, is said once with its reason.
        log.warning(
            "rejected",
            stage=self.handler.stage,
            reason=result.reason.value,
            message=result.message,
            document_id=(r.key or b"").decode("utf-8", "replace") or None,
            **where(r),
        )
        return Output(
            topic=self.settings.topics.rejected,
            key=r.key,
            value=r.value or b"",
            headers=[
                *r.headers,
                *error_headers(
                    result.reason.value,
                    self.handler.stage,
                    r.topic,
                    r.partition,
                    r.offset,
                    result.message,
                    result.attempts,
                    result.first_failure,
                ),
            ],
        )

    async def _publish(self, producer: AIOKafkaProducer, results: list[Result]) -> None:
        """Publish a batch's outputs and wait for acks=all. What the broker cannot take now
        is retried for as long as it takes; a record too large for it is kept whole and
        named on the rejected topic instead; a refusal no retry can cure (an ACL this
        principal lacks) is retried a bounded number of times, not ready meanwhile, and
        then stops the service with that error: its batch stays uncommitted, nothing lost."""
        outputs = [await self._fitted(self._to_output(r)) for r in results]
        attempt = refusals = 0
        while outputs:
            failures = await self._send_all(producer, outputs)
            if not failures:
                self.publish_failing = False
                count_outputs(
                    self.handler.stage,
                    [o.topic for o in outputs],
                    [r.reason.value for r in results if isinstance(r, Reject)],
                )
                return
            attempt += 1
            self.publish_failing = True
            error = failures[0][1]
            log.warning("publish failed; retrying", attempt=attempt, error=str(error))
            if isinstance(error, TooLarge):
                outputs = [
                    await self._kept(o, str(e)) if isinstance(e, TooLarge) else o
                    for o, e in failures
                ]
                continue
            if not error.transient:
                refusals += 1
                if refusals >= self.max_refusals:
                    raise error
            if self._stopping.is_set():
                raise Stopped from error  # not committed: the batch is seen again
            outputs = [o for o, _ in failures]
            await self._sleep(self._pause(attempt))

    async def _send_all(
        self, producer: AIOKafkaProducer, outputs: list[Output]
    ) -> list[tuple[Output, BusError]]:
        """Send every output; those that failed, each with its classified error."""
        pending: list[tuple[Output, asyncio.Future[Any] | BusError]] = []
        for o in outputs:
            try:
                pending.append(
                    (o, await producer.send(o.topic, o.value, key=o.key, headers=o.headers))
                )
            except Exception as exc:
                pending.append((o, _failure(exc)))
        failed: list[tuple[Output, BusError]] = []
        for o, sent in pending:
            if isinstance(sent, BusError):
                failed.append((o, sent))
                continue
            try:
                await sent
            except Exception as exc:
                failed.append((o, _failure(exc)))
        return failed

    async def _fitted(self, output: Output) -> Output:
        """The output, or if it can never fit a record, the record that names it kept."""
        size = (
            len(output.value)
            + len(output.key or b"")
            + sum(len(k) + len(v) for k, v in output.headers)
        )
        if size + _RECORD_OVERHEAD <= self._largest:
            return output
        return await self._kept(output, f"{size} bytes, over the {self._largest}-byte limit")

    async def _kept(self, output: Output, why: str) -> Output:
        """A record too large for any topic, kept whole in the blob store (its exact bytes,
        so nothing is lost and signatures still verify there); the rejected topic gets a
        small record that names it by SHA-256, with the reason."""
        digest = await asyncio.to_thread(self.keep.put_bytes, output.value)
        log.warning(
            "kept in the blob store: too large to publish",
            sha256=digest,
            topic=output.topic,
            why=why,
        )
        headers = [(k, v) for k, v in output.headers if k != ERROR_PREFIX + "reason"]
        return Output(
            topic=self.settings.topics.rejected,
            key=output.key,
            value=b"",
            headers=[
                *headers,
                (ERROR_PREFIX + "reason", Reason.TOO_LARGE.value.encode()),
                (KEPT_PREFIX + "sha256", digest.encode()),
                (KEPT_PREFIX + "size", str(len(output.value)).encode()),
                (KEPT_PREFIX + "topic", output.topic.encode()),
            ],
        )


#: What a record costs in a batch beyond its key, value and headers (framing, varints).
_RECORD_OVERHEAD = 1024


def _failure(exc: BaseException) -> BusError:
    """A send's failure classified (a bug in a send is no record's fault: it is raised)."""
    error = classified(exc)
    if error is None:
        raise exc
    return error


async def run_until_signalled(runtimes: Sequence[ConsumerRuntime], deadline: float = 30.0) -> None:
    """Run runtimes until SIGTERM or SIGINT, then stop them gracefully within ``deadline``."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(r.run()) for r in runtimes]
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for r in runtimes:
        r.request_stop()
    _, late = await asyncio.wait(tasks, timeout=deadline)
    for t in late:
        t.cancel()
    waiter.cancel()
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]


async def serve_with_ops(
    runtimes: Sequence[ConsumerRuntime],
    listen: str | None,
    checks: Sequence[tuple[str, Callable[[], bool]]] = (),
) -> None:
    """Run a service's runtimes until signalled and, with ``listen``, its ops endpoints
    (DESIGN §10): ready while every runtime sees the broker and every check passes."""
    if listen is None:
        await run_until_signalled(runtimes)
        return
    readiness = Readiness()
    for runtime in runtimes:
        readiness.add(f"broker ({runtime.group_id})", broker_fresh(seen_by(runtime)))
        readiness.add(f"publishing ({runtime.group_id})", publishing(runtime))
    for name, check in checks:
        readiness.add(name, check)
    server = ops_server(listen, readiness)
    serving = asyncio.create_task(server.serve())
    try:
        await run_until_signalled(runtimes)
    finally:
        server.should_exit = True
        await serving


def publishing(runtime: ConsumerRuntime) -> Callable[[], bool]:
    """A readiness check: the broker takes ``runtime``'s outputs."""
    return lambda: not runtime.publish_failing


def seen_by(runtime: ConsumerRuntime) -> Callable[[], float | None]:
    """When the broker last answered ``runtime`` (for :func:`~bus.kafka.metrics.broker_fresh`)."""
    return lambda: runtime.broker_seen
