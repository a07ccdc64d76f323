"""The topic names of DESIGN §8, and creating them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

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
    fixed = [topics.submitted, topics.status, topics.rejected, topics.checkpoints]
    return [*fixed, *map(topics.deliver, jurisdictions)]


def topic_configs(name: str) -> dict[str, str]:
    """DESIGN §8's configs: records as large as the one size limit allows, and kept for
    as long as the archive must be replayable (``submitted`` alone may expire)."""
    configs = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
    if not name.endswith(".submitted"):
        configs["retention.ms"] = "-1"
    return configs


async def ensure_topics(
    settings: KafkaSettings, names: Iterable[str], partitions: int = 3, replication: int = 1
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
            [NewTopic(n, partitions, replication, topic_configs=topic_configs(n)) for n in missing]
        )
        # aiokafka returns per-topic error codes rather than raising: read them.
        for name, code, message in response.topic_errors:
            error = for_code(code)
            if code and error is not TopicAlreadyExistsError:
                raise error(f"topic {name}: {message or error.__name__}")
        return missing
    finally:
        await admin.close()
