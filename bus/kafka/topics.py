"""The topic names of DESIGN §8, and creating them."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bus.registry import Registry

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


async def ensure_topics(
    settings: KafkaSettings, names: Iterable[str], partitions: int = 3, replication: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    admin = settings.admin()
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in dict.fromkeys(names) if n not in existing]
        if missing:
            # another process may create them in the meantime
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(n, partitions, replication) for n in missing])
        return missing
    finally:
        await admin.close()
