"""Shared fixtures: a real development PKI on disk, keys for a ministry and a province."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bus.kafka.broker import EmbeddedBroker
from bus.registry import Registry, load_registry
from bus.trust.pki import CertRole, DevPki, KeyAlgorithm
from bus.trust.signing import SigningKey
from bus.trust.truststore import TrustStore
from bus.wire.model import Role

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
