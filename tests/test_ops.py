"""A service's ops endpoints (DESIGN §10) on the real broker: /metrics counts what the
service did, its lag is measured, and /readyz follows the broker going away and back."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import httpx
import pytest
from aiokafka.admin import NewTopic
from prometheus_client.parser import text_string_to_metric_families

from bus.kafka.broker import EmbeddedBroker, free_port
from bus.kafka.records import document_record, send_once
from bus.kafka.runtime import Output
from bus.kafka.topics import all_topics, ensure_topics
from bus.registry import Registry, load_registry
from bus.trust.pki import CertRole, KeyAlgorithm
from bus.wire.model import Role
from producers.document import new_document
from tests.conftest import MINISTRY, Pki
from tests.stack import NGHE_AN

pytestmark = pytest.mark.integration


def rejected_reason(seen: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> str:
    """The reason label of the one rejection the metrics counted."""
    [reason] = [
        dict(labels)["reason"]
        for (name, labels), value in seen.items()
        if name == "docbus_rejected_total" and value
    ]
    return reason


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _gateway(
    broker: EmbeddedBroker, pki: Pki, key: tuple[Path, Path], port: int, log: Path
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "bus", "serve", "gateway"),
                *("--trust", str(pki.dev.trust_dir), "--key", f"{key[0]},{key[1]}"),
                *("--listen", f"127.0.0.1:{port}"),
            ],
            env=broker.client_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _until(check: Callable[[], bool], seconds: float) -> float:
    """Poll until ``check`` holds; how long it took."""
    start = time.monotonic()
    async with asyncio.timeout(seconds):
        while not await asyncio.to_thread(check):  # noqa: ASYNC110  (HTTP has no push)
            await asyncio.sleep(0.5)
    return time.monotonic() - start


async def test_the_gateway_counts_its_work_and_is_ready_only_while_the_broker_answers(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    settings = broker.settings()
    await ensure_topics(settings, all_topics(settings.topics, registry), 2)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    key = pki.dev.issue("docbus.gateway", CertRole.SERVICE, KeyAlgorithm.ED25519, replace=True)
    log = tmp_path / "gateway.log"
    gateway = _gateway(broker, pki, key, port, log)

    def status(path: str) -> int:
        try:
            return httpx.get(base + path, timeout=2).status_code
        except httpx.HTTPError:
            return 0

    def metrics() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return _samples(httpx.get(base + "/metrics", timeout=2).text)

    try:
        await _until(lambda: status("/readyz") == 200, 60)
        assert status("/healthz") == 200
        keys = [pki.key(MINISTRY, Role.SIGNER), pki.key(MINISTRY, Role.AGENCY)]
        for i in range(5):
            value = document_record(new_document(MINISTRY, [NGHE_AN], f"Văn bản {i}"), keys)
            await send_once(settings, Output(settings.topics.submitted, None, value))
        forged = bytearray(document_record(new_document(MINISTRY, [NGHE_AN], "Giả"), keys))
        forged[-3] ^= 1
        await send_once(settings, Output(settings.topics.submitted, None, bytes(forged)))
        read = ("docbus_records_in_total", (("stage", "gateway"), ("topic", "docbus.submitted")))
        await _until(lambda: metrics().get(read) == 6, 30)
        seen = metrics()
        deliver = settings.topics.deliver(registry.resolve(NGHE_AN, date.today()).jurisdiction.id)
        out = "docbus_records_out_total"
        assert seen[(out, (("stage", "gateway"), ("topic", deliver)))] == 5
        assert seen[(out, (("stage", "gateway"), ("topic", "docbus.status")))] == 6
        assert seen[(out, (("stage", "gateway"), ("topic", "docbus.rejected")))] == 1
        rejected = [
            v for (name, labels), v in seen.items() if name == "docbus_rejected_total" and v
        ]
        assert rejected == [1]
        latency = ("docbus_stage_latency_seconds_count", (("stage", "gateway"),))
        assert seen[latency] == 6

        def caught_up() -> bool:
            lags = [v for (name, _), v in metrics().items() if name == "docbus_consumer_lag"]
            return bool(lags) and sum(lags) == 0

        await _until(caught_up, 30)  # committed offsets reach the end of every partition
        broker.stop()
        went = await _until(lambda: status("/readyz") == 503, 30)
        assert status("/healthz") == 200  # alive, only not ready
        broker.start()
        await _until(lambda: status("/readyz") == 200, 60)
        assert went <= 30
    finally:
        gateway.terminate()
        gateway.wait(30)
    # Its log: JSON lines, each naming the service; those about a record say where it is.
    lines = [json.loads(line) for line in log.read_text("utf-8").splitlines()]
    assert lines and all(line["service"] == "gateway" for line in lines)
    delivered = [line for line in lines if line["event"] == "delivered"]
    assert len(delivered) == 5
    assert all({"document_id", "topic", "partition", "offset"} <= set(d) for d in delivered)
    [refused] = [line for line in lines if line["event"] == "rejected"]
    assert refused["level"] == "warning" and refused["reason"] == rejected_reason(seen)
    assert refused["topic"] == "docbus.submitted" and refused["offset"] >= 0


async def test_topics_check_names_what_differs_and_ensure_creates_what_is_missing(
    broker: EmbeddedBroker,
) -> None:
    settings = broker.settings()
    admin = settings.admin()
    await admin.start()
    try:  # made by hand: one partition, kept for a day
        await admin.create_topics(
            [NewTopic("docbus.status", 1, 1, topic_configs={"retention.ms": "86400000"})]
        )
    finally:
        await admin.close()

    def docbus(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bus", "topics", *args, "--bootstrap", broker.bootstrap],
            capture_output=True,
            text=True,
            timeout=60,
        )

    checked = await asyncio.to_thread(docbus, "check", "--partitions", "2")
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert "differs: docbus.status: partitions is 1, expected 64" in checked.stdout
    assert "differs: docbus.status: retention.ms is 86400000, expected -1" in checked.stdout
    assert "differs: docbus.submitted: topic is missing, expected present" in checked.stdout
    ensured = await asyncio.to_thread(docbus, "ensure", "--partitions", "2")
    assert "docbus.submitted: created" in ensured.stdout
    assert "docbus.status: exists" in ensured.stdout
    # What ensure cannot change by creating is still said, and still fails the command.
    total = len(all_topics(settings.topics, load_registry()))
    assert ensured.returncode == 1 and f"{total} topics, 3 differences" in ensured.stdout


def _children(pid: int) -> dict[int, str]:
    """The processes ``pid`` started (and theirs), by pid, with their command lines."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid or parent in found:
            found[int(entry.name)] = command
    return found


def _dev(folder: Path) -> tuple[subprocess.Popen[str], list[str]]:
    """``docbus dev`` started in ``folder``, and what it printed until it was up."""
    dev = subprocess.Popen(
        [sys.executable, "-m", "bus", "dev", "--data-dir", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert dev.stdout is not None
    lines = []
    for line in dev.stdout:
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            break
    return dev, lines


def test_docbus_dev_says_which_child_died_and_why(tmp_path: Path) -> None:
    dev, lines = _dev(tmp_path)
    try:
        [broker] = [p for p, c in _children(dev.pid).items() if "tansu" in c and " broker " in c]
        os.kill(broker, signal.SIGKILL)
        rest, _ = dev.communicate(timeout=60)
    finally:
        if dev.poll() is None:
            dev.kill()
    assert dev.returncode == 1, "".join(lines) + rest
    assert "the broker died: killed by SIGKILL" in rest
    assert "Traceback" not in rest


def test_with_docbus_dev_a_secret_document_goes_by_curl_alone_and_its_recipient_opens_it(
    tmp_path: Path,
) -> None:
    # The README's integrator flow: JSON over HTTP, no keys or address book on the sender's
    # side; the node seals to the certificate the national directory names.
    dev, lines = _dev(tmp_path)
    try:
        urls = {}
        for line in lines:
            if found := re.search(r"(\d{3}\.\d{2}\.\d{2}\.[A-Z]\d{2})\s.*?(http://\S+)", line):
                urls[found[1]] = found[2]
        body = "Chỉ Nghệ An đọc được".encode()

        def node(agency: str) -> httpx.Client:
            token = (tmp_path / "nodes" / agency / "token").read_text().strip()
            return httpx.Client(
                base_url=urls[agency], headers={"Authorization": f"Bearer {token}"}, timeout=30
            )

        with node("000.00.00.G22") as ministry, node("000.00.00.H41") as nghe_an:
            posted = _posted_when_sealable(ministry, body)
            document_id = posted.json()["document_id"]
            path = f"/v1/inbox/000.00.00.G22/{document_id}/0/attachments/0"
            for _ in range(120):
                opened = nghe_an.get(path)
                if opened.status_code == 200:
                    break
                time.sleep(0.5)
            assert opened.status_code == 200 and opened.content == body, opened.text
    finally:
        dev.terminate()
        dev.wait(60)


def _posted_when_sealable(ministry: httpx.Client, body: bytes) -> httpx.Response:
    """POST a SECRET document; a node that has not read the directory yet answers 422."""
    draft = {
        "recipients": ["000.00.00.H41"],
        "subject": "Phương án tuyệt mật",
        "confidentiality": "SECRET",
        "attachments": [{"name": "mat.txt", "content_base64": base64.b64encode(body).decode()}],
    }
    for _ in range(60):
        posted = ministry.post("/v1/documents", json=draft)
        if posted.status_code == 202:
            return posted
        time.sleep(0.5)
    raise AssertionError(posted.text)
