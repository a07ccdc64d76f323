"""How every docbus client reaches Kafka: connection settings (TLS, SASL) and client factories."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.transaction import InitProducerIdRequest
from pydantic import SecretStr

from bus.kafka.errors import LOGIN_REFUSED, classified, scram_refused
from bus.kafka.topics import Topics
from bus.settings import Settings, SettingsError
from bus.wire.errors import Misconfigured, Unavailable
from bus.wire.limits import MAX_MESSAGE_BYTES

log = structlog.get_logger(__name__)

#: An idle consumer's fetch wait. Kafka answers a waiting fetch as soon as data arrives,
#: so it costs no latency there, only how often an idle consumer asks; the embedded broker
#: answers at the deadline, so each hop may add up to this much. The gateway and the
#: archiver, where a document's latency is made, ask more often (issue 14's p99 target).
FETCH_WAIT_MS = 100
PIPELINE_FETCH_WAIT_MS = 20

_REFUSED = (
    "the broker refused this client's certificate or wants one: check DOCBUS_SSL_CERTFILE "
    "and DOCBUS_SSL_KEYFILE"
)


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
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    topics: Topics = field(default_factory=Topics)
    # Tansu lets a consumer group settle for about half the session timeout, so the
    # embedded broker is run with a short one; real Kafka keeps aiokafka's default.
    session_timeout_ms: int = 10000
    fetch_max_wait_ms: int = FETCH_WAIT_MS

    @classmethod
    def from_settings(
        cls, settings: Settings, bootstrap: str | None = None, fetch_wait_ms: int = FETCH_WAIT_MS
    ) -> KafkaSettings:
        """Client settings from the one settings object; ``bootstrap`` (the option) wins,
        and ``fetch_wait_ms`` is this service's fetch wait unless the settings set one."""
        chosen = bootstrap or settings.bootstrap
        if not chosen:
            raise SettingsError("no broker: pass --bootstrap HOST:PORT or set DOCBUS_BOOTSTRAP")
        password = settings.sasl_password
        if password is None and settings.sasl_password_file is not None:
            # A mounted secret (compose, Kubernetes): one trailing newline is not part of it.
            text = settings.sasl_password_file.read_text("utf-8").removesuffix("\n")
            password = SecretStr(text)
        return cls(
            bootstrap=chosen,
            security_protocol=settings.security_protocol,
            sasl_mechanism=settings.sasl_mechanism,
            sasl_username=settings.sasl_username,
            sasl_password=None if password is None else password.get_secret_value(),
            ssl_cafile=_text(settings.ssl_cafile),
            ssl_certfile=_text(settings.ssl_certfile),
            ssl_keyfile=_text(settings.ssl_keyfile),
            topics=Topics(settings.topic_prefix),
            session_timeout_ms=settings.session_timeout_ms,
            fetch_max_wait_ms=settings.fetch_max_wait_ms or fetch_wait_ms,
        )

    def tls_problem(self, timeout: float = 3.0) -> str | None:
        """Why a TLS connection to the first bootstrap broker fails, if it is TLS that
        fails: a certificate this client does not trust, or a client certificate the broker
        wants and did not get. None when TLS is not used, or works, or nothing answers.

        aiokafka only says "Unable to bootstrap"; this tells a user what to fix."""
        if "SSL" not in self.security_protocol:
            return None
        host, _, port = self.bootstrap.split(",")[0].strip().rpartition(":")
        try:
            context = self.ssl_context()
            with (
                socket.create_connection((host, int(port)), timeout=timeout) as raw,
                context.wrap_socket(raw, server_hostname=host) as tls,
            ):
                tls.settimeout(timeout)
                # TLS 1.3: a refusal of our certificate comes after the handshake, as an
                # alert or a close; a broker that accepts us waits for a request instead.
                if tls.recv(1) == b"":
                    return _REFUSED
        except ssl.SSLCertVerificationError as exc:
            return (
                f"the broker's certificate is not trusted ({exc.verify_message}): check "
                "DOCBUS_SSL_CAFILE"
            )
        except ssl.SSLError as exc:
            # OpenSSL's alert names: Python's own server, and Java's (Kafka's) with no client
            # certificate or one it does not trust.
            if any(a in str(exc) for a in ("CERTIFICATE_REQUIRED", "UNKNOWN_CA", "BAD_CERT")):
                return _REFUSED
            return f"TLS with the broker failed: {exc.reason or exc}"
        except (OSError, ValueError):
            return None  # nothing answers (or it is not TLS): the broker is unavailable
        return None

    async def setup_problem(self) -> str | None:
        """Why this client, not the broker, is at fault when connecting fails (its TLS or
        its login, as :meth:`tls_problem` and :meth:`login_problem` tell); None when the
        broker is simply unavailable."""
        tls = await asyncio.to_thread(self.tls_problem)
        return tls or await self._login_problem(5.0)

    def login_problem(self, timeout: float = 5.0) -> str | None:
        """Why the first bootstrap broker answers and still gives this client no session:
        its SASL login refused, a mechanism it does not offer, or (with no SASL set) a
        listener that closes on a client that has not logged in, as Kafka's SASL ones do.
        None when it works or nothing answers.

        aiokafka tries every bootstrap broker and only says "Unable to bootstrap", which
        reads as "try again later" (exit 75); a wrong password never gets better."""
        return asyncio.run(self._login_problem(timeout))

    async def _login_problem(self, seconds: float) -> str | None:
        host, _, port = self.bootstrap.split(",")[0].strip().rpartition(":")
        args = {k: v for k, v in self.common().items() if k != "bootstrap_servers"}
        sasl = self.security_protocol.startswith("SASL")
        try:
            async with asyncio.timeout(seconds):
                conn = await create_conn(host, int(port), **args)
        except SaslAuthenticationFailed as exc:
            return f"{LOGIN_REFUSED}; the broker said: {exc}"
        except UnsupportedSaslMechanismError:
            return (
                f"the broker does not offer SASL {args.get('sasl_mechanism')}: check "
                "DOCBUS_SASL_MECHANISM"
            )
        except KeyError as exc:
            return LOGIN_REFUSED if scram_refused(exc) else None
        except (KafkaError, OSError, TimeoutError, ValueError):
            return None
        try:
            async with asyncio.timeout(seconds):
                await conn.send(MetadataRequest([]))
        except (KafkaError, OSError, TimeoutError):
            if not sasl:  # it answered ApiVersions, then hung up on the first real request
                return (
                    "the broker closed the connection at the first request: its listener "
                    "wants a SASL login (DOCBUS_SECURITY_PROTOCOL=SASL_SSL, "
                    "DOCBUS_SASL_USERNAME, DOCBUS_SASL_PASSWORD)"
                )
        finally:
            conn.close()
        return None

    async def learn_idempotence(self, seconds: float = 10.0) -> bool:
        """Whether the broker gives out producer ids, asked once and remembered: Kafka
        does, so producers there are idempotent; the embedded broker lists InitProducerId
        among its ApiVersions but cannot answer it, so there they fall back (DESIGN §9).
        Decided from what the broker answers, never from a flag the user must know."""
        known = _IDEMPOTENT.get(self.bootstrap)
        if known is not None:
            return known
        host, _, port = self.bootstrap.split(",")[0].strip().rpartition(":")
        args = {k: v for k, v in self.common().items() if k != "bootstrap_servers"}
        try:
            async with asyncio.timeout(seconds):
                conn = await create_conn(host, int(port), **args)
        except (OSError, TimeoutError) as exc:  # the broker is not there (yet)
            raise Unavailable("broker", str(exc) or type(exc).__name__) from exc
        try:
            async with asyncio.timeout(seconds):
                code = await _producer_id(conn)
        finally:
            conn.close()
        offered = code == 0
        _IDEMPOTENT[self.bootstrap] = offered
        log.info("producers idempotent" if offered else "broker has no producer ids")
        return offered

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context

    def common(self) -> dict[str, Any]:
        """Connection arguments shared by producers, consumers and the admin client."""
        args: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
        }
        if "SSL" in self.security_protocol:
            args["ssl_context"] = self.ssl_context()
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
            # Once the broker was asked (learn_idempotence): a re-sent batch never duplicates.
            "enable_idempotence": _IDEMPOTENT.get(self.bootstrap, False),
            "linger_ms": 5,
            "max_batch_size": 1024 * 1024,
            "max_request_size": MAX_MESSAGE_BYTES,
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
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            "max_partition_fetch_bytes": MAX_MESSAGE_BYTES,
            "fetch_max_bytes": 4 * MAX_MESSAGE_BYTES,
            "metadata_max_age_ms": 5000,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": max(100, self.session_timeout_ms // 5),
            **overrides,
        }
        return AIOKafkaConsumer(**args)

    def admin(self) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(**self.common())


Client = TypeVar("Client", AIOKafkaProducer, AIOKafkaConsumer)

#: Whether the broker of each bootstrap gives out producer ids, once asked.
_IDEMPOTENT: dict[str, bool] = {}


async def connected(
    settings: KafkaSettings,
    make: Callable[[], Client],
    stopping: asyncio.Event,
    what: str,
    backoff: tuple[float, float] = (0.05, 5.0),
) -> Client | None:
    """A started client, made by ``make``: while the broker is unavailable, waited for
    with backoff and jitter for as long as it takes (DESIGN §7); None if ``stopping`` is
    set first. A client set up wrong (TLS, login) or refused raises its
    :class:`~bus.wire.errors.BusError` at once: waiting would not fix it. Producers and
    consumers alike connect through here."""
    waits = 0
    while not stopping.is_set():
        client: Client | None = None
        try:
            await settings.learn_idempotence()
            client = make()
            await client.start()
            return client
        except Exception as exc:
            if client is not None:
                await client.stop()  # no "Unclosed" client left behind
            error = classified(exc)
            if error is None or not error.transient:
                raise (error or exc) from exc
            problem = await settings.setup_problem()
            if problem is not None:
                raise Misconfigured(problem) from exc
        waits += 1
        log.warning("broker unavailable; waiting", client=what, error=str(error))
        pause = min(backoff[1], backoff[0] * 2 ** (waits - 1)) * random.uniform(0.8, 1.2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), pause)
    return None


async def _producer_id(conn: Any) -> int:
    """The error code of asking ``conn``'s broker for a producer id; one it says is passing
    (its coordinator still loading, say) is asked again."""
    while True:
        answer = await conn.send(InitProducerIdRequest(None, 60000))
        code = int(answer.error_code)
        if code == 0 or not for_code(code).retriable:
            return code
        await asyncio.sleep(0.2)


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


async def partitions_of(
    consumer: AIOKafkaConsumer, topics: Sequence[str]
) -> dict[str, list[TopicPartition]]:
    """The partitions of each of ``topics`` the broker has now (a topic it lacks, or will
    not describe to this principal, is absent).

    aiokafka's ``partitions_for_topic`` reads the client's cached metadata, which holds only
    the topics it subscribed to: on Kafka, none for a consumer that assigns partitions
    itself (the embedded broker happens to send every topic at bootstrap)."""
    cluster = await consumer._client.fetch_all_metadata()  # the one call that asks the broker
    found = {}
    for topic in topics:
        numbers = cluster.partitions_for_topic(topic)
        if numbers is not None:
            found[topic] = [TopicPartition(topic, n) for n in sorted(numbers)]
    return found
