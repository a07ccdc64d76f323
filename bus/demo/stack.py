"""The demo's stack: the embedded broker, a development PKI and the services, each a
``docbus serve`` process as in a real deployment."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path

from bus.directory.certificates import certificates_in
from bus.directory.generate import make_directory
from bus.directory.signed import sign_directory
from bus.kafka.broker import EmbeddedBroker
from bus.kafka.clients import KafkaSettings
from bus.kafka.topics import all_topics, ensure_topics
from bus.registry import load_registry
from bus.trust.pki import CertRole, DevPki, KemAlgorithm, KeyAlgorithm
from bus.trust.signing import SigningKey
from bus.wire.model import Role

MINISTRY = "000.00.00.G22"  # Văn phòng Chính phủ
NGHE_AN = "000.00.00.H41"  # UBND tỉnh Nghệ An
BAC_NINH = "000.00.00.H06"  # UBND tỉnh Bắc Ninh
BAC_GIANG = "000.00.00.H04"  # UBND tỉnh Bắc Giang, merged into Bắc Ninh on 2025-07-01
UNKNOWN = "000.00.00.H99"
SO_NOI_VU_NGHE_AN = "000.00.01.H41"  # a third agency in Nghệ An: sees the topic, not the secret
INBOXES = (NGHE_AN, BAC_NINH, SO_NOI_VU_NGHE_AN)
NODES = (MINISTRY, *INBOXES)  # ``docbus dev`` runs an agency node for each
GATEWAY, ARCHIVER = "docbus.gateway", "docbus.archiver"
BRIDGE = "bridge.vpcp"  # the edXML bridge registered for Văn phòng Chính phủ
DIRECTORY = "docbus.directory"  # the national directory's operator (DESIGN §13)


def docbus(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "bus", *map(str, args)]


def pair(folder: Path, agency: str, role: CertRole) -> str:
    base = folder / "agencies" / agency
    return f"{base / f'{role.value}.key.pem'},{base / f'{role.value}.cert.pem'}"


@dataclass
class Stack:
    """The embedded broker, a development PKI and the service processes."""

    folder: Path
    broker: EmbeddedBroker = field(default_factory=EmbeddedBroker)
    #: ``docbus dev``: an agency node (HTTP API) for each agency instead of bare inboxes.
    nodes: bool = False
    ports: dict[str, int] = field(default_factory=dict)
    #: The archive in PostgreSQL (a URL) instead of SQLite in ``folder/archive``.
    database: str | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started: dict[str, int] = field(default_factory=dict)

    @property
    def pki(self) -> Path:
        return self.folder / "pki"

    @property
    def trust(self) -> Path:
        return self.pki / "trust"

    @property
    def env(self) -> dict[str, str]:
        # Services re-read the trust folder every second here (10 s by default), so the
        # revocation scenario does not wait long.
        return {
            **self.broker.client_env(),
            "DOCBUS_TRUST_RELOAD_SECONDS": "1",
            "DOCBUS_BLOB_DIR": str(self.folder / "blobs"),
            # Every command that opens the archive finds it there (DOCBUS_DATABASE).
            **({"DOCBUS_DATABASE": self.database} if self.database else {}),
        }

    @property
    def settings(self) -> KafkaSettings:
        return self.broker.settings()

    def run(
        self, *args: str | Path, timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """One ``docbus`` command against this stack, as an operator would run it."""
        return subprocess.run(
            docbus(*args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def send(
        self, topic: str, value: bytes, key: bytes = b"", headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        """Write one record straight onto a topic, as anyone with write access can."""

        async def send() -> None:
            producer = self.settings.producer()
            await producer.start()
            try:
                await producer.send_and_wait(topic, value, key=key, headers=list(headers))
            finally:
                await producer.stop()

        asyncio.run(send())

    def make_pki(self) -> None:
        dev = DevPki(self.pki)
        if not (self.pki / "ca").exists():
            dev.init()

        def once(agency: str, role: CertRole, alg: KeyAlgorithm) -> None:
            if not (self.pki / "agencies" / agency / f"{role.value}.key.pem").exists():
                dev.issue(agency, role, alg)

        for service in (GATEWAY, ARCHIVER, BRIDGE, DIRECTORY):
            once(service, CertRole.SERVICE, KeyAlgorithm.ED25519)
        once(MINISTRY, CertRole.SIGNER, KeyAlgorithm.ED25519)
        once(MINISTRY, CertRole.AGENCY, KeyAlgorithm.ECDSA_P256)
        for agency in NODES:
            once(agency, CertRole.SIGNER, KeyAlgorithm.ED25519)
        for agency in INBOXES:
            once(agency, CertRole.AGENCY, KeyAlgorithm.ED25519)
            if not (self.pki / "agencies" / agency / "encryption.key.pem").exists():
                dev.issue_encryption(agency, KemAlgorithm.MLKEM768_X25519)

    def publish_directory(self) -> None:
        """The national directory, as its operator publishes it (DESIGN §13): the shipped
        registry and the encryption certificates of the agencies that have one, which the
        nodes seal to."""
        agencies = self.pki / "agencies"
        encryption, signing = certificates_in(agencies)
        sealed_to = {agency: encryption[agency] for agency in NODES if agency in encryption}
        shipped = json.loads((files("bus") / "data" / "registry.json").read_text("utf-8"))
        made = make_directory(shipped, sealed_to, 1, datetime.now(UTC), signing=signing)
        base = agencies / DIRECTORY
        operator = SigningKey.load(
            Role.SERVICE, base / "service.key.pem", base / "service.cert.pem"
        )
        for key, record in sign_directory(made, operator):
            self.send(self.settings.topics.directory, record, key)

    def start_services(self) -> None:
        for name in self.commands():
            self.start(name)

    def start(self, name: str) -> None:
        """Start one service, its output appended to logs/NAME.log."""
        logs = self.folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.started[name] = _consuming(logs / f"{name}.log")
        with open(logs / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                self.commands()[name], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def stop(self, name: str) -> None:
        """Stop one service gracefully (SIGTERM), as an operator's restart would."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)

    def node_url(self, agency: str) -> str:
        return f"http://127.0.0.1:{self.ports[agency]}"

    def node_dir(self, agency: str) -> Path:
        return self.folder / "nodes" / agency

    def commands(self) -> dict[str, list[str]]:
        services = {
            "gateway": docbus(
                "serve",
                "gateway",
                "--trust",
                self.trust,
                "--key",
                pair(self.pki, GATEWAY, CertRole.SERVICE),
            ),
            "archiver": docbus(
                "serve",
                "archiver",
                "--data-dir",
                self.folder / "archive",
                "--trust",
                self.trust,
                "--key",
                pair(self.pki, ARCHIVER, CertRole.SERVICE),
            ),
            **{
                f"inbox-{agency}": docbus(
                    "serve",
                    "inbox",
                    "--agency",
                    agency,
                    "--trust",
                    self.trust,
                    "--key",
                    pair(self.pki, agency, CertRole.AGENCY),
                    "--dir",
                    self.folder / "inbox" / agency,
                    "--decrypt-key",
                    self.pki / "agencies" / agency / "encryption.key.pem",
                    "--edxml-dir",
                    self.folder / "edxml-out" / agency,
                )
                for agency in INBOXES
            },
        }
        if not self.nodes:
            return services
        for agency in NODES:
            self.ports.setdefault(agency, _free_port())
        return {
            "gateway": services["gateway"],
            "archiver": services["archiver"],
            **{f"node-{agency}": self._node(agency) for agency in NODES},
        }

    def _node(self, agency: str) -> list[str]:
        return docbus(
            "serve",
            "agency",
            "--agency",
            agency,
            "--keys",
            self.pki / "agencies" / agency,
            "--trust",
            self.trust,
            "--data-dir",
            self.node_dir(agency),
            "--listen",
            f"127.0.0.1:{self.ports[agency]}",
        )

    def wait_ready(self, seconds: float = 60.0, only: str | None = None) -> None:
        """Until every service (or ``only``) logs that it consumes; one that dies is an error."""
        deadline = time.monotonic() + seconds
        waiting = {only} if only else set(self.processes)
        while waiting:
            for name in list(waiting):
                process = self.processes[name]
                path = self.folder / "logs" / f"{name}.log"
                if process.poll() is not None:
                    log = path.read_text(errors="replace")
                    raise RuntimeError(f"{name} exited ({process.returncode}): {log[-2000:]}")
                if _consuming(path) > self.started.get(name, 0):
                    waiting.discard(name)
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {seconds}s: {', '.join(sorted(waiting))}")
            time.sleep(0.1)

    def stop_services(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()


@contextlib.contextmanager
def running(
    folder: Path,
    broker_binary: Path | None = None,
    nodes: bool = False,
    database: str | None = None,
    status_partitions: int | None = None,
) -> Iterator[Stack]:
    """Broker up, topics made, PKI made, services started and consuming."""
    stack = Stack(folder, EmbeddedBroker(binary=broker_binary), nodes=nodes, database=database)
    folder.mkdir(parents=True, exist_ok=True)
    with stack.broker:
        names = all_topics(stack.settings.topics, load_registry())
        asyncio.run(ensure_topics(stack.settings, names, 2, status_partitions=status_partitions))
        stack.make_pki()
        if nodes:
            stack.publish_directory()
        stack.start_services()
        try:
            stack.wait_ready()
            yield stack
        finally:
            stack.stop_services()


def _consuming(log: Path) -> int:
    """How often a service's log says it started consuming (once per start)."""
    return log.read_text(errors="replace").count('"consuming"') if log.exists() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
