"""The loopback Apache Kafka cluster of deploy/kafka (DESIGN §9), against real brokers.

One source for the broker settings: docker-compose.yml's ``x-kafka-env`` reaches each
broker's server.properties unchanged but for the keys the launcher must override on
loopback. The ACLs of deploy/acls.txt hold on the real StandardAuthorizer, SCRAM refuses a
wrong password, and acks=all survives a broker killed (min.insync.replicas 2 of 3).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError
from aiokafka.helpers import create_ssl_context

from tests.kafka_cluster import ROOT, KafkaCluster, load_launcher

TOPICS = ("docbus.submitted", "docbus.status", "docbus.checkpoints")


launcher = load_launcher()


# -- clients ---------------------------------------------------------------------------------


def _ssl(env: dict[str, str]) -> Any:
    return create_ssl_context(
        cafile=env["DOCBUS_SSL_CAFILE"],
        certfile=env.get("DOCBUS_SSL_CERTFILE"),
        keyfile=env.get("DOCBUS_SSL_KEYFILE"),
    )


def sasl(cluster: KafkaCluster, principal: str, password: str | None = None) -> dict[str, Any]:
    """aiokafka settings for ``principal`` from its env file, as a service would connect."""
    env = cluster.env(principal)
    return {
        "bootstrap_servers": env["DOCBUS_BOOTSTRAP"],
        "security_protocol": env["DOCBUS_SECURITY_PROTOCOL"],
        "sasl_mechanism": env["DOCBUS_SASL_MECHANISM"],
        "sasl_plain_username": env["DOCBUS_SASL_USERNAME"],
        "sasl_plain_password": password or cluster.password(principal),
        "ssl_context": _ssl(env),
    }


def admin(cluster: KafkaCluster) -> dict[str, Any]:
    env = cluster.env("admin")
    return {
        "bootstrap_servers": env["DOCBUS_BOOTSTRAP"],
        "security_protocol": env["DOCBUS_SECURITY_PROTOCOL"],
        "ssl_context": _ssl(env),
    }


@asynccontextmanager
async def producer(settings: dict[str, Any]) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(acks="all", request_timeout_ms=30_000, **settings)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def _create_topics(cluster: KafkaCluster) -> None:
    client = AIOKafkaAdminClient(**admin(cluster))
    await client.start()
    try:
        topics = [NewTopic(t, num_partitions=3, replication_factor=3) for t in TOPICS]
        await client.create_topics(topics)
    finally:
        await client.close()


@pytest.fixture(scope="module")
def cluster(kafka_cluster: KafkaCluster) -> KafkaCluster:
    """The session's cluster, with DESIGN §8's topics made by the admin over mTLS."""
    asyncio.run(_create_topics(kafka_cluster))
    return kafka_cluster


# -- one source for the broker settings ------------------------------------------------------


def test_the_image_conversion_rule() -> None:
    name = launcher.property_name
    assert name("KAFKA_LOG_DIRS") == "log.dirs"
    assert name("KAFKA_LISTENER_NAME_INTERNAL_SCRAM___SHA___512_SASL_JAAS_CONFIG") == (
        "listener.name.internal.scram-sha-512.sasl.jaas.config"
    )
    assert name("KAFKA_CONFLUENT__SUPPORT_X") == "confluent_support.x"
    assert launcher.compose_value("RULE:^.*CN=([^,]+).*$$/$$1/,DEFAULT") == (
        "RULE:^.*CN=([^,]+).*$/$1/,DEFAULT"
    )


def test_the_compose_image_is_the_pinned_release() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text("utf-8"))
    images = {
        s["image"] for s in compose["services"].values() if "apache/kafka" in s.get("image", "")
    }
    assert images == {f"apache/kafka:{launcher.kafka_version()}"}


def test_only_host_port_and_path_keys_are_overridden() -> None:
    settings = launcher.compose_settings()
    assert not set(launcher.LOOPBACK_EXTRAS) & set(settings)  # extras never replace compose
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text("utf-8"))
    shared = set(compose["x-kafka-env"])
    for name, service in compose["services"].items():
        if name.startswith("kafka-") and name[-1].isdigit():
            own = {launcher.property_name(k) for k in set(service["environment"]) - shared}
            # a per-broker setting the launcher did not replace would be lost on loopback
            assert own <= launcher.OVERRIDDEN, name


def test_compose_settings_reach_every_broker_unchanged(kafka_cluster: KafkaCluster) -> None:
    settings = launcher.compose_settings()
    assert settings["min.insync.replicas"] == "2"
    assert settings["allow.everyone.if.no.acl.found"] == "false"
    for node in kafka_cluster.node_ids():
        path = kafka_cluster.dir / "config" / f"kafka-{node}.properties"
        props = launcher.read_properties(path)
        kept = {k: v for k, v in settings.items() if k not in launcher.OVERRIDDEN}
        assert {k: props.get(k) for k in kept} == kept, path
        assert set(launcher.OVERRIDDEN) <= set(props)
        assert props["node.id"] == str(node)
        assert props["listeners"].count("://127.0.0.1:") == 4


# -- ACLs and SCRAM on the real authorizer ---------------------------------------------------


async def test_a_publisher_writes_submitted_and_the_gateway_reads_it(cluster: KafkaCluster) -> None:
    value = uuid.uuid4().hex.encode()
    async with producer(sasl(cluster, "agency-g22")) as p:
        await p.send_and_wait("docbus.submitted", value, key=b"doc-1")
    consumer = AIOKafkaConsumer(
        "docbus.submitted",
        group_id="docbus.gateway",
        auto_offset_reset="earliest",
        **sasl(cluster, "gateway"),
    )
    await consumer.start()
    try:
        seen: list[bytes] = []
        async with asyncio.timeout(30):
            while value not in seen:
                batch = await consumer.getmany(timeout_ms=1000)
                seen += [r.value for records in batch.values() for r in records if r.value]
    finally:
        await consumer.stop()


async def test_a_principal_cannot_write_a_topic_acls_txt_does_not_give_it(
    cluster: KafkaCluster,
) -> None:
    async with producer(sasl(cluster, "agency-g22")) as p:
        with pytest.raises(TopicAuthorizationFailedError):
            await p.send_and_wait("docbus.checkpoints", b"forged checkpoint")
    # The gateway may read docbus.submitted (so it sees the topic) but never write it.
    async with producer(sasl(cluster, "gateway")) as p:
        with pytest.raises(TopicAuthorizationFailedError):
            await p.send_and_wait("docbus.submitted", b"forged submission")


async def test_a_wrong_password_is_refused(cluster: KafkaCluster) -> None:
    logs = sorted((cluster.dir / "logs").glob("kafka-*.log"))
    before = sum(log.read_text("utf-8").count("invalid credentials") for log in logs)
    p = AIOKafkaProducer(**sasl(cluster, "agency-g22", password="not-the-password"))
    with pytest.raises(KafkaConnectionError):
        await p.start()
    await p.stop()
    # refused by SCRAM itself, not by anything else on the way
    after = sum(log.read_text("utf-8").count("invalid credentials") for log in logs)
    assert after > before


# -- a broker killed -------------------------------------------------------------------------


async def _in_sync(cluster: KafkaCluster, topic: str, partition: int) -> set[int]:
    client = AIOKafkaAdminClient(**admin(cluster))
    await client.start()
    try:
        (described,) = await client.describe_topics([topic])
    finally:
        await client.close()
    (found,) = (p for p in described["partitions"] if p["partition"] == partition)
    return set(found["isr"])


async def test_acks_all_survives_a_killed_leader_which_then_rejoins(cluster: KafkaCluster) -> None:
    tp = TopicPartition("docbus.status", 0)
    async with producer(sasl(cluster, "agency-g22")) as p:
        await p.send_and_wait(tp.topic, b"before", partition=tp.partition)
        leader = p.client.cluster.leader_for_partition(tp)
        assert leader in cluster.node_ids()
        await asyncio.to_thread(cluster.kill, leader)
        try:
            began = time.monotonic()
            # Two replicas of three left: min.insync.replicas (2) still holds.
            sent = await p.send_and_wait(tp.topic, b"after", partition=tp.partition)
            assert sent.offset > 0 and time.monotonic() - began < 30
            assert p.client.cluster.leader_for_partition(tp) != leader
        finally:
            await asyncio.to_thread(cluster.start, leader)
    for _ in range(60):  # back in the partition's ISR: it has caught up
        if leader in await _in_sync(cluster, tp.topic, tp.partition):
            break
        await asyncio.sleep(0.5)
    else:
        pytest.fail(f"broker {leader} did not rejoin the ISR of {tp}")


def test_env_files_name_every_principal(kafka_cluster: KafkaCluster) -> None:
    for principal in launcher.principals():
        env = kafka_cluster.env(principal)
        assert env["DOCBUS_SASL_USERNAME"] == principal
        assert env["DOCBUS_BOOTSTRAP"] == kafka_cluster.bootstrap
        secret = Path(env["DOCBUS_SASL_PASSWORD_FILE"])
        assert secret.stat().st_mode & 0o777 == 0o600
