"""docbus on a real three-broker Apache Kafka cluster (DESIGN §9, issue 21), with the security
of the compose file: SASL_SSL with one SCRAM principal per service and agency, mTLS for the
admin, StandardAuthorizer with deploy/acls.txt, replication 3, min.insync.replicas 2.

The services run as `docbus serve` processes, each under its own principal, started once for
the module; the agency publishes in process as ``agency-g22``. Broker faults are real: a
broker SIGKILLed while documents flow, the leader of ``docbus.submitted`` moved by killing
its broker, too few in-sync replicas. ``DOCBUS_CLUSTER_DOCUMENTS`` raises the fault test's
count (2,000 as a benchmark).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from bus.kafka.broker import free_port
from bus.kafka.clients import KafkaSettings
from bus.kafka.directory import load_directory
from bus.kafka.errors import Forbidden, classified
from bus.kafka.publisher import Publisher
from bus.registry import load_registry
from bus.store.archive import SqliteArchive
from bus.store.blobs import BlobStore
from bus.store.outbox import Outbox, State
from bus.trust.pki import CertRole, KeyAlgorithm
from bus.trust.verifier import Policy, Verifier
from bus.wire.model import Role
from producers.document import new_document
from tests.conftest import MINISTRY, Pki
from tests.kafka_cluster import KafkaCluster
from tests.serving import ready
from tests.stack import NGHE_AN

pytestmark = pytest.mark.integration

DOCUMENTS = int(os.environ.get("DOCBUS_CLUSTER_DOCUMENTS", "300"))
DOCBUS = [sys.executable, "-m", "bus"]


@dataclass
class Services:
    """The pipeline's services on the cluster, each a process under its own principal."""

    cluster: KafkaCluster
    folder: Path
    commands: dict[str, list[str]]  # name (its principal) → its ``docbus`` arguments
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)  # name → its /readyz port

    @property
    def archive(self) -> Path:
        return self.folder / "archiver" / "archive.sqlite"

    def start(self, name: str) -> None:
        self.processes[name] = _docbus(self.cluster, name, self.folder, *self.commands[name])

    def sigkill(self, name: str) -> None:
        """SIGKILL the service and start it again, as a supervisor would."""
        self.processes[name].kill()
        self.processes[name].wait(30)
        self.start(name)


def _docbus(
    cluster: KafkaCluster, principal: str, folder: Path, *args: str, wait: bool = False
) -> subprocess.Popen[bytes]:
    env = {**os.environ, **cluster.env(principal), "DOCBUS_BLOB_DIR": str(folder / "blobs")}
    with (folder / f"{principal}.log").open("ab") as log:
        process = subprocess.Popen([*DOCBUS, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    if wait:
        process.wait(300)
    return process


def _key(pki: Pki, name: str, role: CertRole = CertRole.SERVICE) -> str:
    key, cert = pki.dev.issue(name, role, KeyAlgorithm.ED25519, replace=True)
    return f"{key},{cert}"


@pytest.fixture(scope="module")
def services(
    kafka_cluster: KafkaCluster, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    folder = tmp_path_factory.mktemp("on-kafka")
    # The topics as an operator makes them: docbus's own command, as the cluster's admin.
    # docbus.status has 3 partitions here (tests/test_kafka_cluster.py made it first): each
    # node still reads only the one its code lands on.
    ensure = _docbus(
        kafka_cluster, "admin", folder, "topics", "ensure", "--partitions", "3",
        "--status-partitions", "3", "--replication", "3", wait=True,
    )  # fmt: skip
    assert ensure.returncode == 0, (folder / "admin.log").read_text()
    trust = ["--trust", str(pki.dev.trust_dir)]
    ops = {"gateway": free_port(), "archiver": free_port()}
    commands = {
        "gateway": [
            "serve", "gateway", *trust, "--key", _key(pki, "docbus.gateway"),
            "--listen", f"127.0.0.1:{ops['gateway']}",
        ],
        "archiver": [
            "serve", "archiver", *trust, "--key", _key(pki, "docbus.archiver"),
            "--data-dir", str(folder / "archiver"), "--listen", f"127.0.0.1:{ops['archiver']}",
        ],
        "inbox-nghe-an": [
            "serve", "inbox", *trust, "--agency", NGHE_AN,
            "--key", _key(pki, NGHE_AN, CertRole.AGENCY), "--dir", str(folder / "inbox"),
        ],
    }  # fmt: skip
    services = Services(kafka_cluster, folder, commands, ops=ops)
    for name in commands:
        services.start(name)
    try:
        yield services
    finally:
        for process in services.processes.values():
            process.terminate()
        codes = {name: p.wait(60) for name, p in services.processes.items()}
    logs = {name: (folder / f"{name}.log").read_text()[-2000:] for name in commands}
    assert all(code == 0 for code in codes.values()), (codes, logs)


@asynccontextmanager
async def _publisher(services: Services, pki: Pki, name: str) -> AsyncIterator[Publisher]:
    """The ministry's publisher, as agency-g22, re-sending every 2 s until answered."""
    settings = services.cluster.settings("agency-g22")
    outbox = Outbox(services.folder / f"outbox-{name}.sqlite")
    publisher = Publisher(
        settings,
        outbox,
        [pki.key(MINISTRY, Role.SIGNER), pki.key(MINISTRY, Role.AGENCY)],
        Verifier(pki.trust, Policy(), load_registry()),
        resend_after=timedelta(seconds=2),
        blobs=BlobStore(services.folder / "blobs"),
    )
    await publisher.start()
    try:
        yield publisher
    finally:
        await publisher.stop()
        outbox.close()


@asynccontextmanager
async def _down(cluster: KafkaCluster, broker: int) -> AsyncIterator[None]:
    """Broker ``broker`` SIGKILLed for the block, restarted on its data after it."""
    await asyncio.to_thread(cluster.kill, broker)
    try:
        yield
    finally:
        await asyncio.to_thread(cluster.start, broker)


async def _all_archived(publisher: Publisher, ids: list[str], seconds: float) -> None:
    """Every document ARCHIVED at its publisher: its receipt proven there (the outbox applies
    an ARCHIVED status only with an inclusion proof of its exact record)."""
    async with asyncio.timeout(seconds):
        for document_id in ids:
            assert (await publisher.wait(document_id)).state is State.ARCHIVED


def _archived_once(services: Services, ids: list[str]) -> None:
    with SqliteArchive(services.archive, read_only=True) as archive:
        for document_id in ids:
            [entry] = archive.find(document_id)  # once, never twice
            assert not entry.conflict


def _alive(services: Services) -> None:
    for name, process in services.processes.items():
        assert process.poll() is None, (name, (services.folder / f"{name}.log").read_text())


async def test_documents_reach_archived_over_sasl_ssl_with_idempotent_producers(
    services: Services, pki: Pki
) -> None:
    settings = services.cluster.settings("agency-g22")
    assert await settings.learn_idempotence()  # Kafka gives producer ids: idempotent
    async with _publisher(services, pki, "first") as publisher:
        docs = [new_document(MINISTRY, [NGHE_AN], f"Trên Kafka số {i}") for i in range(20)]
        for doc in docs:
            await publisher.publish(doc)
        await _all_archived(publisher, [d.document_id for d in docs], 120)
    _archived_once(services, [d.document_id for d in docs])
    _alive(services)
    # An auditor replays the delivery topic (no group, partitions it assigns itself) and
    # finds every document verified and archived.
    report = services.folder / "replay.json"
    replay = (
        "audit", "replay", "--topic", "docbus.deliver.nghe-an", "--trust", str(pki.dev.trust_dir),
        "--archive", str(services.archive.parent), "--report", str(report),
    )  # fmt: skip
    done = await asyncio.to_thread(
        _docbus, services.cluster, "auditor", services.folder, *replay, wait=True
    )
    assert done.returncode == 0, (services.folder / "auditor.log").read_text()[-3000:]
    counts = json.loads(report.read_text())["counts"]
    assert counts["verified and archived"] >= len(docs), counts


async def test_services_sigkilled_mid_stream_come_back_ready_and_lose_nothing(
    services: Services, pki: Pki
) -> None:
    async with _publisher(services, pki, "sigkilled") as publisher:
        docs = [new_document(MINISTRY, [NGHE_AN], f"Dịch vụ bị giết {i}") for i in range(90)]
        for i, doc in enumerate(docs):
            await publisher.publish(doc)
            if i in (30, 60):  # their batches uncommitted: redelivered to the new process
                services.sigkill("gateway" if i == 30 else "archiver")
        await _all_archived(publisher, [d.document_id for d in docs], 180)
    _archived_once(services, [d.document_id for d in docs])
    for name, port in services.ops.items():
        body = await ready(port, 200, 60)
        assert all(body.values()), (name, body)
    _alive(services)


async def _leader(settings: KafkaSettings, topic: str, other_than: int = -1) -> int:
    """The leader of ``topic``'s first partition once it is not ``other_than``: asked until a
    live broker answers (the client's first pick may be the broker just killed) and the
    controller has fenced a killed leader (its session times out first)."""
    async with asyncio.timeout(90):
        while True:
            admin = settings.admin()
            try:
                await admin.start()
                [described] = await admin.describe_topics([topic])
                [leader] = [p["leader"] for p in described["partitions"] if p["partition"] == 0]
                if leader not in (other_than, -1):
                    return int(leader)
            except KafkaError:
                pass
            finally:
                await admin.close()
            await asyncio.sleep(1)


async def test_a_broker_killed_while_documents_flow_loses_and_duplicates_nothing(
    services: Services, pki: Pki
) -> None:
    cluster = services.cluster
    # The broker that leads docbus.submitted's first partition: killing it moves the leader.
    leader = await _leader(cluster.settings("admin"), "docbus.submitted")
    async with _publisher(services, pki, "killed") as publisher:
        docs = [
            new_document(MINISTRY, [NGHE_AN], f"Khi môi giới chết {i}") for i in range(DOCUMENTS)
        ]
        third = len(docs) // 3
        for doc in docs[:third]:
            await publisher.publish(doc)
        async with _down(cluster, leader):  # SIGKILL mid-stream, then back on its data
            for doc in docs[third:]:
                await publisher.publish(doc)
            await _leader(cluster.settings("admin"), "docbus.submitted", other_than=leader)
        await _all_archived(publisher, [d.document_id for d in docs], 300)
    _archived_once(services, [d.document_id for d in docs])
    _alive(services)  # producers and consumers carried on, without a restart
    _verify_archive(services, pki)


def _verify_archive(services: Services, pki: Pki) -> None:
    audit = subprocess.run(
        [
            *(*DOCBUS, "audit", "verify-archive", "--data-dir", str(services.archive.parent)),
            *("--trust", str(pki.dev.trust_dir), "--witnesses", "0"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-2000:]


async def _min_insync(settings: KafkaSettings, topic: str, value: int) -> None:
    admin: AIOKafkaAdminClient = settings.admin()
    await admin.start()
    try:
        resource = ConfigResource(
            ConfigResourceType.TOPIC, topic, {"min.insync.replicas": str(value)}
        )
        await admin.alter_configs([resource])
    finally:
        await admin.close()


async def test_too_few_in_sync_replicas_hold_documents_in_the_outbox_until_brokers_return(
    services: Services, pki: Pki
) -> None:
    cluster, admin = services.cluster, services.cluster.settings("admin")
    await _min_insync(admin, "docbus.submitted", 3)  # with one broker down: not enough
    try:
        async with _publisher(services, pki, "isr") as publisher:
            docs = [new_document(MINISTRY, [NGHE_AN], f"Thiếu bản sao {i}") for i in range(5)]
            async with _down(cluster, 3):
                for doc in docs:
                    await publisher.publish(doc)  # durable in the outbox; its send is refused
                await asyncio.sleep(8)
                states = [publisher.outbox.get(d.document_id).state for d in docs]  # type: ignore[union-attr]
                assert states == [State.PENDING] * len(docs)
            await _all_archived(publisher, [d.document_id for d in docs], 180)
    finally:
        await _min_insync(admin, "docbus.submitted", 2)
    _archived_once(services, [d.document_id for d in docs])


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed service ends with (its JSON log lines above it), no traceback."""
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and lines[-1].startswith("Error: "), done.stderr
    return lines[-1]


@pytest.mark.parametrize(
    ("principal", "agency", "refusal"),
    [
        # An agency reading another jurisdiction's delivery topic.
        ("agency-g22", NGHE_AN, "TopicAuthorizationFailed"),
        # An agency of the same jurisdiction joining another agency's consumer group.
        ("agency-g10", MINISTRY, "GroupAuthorizationFailed"),
    ],
)
def test_a_principal_is_refused_what_acls_deny_in_one_line(
    services: Services, pki: Pki, principal: str, agency: str, refusal: str
) -> None:
    env = {**os.environ, **services.cluster.env(principal)}
    done = subprocess.run(
        [
            *(*DOCBUS, "serve", "inbox", "--agency", agency, "--trust", str(pki.dev.trust_dir)),
            *("--key", _key(pki, agency, CertRole.AGENCY)),
            *("--dir", str(services.folder / principal)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert refusal in _one_line(done)


@pytest.mark.parametrize(
    "topic", ["docbus.deliver.central", "docbus.checkpoints", "docbus.directory"]
)
async def test_an_agency_writing_a_topic_of_the_services_is_refused(
    services: Services, topic: str
) -> None:
    producer = services.cluster.settings("agency-g22").producer()
    await producer.start()
    try:
        with pytest.raises(Exception) as refused:
            await producer.send_and_wait(topic, b"copied record", key=b"x")
        # A topic it may write still takes its writes, on the same connection.
        await producer.send_and_wait("docbus.rejected", b"still allowed", key=b"x")
    finally:
        await producer.stop()
    assert isinstance(classified(refused.value), Forbidden)


def test_the_directory_operator_alone_publishes_it_and_every_principal_reads_it(
    services: Services, pki: Pki
) -> None:
    key = _key(pki, "docbus.directory")
    trust = ("--trust", str(pki.dev.trust_dir))

    def directory(*args: str) -> int:
        done = _docbus(
            services.cluster, "directory", services.folder, "directory", *args, wait=True
        )
        return done.returncode

    for version in (1, 2):
        made = services.folder / f"directory-{version}.json"
        assert directory("generate", "--version", str(version), "--output", str(made)) == 0
    # Signed as the operator, published as the operator's principal: the only writer.
    first = str(services.folder / "directory-1.json")
    assert directory("publish", first, "--key", key, *trust) == 0, (
        services.folder / "directory.log"
    ).read_text()[-2000:]
    # The next version, signed by the operator, published by an agency: its ACL refuses it.
    signed = services.folder / "directory-2.signed"
    second = str(services.folder / "directory-2.json")
    assert directory("publish", second, "--key", key, *trust, "--output", str(signed)) == 0
    env = {**os.environ, **services.cluster.env("agency-g22")}
    refused = subprocess.run(
        [*DOCBUS, "directory", "publish", str(signed), *trust],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and "TopicAuthorizationFailed" in _one_line(refused)
    verifier = Verifier(pki.trust)
    for principal in ("gateway", "archiver", "inbox-nghe-an", "agency-g22", "agency-g10"):
        found = asyncio.run(load_directory(services.cluster.settings(principal), verifier))
        assert found is not None and found.version == 1, principal


NO_PASSWORD = {"DOCBUS_SASL_PASSWORD_FILE": "", "DOCBUS_SASL_PASSWORD": "not-it"}
NO_CERTIFICATE = {"DOCBUS_SSL_CERTFILE": "", "DOCBUS_SSL_KEYFILE": ""}
# (principal, what is set wrong, what the one line says); "" when nothing is wrong. An empty
# variable is unset: without DOCBUS_SSL_CAFILE a client trusts the system's CAs, which never
# signed Kafka's; the admin listener wants a client certificate (mTLS).
SETUPS = {
    "login": ("gateway", {}, ""),
    "wrong-password": ("gateway", NO_PASSWORD, "SASL authentication failed"),
    "unknown-user": ("gateway", {"DOCBUS_SASL_USERNAME": "mallory"}, "SASL authentication"),
    "plain": ("gateway", {"DOCBUS_SASL_MECHANISM": "PLAIN"}, "does not offer SASL PLAIN"),
    "no-login": ("gateway", {"DOCBUS_SECURITY_PROTOCOL": "SSL"}, "wants a SASL login"),
    "system-ca": ("gateway", {"DOCBUS_SSL_CAFILE": ""}, "the broker's certificate is not"),
    "mtls": ("admin", {}, ""),
    "no-certificate": ("admin", NO_CERTIFICATE, "refused this client's certificate"),
}


@pytest.mark.parametrize(("principal", "wrong", "said"), SETUPS.values(), ids=SETUPS.keys())
def test_a_client_set_up_wrong_is_told_why_in_one_line(
    kafka_cluster: KafkaCluster, principal: str, wrong: dict[str, str], said: str
) -> None:
    env = {**os.environ, **kafka_cluster.env(principal), **wrong}
    done = subprocess.run(
        [*DOCBUS, "topics", "check"], env=env, capture_output=True, text=True, timeout=120
    )
    if not said:  # set up right: the topics are compared (they may differ: exit 1)
        assert done.returncode in (0, 1) and "topics" in done.stdout, done.stderr
        return
    assert done.returncode == 2, done.stdout + done.stderr
    assert said in _one_line(done)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
