"""A real three-broker Apache Kafka cluster on loopback for the tests (DESIGN §9).

conftest's ``kafka_cluster`` (session-scoped) runs ``deploy/kafka/cluster up`` into a
temporary folder once per session and ``down`` at its end. Without Java, Maven or the Kafka
release the tests that use it fail, never skip: a missing broker must not pass for a green
run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from bus.kafka.clients import KafkaSettings

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "deploy" / "kafka" / "cluster"
UP_TIMEOUT = 600  # the first run fetches the release from Maven Central


def load_launcher() -> ModuleType:
    """deploy/kafka/cluster.py as a module (deploy/ is not a package): its constants and
    the compose conversion, for tests that compare against them."""
    name = "docbus_kafka_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, CLUSTER.with_suffix(".py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def run_cluster(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``deploy/kafka/cluster ARGS`` with this interpreter (it has PyYAML and cryptography)."""
    return subprocess.run(
        ["bash", str(CLUSTER), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DOCBUS_PYTHON": sys.executable},
    )


def _check(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}, no message"]
        pytest.fail(f"kafka cluster {what} failed: {lines[-1]}", pytrace=False)


def read_env(path: Path) -> dict[str, str]:
    lines = path.read_text("utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


@dataclass(frozen=True)
class KafkaCluster:
    dir: Path
    bootstrap: str  # the SASL_SSL (INTERNAL) listeners, as the services connect

    def env(self, principal: str) -> dict[str, str]:
        """The principal's ``DOCBUS_*`` settings (``admin`` for the mTLS super user)."""
        path = self.dir / "env" / f"{principal}.env"
        if not path.exists():
            raise KeyError(f"no principal {principal!r} in {self.dir / 'env'}")
        return read_env(path)

    def password(self, principal: str) -> str:
        return Path(self.env(principal)["DOCBUS_SASL_PASSWORD_FILE"]).read_text().strip()

    def settings(self, principal: str) -> KafkaSettings:
        """The principal's client settings, as a service reading its env file makes them."""
        env = self.env(principal)
        return KafkaSettings(
            env["DOCBUS_BOOTSTRAP"],
            security_protocol=env["DOCBUS_SECURITY_PROTOCOL"],
            sasl_mechanism=env.get("DOCBUS_SASL_MECHANISM"),
            sasl_username=env.get("DOCBUS_SASL_USERNAME"),
            sasl_password=self.password(principal) if "DOCBUS_SASL_PASSWORD_FILE" in env else None,
            ssl_cafile=env.get("DOCBUS_SSL_CAFILE"),
            ssl_certfile=env.get("DOCBUS_SSL_CERTFILE"),
            ssl_keyfile=env.get("DOCBUS_SSL_KEYFILE"),
        )

    def node_ids(self) -> list[int]:
        state = json.loads((self.dir / "cluster.json").read_text("utf-8"))
        return [int(n["id"]) for n in state["nodes"]]

    def kill(self, n: int) -> None:
        """SIGKILL broker ``n``."""
        _check(run_cluster("kill", str(self.dir), str(n)), f"kill {n}")

    def start(self, n: int) -> None:
        """Restart broker ``n`` on its data; returns once it has rejoined."""
        _check(run_cluster("start", str(self.dir), str(n)), f"start {n}")


@contextmanager
def running_cluster(root: Path) -> Iterator[KafkaCluster]:
    """A cluster made in ``root`` (conftest's session fixture ``kafka_cluster``), down after."""
    try:
        done = run_cluster("up", str(root), timeout=UP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        run_cluster("down", str(root))
        pytest.fail(f"kafka cluster up failed: {e}", pytrace=False)
    _check(done, "up")
    try:
        yield KafkaCluster(root, cluster_bootstrap(root))
    finally:
        run_cluster("down", str(root))


def cluster_bootstrap(root: Path) -> str:
    """The services' bootstrap list, from any principal's env file but the admin's."""
    services = sorted(p for p in (root / "env").glob("*.env") if p.name != "admin.env")
    if not services:
        pytest.fail(f"kafka cluster up wrote no env files in {root / 'env'}", pytrace=False)
    return read_env(services[0])["DOCBUS_BOOTSTRAP"]
