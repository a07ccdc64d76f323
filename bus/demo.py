"""``docbus demo`` and ``docbus dev``: the whole bus on the embedded broker.

The services and the publisher run as separate ``docbus`` processes, as in a real
deployment: this module starts them and talks to Kafka, and imports neither
``producers`` nor ``consumers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from importlib.resources import files
from pathlib import Path
from urllib.parse import quote

from aiokafka import AIOKafkaConsumer
from rich.console import Console
from rich.table import Table

from bus.archive import Archive
from bus.broker import EmbeddedBroker
from bus.kafka import KafkaSettings, Topics, ensure_topics
from bus.model import Status, StatusCode, now_ms
from bus.pki import CertRole, DevPki, KemAlgorithm, KeyAlgorithm
from bus.registry import Registry, load_registry
from bus.truststore import TrustStore
from bus.verifier import Policy, Verified, Verifier

MINISTRY = "000.00.00.G22"  # Văn phòng Chính phủ
NGHE_AN = "000.00.00.H41"  # UBND tỉnh Nghệ An
BAC_NINH = "000.00.00.H06"  # UBND tỉnh Bắc Ninh
BAC_GIANG = "000.00.00.H04"  # UBND tỉnh Bắc Giang, merged into Bắc Ninh on 2025-07-01
UNKNOWN = "000.00.00.H99"
SO_NOI_VU_NGHE_AN = "000.00.01.H41"  # a third agency in Nghệ An: sees the topic, not the secret
INBOXES = (NGHE_AN, BAC_NINH, SO_NOI_VU_NGHE_AN)
GATEWAY, ARCHIVER = "docbus.gateway", "docbus.archiver"
BRIDGE = "bridge.vpcp"  # the edXML bridge registered for Văn phòng Chính phủ


def all_topics(topics: Topics, registry: Registry, on: date | None = None) -> list[str]:
    """The fixed topics and one delivery topic per jurisdiction in force on ``on``."""
    day = on or date.today()
    jurisdictions = sorted(
        {registry.resolve(a.code, day).jurisdiction.id for a in registry.in_force(day)}
    )
    return [topics.submitted, topics.status, topics.rejected, *map(topics.deliver, jurisdictions)]


def _docbus(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "bus", *map(str, args)]


def _pair(folder: Path, agency: str, role: CertRole) -> str:
    base = folder / "agencies" / agency
    return f"{base / f'{role.value}.key.pem'},{base / f'{role.value}.cert.pem'}"


@dataclass
class Stack:
    """The embedded broker, a development PKI and the service processes."""

    folder: Path
    broker: EmbeddedBroker = field(default_factory=EmbeddedBroker)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def pki(self) -> Path:
        return self.folder / "pki"

    @property
    def trust(self) -> Path:
        return self.pki / "trust"

    @property
    def env(self) -> dict[str, str]:
        return self.broker.client_env()

    @property
    def settings(self) -> KafkaSettings:
        return self.broker.settings()

    def make_pki(self) -> None:
        dev = DevPki(self.pki)
        if not (self.pki / "ca").exists():
            dev.init()
        for service in (GATEWAY, ARCHIVER, BRIDGE):
            dev.issue(service, CertRole.SERVICE, KeyAlgorithm.ED25519)
        dev.issue(MINISTRY, CertRole.SIGNER, KeyAlgorithm.ED25519)
        dev.issue(MINISTRY, CertRole.AGENCY, KeyAlgorithm.ECDSA_P256)
        for agency in INBOXES:
            dev.issue(agency, CertRole.AGENCY, KeyAlgorithm.ED25519)
            dev.issue_encryption(agency, KemAlgorithm.MLKEM768_X25519)

    def start_services(self) -> None:
        logs = self.folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        commands = {
            "gateway": _docbus(
                "serve",
                "gateway",
                "--trust",
                self.trust,
                "--key",
                _pair(self.pki, GATEWAY, CertRole.SERVICE),
            ),
            "archiver": _docbus(
                "serve",
                "archiver",
                "--data-dir",
                self.folder / "archive",
                "--key",
                _pair(self.pki, ARCHIVER, CertRole.SERVICE),
            ),
            **{
                f"inbox-{agency}": _docbus(
                    "serve",
                    "inbox",
                    "--agency",
                    agency,
                    "--trust",
                    self.trust,
                    "--key",
                    _pair(self.pki, agency, CertRole.AGENCY),
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
        for name, command in commands.items():
            with open(logs / f"{name}.log", "wb") as log:
                self.processes[name] = subprocess.Popen(
                    command, env=self.env, stdout=log, stderr=subprocess.STDOUT
                )

    def wait_ready(self, seconds: float = 60.0) -> None:
        """Until every service logs that it consumes; a service that dies is an error."""
        deadline = time.monotonic() + seconds
        waiting = set(self.processes)
        while waiting:
            for name in list(waiting):
                process = self.processes[name]
                log = (self.folder / "logs" / f"{name}.log").read_text(errors="replace")
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}): {log[-2000:]}")
                if '"consuming"' in log:
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
def running(folder: Path) -> Iterator[Stack]:
    """Broker up, topics made, PKI made, services started and consuming."""
    stack = Stack(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with stack.broker:
        asyncio.run(
            ensure_topics(stack.settings, all_topics(stack.settings.topics, load_registry()), 2)
        )
        stack.make_pki()
        stack.start_services()
        try:
            stack.wait_ready()
            yield stack
        finally:
            stack.stop_services()


@dataclass
class Scenario:
    name: str
    expect: str
    document_id: str = ""
    outcome: str = "?"
    ok: bool = False
    note: str = ""


def _publish(stack: Stack, *args: str | Path) -> dict[str, object]:
    """``docbus publish --wait --json``, as an agency system would run it."""
    done = subprocess.run(
        _docbus(
            "publish",
            "--wait",
            "--json",
            "--trust",
            stack.trust,
            "--outbox",
            stack.folder / "outbox.sqlite",
            "--timeout",
            "60",
            *args,
        ),
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if not done.stdout.strip():
        raise RuntimeError(f"publish failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, object] = json.loads(done.stdout)
    return result


async def _statuses(
    stack: Stack, until: dict[str, set[tuple[str, str]]], seconds: float
) -> dict[str, list[Status]]:
    """Every verified status on the status topic, by document, until ``until`` is met."""
    verifier = Verifier(TrustStore.load(stack.trust), Policy(issued_at_tolerance=None))
    found: dict[str, list[Status]] = {}
    consumer = AIOKafkaConsumer(
        stack.settings.topics.status,
        **stack.settings.common(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
    )
    await consumer.start()

    def met() -> bool:
        return all(
            want <= {(s.code.value, s.by) for s in found.get(doc, [])}
            for doc, want in until.items()
        )

    try:
        deadline = time.monotonic() + seconds
        while not met() and time.monotonic() < deadline:
            for part in (await consumer.getmany(timeout_ms=200)).values():
                for record in part:
                    verdict = verifier.verify(record.value or b"", now_ms())
                    if isinstance(verdict, Verified) and isinstance(verdict.payload, Status):
                        found.setdefault(verdict.payload.document_id, []).append(verdict.payload)
    finally:
        await consumer.stop()
    return found


def run_demo(data_dir: Path | None) -> bool:
    """Run every scenario; True only if every document met its expected fate."""
    folder = data_dir or Path(tempfile.mkdtemp(prefix="docbus-demo-"))
    console = Console(width=None if sys.stdout.isatty() else 120)
    started = time.monotonic()
    console.print(f"[bold]docbus demo[/] in {folder}")
    with running(folder) as stack:
        console.print(
            f"broker {stack.broker.bootstrap}; gateway, archiver and inboxes of "
            f"{', '.join(INBOXES)} running"
        )
        scenarios = _run_scenarios(stack, folder)
        scenarios.append(_audit(stack))
    table = Table(title="What happened")
    for column in ("scenario", "document", "expected", "outcome", ""):
        table.add_column(column)
    for s in scenarios:
        table.add_row(s.name, s.document_id[:13], s.expect, s.outcome, "✓" if s.ok else "✗")
    console.print(table)
    for s in scenarios:
        if s.note:
            console.print(s.note)
    ok = all(s.ok for s in scenarios)
    console.print(
        f"{'[green]all outcomes as expected' if ok else '[red]some outcomes differ'}[/] "
        f"in {time.monotonic() - started:.1f}s; data in {folder}"
    )
    return ok


def _audit(stack: Stack) -> Scenario:
    """The auditor's two checks: the archive against its signed checkpoints, and every
    delivery to Nghệ An replayed against the archive."""
    scenario = Scenario("audit: archive and replay", "clean")
    archive = stack.folder / "archive"
    checks = [
        _docbus(
            "audit",
            "verify-archive",
            "--data-dir",
            archive,
            "--trust",
            stack.trust,
            "--report",
            stack.folder / "audit-archive.html",
        ),
        _docbus(
            "audit",
            "replay",
            "--topic",
            stack.settings.topics.deliver("nghe-an"),
            "--archive",
            archive,
            "--trust",
            stack.trust,
            "--report",
            stack.folder / "audit-replay.json",
        ),
    ]
    codes = [
        subprocess.run(c, env=stack.env, capture_output=True, text=True, timeout=120).returncode
        for c in checks
    ]
    scenario.ok = codes == [0, 0]
    with Archive(archive / "archive.sqlite") as store:
        latest = store.latest_checkpoint()
    final = latest.checkpoint if latest else None
    scenario.document_id = f"{final.size} entries" if final else "-"
    if final is not None:
        scenario.note = (
            f"final checkpoint: {final.origin}, {final.size} entries, root {final.root.hex()}, "
            f"signed {final.at.isoformat()}"
        )
    scenario.outcome = ("clean" if scenario.ok else f"exit codes {codes}") + (
        f"; checkpoint {final.size} {final.root.hex()[:16]}…" if final else ""
    )
    return scenario


def _send_raw(stack: Stack, record: bytes, key: bytes) -> None:
    async def send() -> None:
        producer = stack.settings.producer()
        await producer.start()
        try:
            await producer.send_and_wait(stack.settings.topics.submitted, record, key=key)
        finally:
            await producer.stop()

    asyncio.run(send())


def _run_scenarios(stack: Stack, folder: Path) -> list[Scenario]:
    letter = folder / "cong-van.txt"
    letter.write_text("Kính gửi: UBND các tỉnh.\nVăn phòng Chính phủ thông báo ...\n", "utf-8")
    ministry = [
        "--from",
        MINISTRY,
        "--file",
        str(letter),
        "--signer",
        _pair(stack.pki, MINISTRY, CertRole.SIGNER),
        "--seal",
        _pair(stack.pki, MINISTRY, CertRole.AGENCY),
    ]
    rogue = DevPki(folder / "rogue-pki")
    if not (rogue.root / "ca").exists():
        rogue.init()
    rogue.issue(MINISTRY, CertRole.SIGNER, KeyAlgorithm.ED25519)
    rogue.issue(MINISTRY, CertRole.AGENCY, KeyAlgorithm.ED25519)
    impostor = [
        "--from",
        MINISTRY,
        "--signer",
        _pair(rogue.root, MINISTRY, CertRole.SIGNER),
        "--seal",
        _pair(rogue.root, MINISTRY, CertRole.AGENCY),
    ]
    plan: list[tuple[Scenario, list[str]]] = [
        (
            Scenario("plain: ministry → province", "ARCHIVED, RECEIVED by H41"),
            [
                *ministry,
                "--to",
                NGHE_AN,
                "--subject",
                "V/v kết nối, liên thông phần mềm quản lý văn bản",
            ],
        ),
        (
            Scenario("two jurisdictions", "ARCHIVED, RECEIVED by H41 and H06"),
            [
                *ministry,
                "--to",
                NGHE_AN,
                "--to",
                BAC_NINH,
                "--subject",
                "V/v triển khai Nghị quyết 57-NQ/TW",
                "--code-number",
                "57-NQ/TW",
                "--priority",
                "URGENT",
            ],
        ),
        (
            Scenario("merged province: Bắc Giang", "ARCHIVED via H06, RECEIVED by H06"),
            [*ministry, "--to", BAC_GIANG, "--subject", "V/v bàn giao hồ sơ sau sắp xếp"],
        ),
        (
            Scenario("unknown agency", "REJECTED unknown_recipient"),
            [*ministry, "--to", UNKNOWN, "--subject", "Gửi nhầm địa chỉ"],
        ),
        (
            Scenario("untrusted CA", "REJECTED untrusted_certificate"),
            [*impostor, "--to", NGHE_AN, "--subject", "Văn bản giả danh Văn phòng Chính phủ"],
        ),
    ]
    states: dict[str, str] = {}
    for scenario, args in plan:
        result = _publish(stack, *args)
        scenario.document_id = str(result["document_id"])
        states[scenario.document_id] = " ".join(
            str(x) for x in (result["state"], result.get("reason")) if x
        )
    secret = Scenario("SECRET, sealed to H41 and H06", "opened by H41, H06 only")
    secret_subject, secret_body = "Phương án bảo vệ bí mật nhà nước", "Nội dung TUYỆT MẬT"
    (folder / "mat.txt").write_text(secret_body, "utf-8")
    result = _publish(
        stack,
        "--from",
        MINISTRY,
        "--file",
        folder / "mat.txt",
        "--signer",
        _pair(stack.pki, MINISTRY, CertRole.SIGNER),
        "--seal",
        _pair(stack.pki, MINISTRY, CertRole.AGENCY),
        "--to",
        NGHE_AN,
        "--to",
        BAC_NINH,
        "--subject",
        secret_subject,
        "--confidential",
        "SECRET",
        "--address-book",
        stack.pki / "agencies",
        "--kem",
        KemAlgorithm.MLKEM768_X25519.value,
    )
    secret.document_id = str(result["document_id"])
    states[secret.document_id] = str(result["state"])
    legacy = Scenario("edXML in through the bridge", "ARCHIVED, edXML out at H41")
    done = subprocess.run(
        _docbus(
            "edxml",
            "import",
            str(files("bus") / "data" / "legacy-message.edxml"),
            "--signer",
            _pair(stack.pki, BRIDGE, CertRole.SERVICE),
            "--seal",
            _pair(stack.pki, MINISTRY, CertRole.AGENCY),
            "--outbox",
            stack.folder / "bridge-outbox.sqlite",
            "--trust",
            stack.trust,
        ),
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    legacy.document_id = done.stdout.split(" ")[0] if done.returncode == 0 else ""
    tampered = Scenario("tampered in transit", "REJECTED bad_signature")
    event = folder / "tampered.avro"
    done = subprocess.run(
        _docbus(
            "publish",
            *ministry,
            "--to",
            NGHE_AN,
            "--subject",
            "Quyết định bổ nhiệm",
            "--output",
            event,
        ),
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    tampered.document_id = done.stdout.split()[0]
    raw = bytearray(event.read_bytes())
    raw[raw.index("bổ nhiệm".encode())] ^= 0x01
    _send_raw(stack, bytes(raw), tampered.document_id.encode())

    plain, multi, merged, unknown, untrusted = (s for s, _ in plan)
    until = {
        plain.document_id: {("RECEIVED", NGHE_AN)},
        multi.document_id: {("RECEIVED", NGHE_AN), ("RECEIVED", BAC_NINH)},
        merged.document_id: {("RECEIVED", BAC_NINH)},
        tampered.document_id: {("REJECTED", GATEWAY)},
        secret.document_id: {("RECEIVED", NGHE_AN), ("RECEIVED", BAC_NINH)},
        legacy.document_id: {("ARCHIVED", ARCHIVER), ("RECEIVED", NGHE_AN)},
    }
    seen = asyncio.run(_statuses(stack, until, seconds=30))

    def codes(doc: str) -> set[tuple[str, str]]:
        return {(s.code.value, s.by) for s in seen.get(doc, [])}

    for s, agencies in ((plain, [NGHE_AN]), (multi, [NGHE_AN, BAC_NINH]), (merged, [BAC_NINH])):
        received = [a for a in agencies if ("RECEIVED", a) in codes(s.document_id)]
        s.outcome = (
            f"{states[s.document_id]}, RECEIVED by {', '.join(a[-3:] for a in received) or '-'}"
        )
        s.ok = states[s.document_id] == "ARCHIVED" and len(received) == len(agencies)
    rerouted = [
        st.rerouted for st in seen.get(merged.document_id, []) if st.code is StatusCode.DELIVERED
    ]
    merged.ok = merged.ok and rerouted == [{BAC_GIANG: BAC_NINH}]
    merged.outcome = merged.outcome.replace(
        "ARCHIVED", "ARCHIVED via H06" if merged.ok else "ARCHIVED"
    )
    for s in (unknown, untrusted):
        s.outcome = states[s.document_id]
        s.ok = s.outcome == s.expect
    verdicts = [st for st in seen.get(tampered.document_id, []) if st.code is StatusCode.REJECTED]
    tampered.outcome = (
        " ".join(["REJECTED", *(st.reason or "" for st in verdicts)]) if verdicts else "?"
    )
    tampered.ok = tampered.outcome == tampered.expect
    _check_secret(stack, secret, states[secret.document_id], secret_subject, secret_body)
    out = folder / "edxml-out" / NGHE_AN / f"{quote(legacy.document_id, safe='')}-r0.edxml"
    exported = out.read_text("utf-8") if out.exists() else ""
    archived = ("ARCHIVED", ARCHIVER) in codes(legacy.document_id)
    legacy.ok = archived and "qua trục liên thông" in exported and "<edXML:Subject>" in exported
    legacy.outcome = (
        f"{'ARCHIVED' if archived else 'not archived'}; "
        f"{'edXML written for the legacy system' if legacy.ok else 'no edXML out'}"
    )
    return [plain, multi, merged, unknown, untrusted, secret, legacy, tampered]


def _check_secret(stack: Stack, scenario: Scenario, state: str, subject: str, body: str) -> None:
    """Recipients read it; a third agency's inbox, the gateway and the archive cannot."""
    folder = stack.folder
    opened = [
        a[-3:]
        for a in (NGHE_AN, BAC_NINH)
        if subject in _read(folder / "inbox" / a / scenario.document_id / "0" / "document.json")
        and _read(folder / "inbox" / a / scenario.document_id / "0" / "attachments" / "mat.txt")
        == body
    ]
    outsider_kept = (folder / "inbox" / SO_NOI_VU_NGHE_AN / scenario.document_id).exists()
    event = folder / "secret.avro"
    archive = folder / "archive" / "archive.sqlite"
    leaks = [
        p.name
        for p in (
            archive,
            archive.with_name("archive.sqlite-wal"),
            *(folder / "logs").glob("*.log"),
        )
        if p.exists() and (subject.encode() in p.read_bytes() or body.encode() in p.read_bytes())
    ]
    done = subprocess.run(
        _docbus(
            "archive",
            "export",
            scenario.document_id,
            "--data-dir",
            folder / "archive",
            "--out",
            folder / "secret-export",
        ),
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    exported = folder / "secret-export" / "r0" / "event.avro"
    if done.returncode == 0 and exported.exists():
        event.write_bytes(exported.read_bytes())
    refused = (
        subprocess.run(
            _docbus(
                "open",
                event,
                "--key",
                stack.pki / "agencies" / SO_NOI_VU_NGHE_AN / "encryption.key.pem",
                "--trust",
                stack.trust,
                "--out",
                folder / "outsider-open",
            ),
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        ).returncode
        == 1
        and event.exists()
    )
    scenario.ok = (
        state == "ARCHIVED" and len(opened) == 2 and not outsider_kept and not leaks and refused
    )
    scenario.outcome = (
        f"{state}, opened by {', '.join(opened) or '-'}; third agency "
        f"{'refused' if refused and not outsider_kept else 'READ IT'}; "
        f"{'no plaintext in archive or logs' if not leaks else 'LEAK in ' + ', '.join(leaks)}"
    )


def _read(path: Path) -> str:
    return path.read_text("utf-8") if path.exists() else ""


def run_dev(data_dir: Path | None) -> None:
    """The same stack as the demo, left running until Ctrl-C."""
    folder = data_dir or Path(tempfile.mkdtemp(prefix="docbus-dev-"))
    console = Console()
    with running(folder) as stack:
        bootstrap = stack.broker.bootstrap
        console.print(f"broker:      {bootstrap}  (export DOCBUS_BOOTSTRAP={bootstrap})")
        console.print(f"trust store: {stack.trust}")
        console.print(f"keys:        {stack.pki / 'agencies'}")
        console.print(f"archive:     {folder / 'archive'}")
        console.print(f"inboxes:     {folder / 'inbox'}")
        console.print(f"logs:        {folder / 'logs'}")
        console.print("Ctrl-C stops everything.")
        signal.signal(signal.SIGTERM, _interrupt)
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.poll() is None for p in stack.processes.values()):
                time.sleep(0.5)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
