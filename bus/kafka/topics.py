"""The topic names of DESIGN §8, creating them, and checking what the broker has."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.partitioner import murmur2

from bus.registry import Registry
from bus.wire.limits import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from bus.kafka.clients import KafkaSettings

DEFAULT_PREFIX = "docbus"


@dataclass(frozen=True)
class Topics:
    """The topic names of DESIGN §8 under a configurable prefix."""

    prefix: str = DEFAULT_PREFIX

    @property
    def submitted(self) -> str:
        return f"{self.prefix}.submitted"

    @property
    def status(self) -> str:
        return f"{self.prefix}.status"

    @property
    def rejected(self) -> str:
        return f"{self.prefix}.rejected"

    @property
    def checkpoints(self) -> str:
        return f"{self.prefix}.checkpoints"

    @property
    def directory(self) -> str:
        return f"{self.prefix}.directory"

    def deliver(self, jurisdiction: str) -> str:
        return f"{self.prefix}.deliver.{jurisdiction}"

    @property
    def deliver_pattern(self) -> str:
        return "^" + re.escape(self.prefix) + r"\.deliver\..+"


def all_topics(topics: Topics, registry: Registry, on: date | None = None) -> list[str]:
    """The fixed topics and one delivery topic per jurisdiction in force on ``on``."""
    day = on or date.today()
    jurisdictions = sorted(
        {registry.resolve(a.code, day).jurisdiction.id for a in registry.in_force(day)}
    )
    fixed = [topics.submitted, topics.status, topics.rejected, topics.checkpoints, topics.directory]
    return [*fixed, *map(topics.deliver, jurisdictions)]


def topic_configs(name: str, replication: int = 1) -> dict[str, str]:
    """DESIGN §8's configs: records as large as the one size limit allows, kept for as long
    as the archive must be replayable (``submitted`` alone may expire), and acknowledged by
    two replicas where there are three (one may be down, none may be lost)."""
    configs = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
    if not name.endswith(".submitted"):
        configs["retention.ms"] = "-1"
    if name.endswith(".directory"):  # each version kept under its own key (DESIGN §13)
        configs["cleanup.policy"] = "compact"
    if replication >= 3:
        configs["min.insync.replicas"] = "2"
    return configs


@dataclass(frozen=True)
class Difference:
    """What a topic has that DESIGN §8 says otherwise."""

    topic: str
    what: str
    expected: str
    found: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.what} is {self.found}, expected {self.expected}"


async def check_topics(
    settings: KafkaSettings,
    names: Iterable[str],
    partitions: int = 3,
    replication: int = 1,
    status_partitions: int | None = None,
) -> list[Difference]:
    """Every way the broker's topics differ from DESIGN §8: missing topics, too few
    partitions or replicas, configs other than :func:`topic_configs`."""
    wanted = list(dict.fromkeys(names))
    admin = settings.admin()
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        found = [n for n in wanted if n in existing]
        differences = [
            Difference(n, "topic", "present", "missing") for n in wanted if n not in existing
        ]
        if not found:
            return differences
        described = await admin.describe_topics(found)
        for topic in described:
            parts = topic["partitions"]
            name = topic["topic"]
            count = partitions_for(name, partitions, status_partitions)
            if len(parts) < count:
                differences.append(Difference(name, "partitions", str(count), str(len(parts))))
            replicas = min((len(p["replicas"]) for p in parts), default=0)
            if replicas < replication:
                differences.append(Difference(name, "replicas", str(replication), str(replicas)))
        resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in found]
        for response in await admin.describe_configs(resources):
            for _code, _message, _kind, name, entries in response.resources:
                have = {entry[0]: entry[1] for entry in entries}
                for key, value in topic_configs(name, replication).items():
                    if have.get(key) != value:
                        differences.append(
                            Difference(name, key, value, str(have.get(key, "unset")))
                        )
        return differences
    finally:
        await admin.close()


def partition_of(key: bytes, count: int) -> int:
    """The partition a record keyed ``key`` goes to among ``count``: Kafka's default
    partitioner for keyed records (murmur2, as the Java client and aiokafka's producer)."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % count


def partitions_for(name: str, partitions: int, status_partitions: int | None = None) -> int:
    """The directory's topic has one partition, so its parts come before their manifest;
    the status topic has ``status_partitions`` (default ``partitions``): each node reads
    one of them (DESIGN §8), so more partitions, less read by each."""
    if name.endswith(".directory"):
        return 1
    if name.endswith(".status") and status_partitions is not None:
        return status_partitions
    return partitions


async def ensure_topics(
    settings: KafkaSettings,
    names: Iterable[str],
    partitions: int = 3,
    replication: int = 1,
    status_partitions: int | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created.

    Raises the broker's error (a KafkaError subclass, ``retriable`` when worth retrying)
    for the first topic it refused; one that another process created meanwhile is fine.
    """
    admin = settings.admin()
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in dict.fromkeys(names) if n not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [
                NewTopic(
                    n,
                    partitions_for(n, partitions, status_partitions),
                    replication,
                    topic_configs=topic_configs(n, replication),
                )
                for n in missing
            ]
        )
        # aiokafka returns per-topic error codes rather than raising: read them.
        for name, code, message in response.topic_errors:
            error = for_code(code)
            if code and error is not TopicAlreadyExistsError:
                raise error(f"topic {name}: {message or error.__name__}")
        return missing
    finally:
        await admin.close()
