"""Kafka client wiring: connection settings (TLS, SASL), topic names, client factories."""

from __future__ import annotations

import contextlib
import os
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

DEFAULT_PREFIX = "docbus"
MAX_RECORD_BYTES = 16 * 1024 * 1024


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

    def deliver(self, jurisdiction: str) -> str:
        return f"{self.prefix}.deliver.{jurisdiction}"

    @property
    def deliver_pattern(self) -> str:
        return "^" + re.escape(self.prefix) + r"\.deliver\..+"


@dataclass(frozen=True)
class KafkaSettings:
    """How every docbus client reaches Kafka.

    ``security_protocol`` is PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; SASL mechanisms
    are those aiokafka supports (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).
    """

    bootstrap: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    topics: Topics = field(default_factory=Topics)
    # Tansu lets a consumer group settle for about half the session timeout, so the
    # embedded broker is run with a short one; real Kafka keeps aiokafka's default.
    session_timeout_ms: int = 10000

    @classmethod
    def from_env(cls, bootstrap: str | None = None) -> KafkaSettings:
        """Settings from ``DOCBUS_*`` variables; ``bootstrap`` wins over DOCBUS_BOOTSTRAP."""
        env = os.environ
        chosen = bootstrap or env.get("DOCBUS_BOOTSTRAP")
        if not chosen:
            raise ValueError("no broker: pass --bootstrap HOST:PORT or set DOCBUS_BOOTSTRAP")
        return cls(
            bootstrap=chosen,
            security_protocol=env.get("DOCBUS_SECURITY_PROTOCOL", "PLAINTEXT"),
            sasl_mechanism=env.get("DOCBUS_SASL_MECHANISM"),
            sasl_username=env.get("DOCBUS_SASL_USERNAME"),
            sasl_password=env.get("DOCBUS_SASL_PASSWORD"),
            ssl_cafile=env.get("DOCBUS_SSL_CAFILE"),
            ssl_certfile=env.get("DOCBUS_SSL_CERTFILE"),
            ssl_keyfile=env.get("DOCBUS_SSL_KEYFILE"),
            topics=Topics(env.get("DOCBUS_TOPIC_PREFIX", DEFAULT_PREFIX)),
            session_timeout_ms=int(env.get("DOCBUS_SESSION_TIMEOUT_MS", "10000")),
        )

    def common(self) -> dict[str, Any]:
        """Connection arguments shared by producers, consumers and the admin client."""
        args: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
        }
        if "SSL" in self.security_protocol:
            context = ssl.create_default_context(cafile=self.ssl_cafile)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            args["ssl_context"] = context
        if self.security_protocol.startswith("SASL"):
            args["sasl_mechanism"] = self.sasl_mechanism or "SCRAM-SHA-512"
            args["sasl_plain_username"] = self.sasl_username
            args["sasl_plain_password"] = self.sasl_password
        return args

    def producer(self, **overrides: Any) -> AIOKafkaProducer:
        """A producer with acks=all and batches large enough for documents."""
        args = {
            **self.common(),
            "acks": "all",
            "linger_ms": 5,
            "max_batch_size": 1024 * 1024,
            "max_request_size": MAX_RECORD_BYTES,
            "request_timeout_ms": 30000,
            **overrides,
        }
        return AIOKafkaProducer(**args)

    def consumer(self, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
        """A consumer that commits by hand, starts at the earliest offset, fetches promptly."""
        args = {
            **self.common(),
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "fetch_max_wait_ms": 10,
            "max_partition_fetch_bytes": MAX_RECORD_BYTES,
            "fetch_max_bytes": 4 * MAX_RECORD_BYTES,
            "metadata_max_age_ms": 5000,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": max(100, self.session_timeout_ms // 5),
            **overrides,
        }
        return AIOKafkaConsumer(**args)

    def admin(self) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(**self.common())


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
