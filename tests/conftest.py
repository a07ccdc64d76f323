"""Shared fixtures: a real development PKI on disk, keys for a ministry and a province."""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from bus.kafka.broker import EmbeddedBroker
from bus.registry import Registry, load_registry
from bus.store.archive import ARCHIVE_FILE, Archive, open_archive
from bus.trust.pki import CertRole, DevPki, KeyAlgorithm
from bus.trust.signing import SigningKey
from bus.trust.truststore import TrustStore
from bus.wire.model import Role
from tests.kafka_cluster import KafkaCluster, cluster_bootstrap, running_cluster

MINISTRY = "000.00.00.G22"  # Văn phòng Chính phủ
PROVINCE = "000.00.00.H41"  # UBND tỉnh Nghệ An


@dataclass(frozen=True)
class Pki:
    dev: DevPki
    trust: TrustStore

    def key(self, agency: str, role: Role, alg: KeyAlgorithm = KeyAlgorithm.ED25519) -> SigningKey:
        """A freshly issued key for ``agency`` in ``role``."""
        key_path, cert_path = self.dev.issue(
            agency, CertRole(role.value.lower()), alg, replace=True
        )
        return SigningKey.load(role, key_path, cert_path)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    dev = DevPki(tmp_path_factory.mktemp("pki"))
    dev.init()
    return Pki(dev, TrustStore.load(dev.trust_dir))


@pytest.fixture(scope="session")
def ministry_keys(pki: Pki) -> tuple[SigningKey, SigningKey]:
    return pki.key(MINISTRY, Role.SIGNER), pki.key(MINISTRY, Role.AGENCY, KeyAlgorithm.ECDSA_P256)


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    """A fresh embedded Kafka-protocol broker (Tansu, memory storage) for one test."""
    with EmbeddedBroker() as b:
        yield b


#: The PostgreSQL server the tests create their databases on (trust auth on this machine).
POSTGRES = os.environ.get("DOCBUS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards; its URL.

    There is no skip: without the server the test fails, naming it (issue 13 asks for the
    real database wherever it runs)."""
    name = f"docbus_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(POSTGRES, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES} is needed (DOCBUS_TEST_POSTGRES): {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield urlunsplit(urlsplit(POSTGRES)._replace(path=f"/{name}"))
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class Store:
    """Where a test's archive lives: a folder (SQLite), or a PostgreSQL database as well."""

    data_dir: Path
    database: str | None

    def open(self, create: bool = True) -> Archive:
        return open_archive(self.data_dir, create=create, database=self.database)

    def options(self) -> list[str]:
        """The command-line options that name this archive."""
        return ["--data-dir", str(self.data_dir)] + (
            ["--database", self.database] if self.database else []
        )

    def tamper(self, sql: str, params: tuple[object, ...] = ()) -> None:
        """Change the archive behind its back, as an attacker with database access would."""
        if self.database is None:
            with sqlite3.connect(self.data_dir / ARCHIVE_FILE) as db:
                db.execute(sql, params)
            return
        with psycopg.connect(self.database, autocommit=True) as pg:
            pg.execute(sql.replace("?", "%s"), params)  # type: ignore[call-overload]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The same test on both archive stores (DESIGN §6)."""
    if request.param == "sqlite":
        yield Store(tmp_path / "archive", None)
        return
    with postgres_database() as url:
        yield Store(tmp_path / "archive", url)


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """The three-broker Apache Kafka cluster of deploy/kafka, started once per session; or,
    with DOCBUS_TEST_KAFKA_CLUSTER=DIR, one a developer keeps running (`cluster up DIR`)."""
    kept = os.environ.get("DOCBUS_TEST_KAFKA_CLUSTER")
    if kept:
        yield KafkaCluster(Path(kept), cluster_bootstrap(Path(kept)))
        return
    with running_cluster(tmp_path_factory.mktemp("kafka-cluster")) as cluster:
        yield cluster
