"""The agency node over real HTTP (uvicorn) on a real broker: a document system that knows
only HTTP sends, follows, receives and acknowledges; bad input stops at the edge."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bus.directory.generate import make_directory
from bus.directory.signed import sign_directory
from bus.kafka.broker import EmbeddedBroker
from bus.kafka.records import document_record, send_once, status_record
from bus.kafka.runtime import Output
from bus.registry import Registry
from bus.trust.pki import KemAlgorithm, pem_cert
from bus.trust.sealing import EncryptionKey
from bus.wire.codec import default_codec
from bus.wire.model import Action, Role, Status, StatusCode, event_digest, now_ms
from bus.wire.names import path_segment
from consumers.agency.app import EVENT_TYPE, create_app
from consumers.agency.node import AgencyNode, NodeKeys
from consumers.received import ReceivedIndex
from producers.document import new_document
from tests.conftest import MINISTRY, Pki
from tests.stack import BAC_NINH, NGHE_AN, Stack, running_stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "t" * 32
DOCBUS = str(Path(sys.executable).with_name("docbus"))


@dataclass
class Node:
    url: str
    node: AgencyNode
    client: httpx.AsyncClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node(
    stack: Stack,
    agency: str,
    folder: Path,
    encryption: EncryptionKey | None = None,
    previous: tuple[EncryptionKey, ...] = (),
) -> AgencyNode:
    signer, agency_key = stack.pki.key(agency, Role.SIGNER), stack.pki.key(agency, Role.AGENCY)
    keys = NodeKeys(signer, agency_key, encryption, previous)
    return AgencyNode(
        agency,
        keys,
        stack.pki.dev.trust_dir,
        folder,
        stack.settings,
        stack.registry,
        stack.blobs,
        reload_seconds=1,
    )


@contextlib.asynccontextmanager
async def _serve(node: AgencyNode) -> AsyncIterator[Node]:
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(node, TOKEN), host="127.0.0.1", port=port, log_config=None)
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                await asyncio.sleep(0.05)
                if task.done():
                    task.result()
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            yield Node(url, node, client)
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def nodes(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> AsyncIterator[tuple[Stack, Node, Node]]:
    """The bus's services, a ministry's node and Nghệ An's node (its inbox is the node's)."""
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        await stack.stop_service(f"inbox-{NGHE_AN}")
        async with (
            _serve(_node(stack, MINISTRY, tmp_path / "ministry")) as ministry,
            _serve(_node(stack, NGHE_AN, tmp_path / "nghe-an")) as nghe_an,
        ):
            yield stack, ministry, nghe_an


async def _chunks(chunk: bytes, n: int) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield chunk


async def _until(check: Callable[[], Any], seconds: float = 30) -> Any:
    """Poll ``check`` as an HTTP client would (the node offers no push)."""
    async with asyncio.timeout(seconds):
        while not (found := await check()):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    return found


async def test_a_document_system_sends_follows_receives_and_acknowledges_over_http(
    nodes: tuple[Stack, Node, Node], tmp_path: Path
) -> None:
    _, ministry, nghe_an = nodes
    body = "Nội dung kế hoạch".encode()
    posted = await ministry.client.post(
        "/v1/documents",
        json={
            "recipients": [NGHE_AN],
            "subject": "Kế hoạch chuyển đổi số",
            "code_number": "12/KH-VPCP",
            "attachments": [
                {
                    "name": "ke-hoach.txt",
                    "media_type": "text/plain",
                    "content_base64": base64.b64encode(body).decode(),
                }
            ],
        },
    )
    assert posted.status_code == 202, posted.text
    document_id = posted.json()["document_id"]

    async def archived() -> dict[str, Any] | None:
        state = (await ministry.client.get(f"/v1/documents/{document_id}")).json()
        return state if state["state"] == "ARCHIVED" else None

    state = await _until(archived)
    codes = {(s["code"], s["by"]) for s in state["statuses"]}
    assert ("DELIVERED", "docbus.gateway") in codes and ("ARCHIVED", "docbus.archiver") in codes
    assert state["receipt"]["tree_size"] >= 1 and state["receipt"]["checkpoint"]

    async def listed() -> list[dict[str, Any]]:
        page = (await nghe_an.client.get("/v1/inbox")).json()
        return [i for i in page["items"] if i["document_id"] == document_id]

    [item] = await _until(listed)
    assert item["sender"] == MINISTRY and item["subject"] == "Kế hoạch chuyển đổi số"
    roles = {s["role"] for s in item["verified"]["signers"]}
    assert roles == {"SIGNER", "AGENCY"}
    base = f"/v1/inbox/{MINISTRY}/{document_id}/0"
    shown = (await nghe_an.client.get(base)).json()
    assert shown["code_number"] == "12/KH-VPCP" and shown["verification"]["verified"]
    assert (await nghe_an.client.get(f"{base}/attachments/0")).content == body
    event = await nghe_an.client.get(f"{base}/event")
    assert event.headers["content-type"] == EVENT_TYPE
    assert "Kế hoạch chuyển đổi số" in (await nghe_an.client.get(f"{base}/edxml")).text

    ack = await nghe_an.client.post(f"{base}/status", json={"code": "ACCEPTED"})
    assert ack.status_code == 202, ack.text

    async def accepted() -> bool:
        state = (await ministry.client.get(f"/v1/documents/{document_id}")).json()
        return ("ACCEPTED", NGHE_AN) in {(s["code"], s["by"]) for s in state["statuses"]}

    assert await _until(accepted)

    # The same from a terminal: docbus inbox list|show|ack against the node.
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    node = ("--node", nghe_an.url, "--token-file", str(token))
    listed_json = await _docbus("inbox", "list", "--json", *node)
    assert document_id in {i["document_id"] for i in json.loads(listed_json)["items"]}
    shown_json = await _docbus("inbox", "show", MINISTRY, document_id, *node)
    assert json.loads(shown_json)["subject"] == "Kế hoạch chuyển đổi số"
    await _docbus("inbox", "ack", MINISTRY, document_id, "--code", "COMPLETED", *node)

    async def completed() -> bool:
        state = (await ministry.client.get(f"/v1/documents/{document_id}")).json()
        return ("COMPLETED", NGHE_AN) in {(s["code"], s["by"]) for s in state["statuses"]}

    assert await _until(completed)
    down = await asyncio.to_thread(
        subprocess.run,
        [DOCBUS, "inbox", "list", "--node", "http://127.0.0.1:1", "--token-file", str(token)],
        capture_output=True,
        text=True,
    )
    assert down.returncode == 75 and down.stderr.count("\n") == 1, down.stderr


async def _docbus(*args: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run, [DOCBUS, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_a_batch_is_answered_document_by_document(
    nodes: tuple[Stack, Node, Node],
) -> None:
    _, ministry, nghe_an = nodes
    good = [{"recipients": [NGHE_AN], "subject": f"Văn bản hàng loạt {n}"} for n in range(3)]
    unknown = {"recipients": ["000.00.00.Z99"], "subject": "Không ai nhận"}
    malformed = {"recipients": [NGHE_AN]}  # no subject
    posted = await ministry.client.post(
        "/v1/documents:batch", json={"documents": [good[0], unknown, good[1], malformed, good[2]]}
    )
    assert posted.status_code == 200, posted.text
    items = posted.json()["items"]
    assert [i["status"] for i in items] == [202, 422, 202, 400, 202]
    assert items[1]["problem"]["reason"] == "unknown_recipient"
    assert (
        items[3]["problem"]["reason"] == "malformed" and "subject" in items[3]["problem"]["detail"]
    )
    queued = [items[n]["document"]["document_id"] for n in (0, 2, 4)]

    async def all_listed() -> bool:
        listed = (await nghe_an.client.get("/v1/inbox")).json()["items"]
        return set(queued) <= {i["document_id"] for i in listed}

    await _until(all_listed)
    too_many = await ministry.client.post("/v1/documents:batch", json={"documents": good * 34})
    assert too_many.status_code == 400 and too_many.json()["reason"] == "malformed"


async def test_bad_input_stops_at_the_edge_with_a_problem(
    nodes: tuple[Stack, Node, Node],
) -> None:
    stack, ministry, _ = nodes
    anonymous = httpx.AsyncClient(base_url=ministry.url)
    post = ministry.client.post
    cases = [
        (await anonymous.post("/v1/documents", json={}), 401, None),
        (
            await anonymous.get("/v1/inbox", headers={"Authorization": "Bearer " + "x" * 32}),
            401,
            None,
        ),
        (
            await post("/v1/documents", json={"recipients": ["000.00.00.H99"], "subject": "x"}),
            422,
            "unknown_recipient",
        ),
        (
            await post("/v1/documents", json={"recipients": ["../../x"], "subject": "x"}),
            422,
            "unknown_recipient",
        ),
        (await post("/v1/documents", json={"recipients": [], "subject": "x"}), 400, "malformed"),
        (
            await post(
                "/v1/documents",
                content=b'{"recipients": ["\xff\xfe"], "subject": "x"}',
                headers={"content-type": "application/json"},
            ),
            400,
            "malformed",
        ),
        (
            await post(
                "/v1/documents", content=b"subject=x", headers={"content-type": "text/plain"}
            ),
            415,
            None,
        ),
        (
            await post(
                "/v1/documents",
                content=_chunks(b"x" * 65536, 200),  # 13 MB, chunked: no Content-Length
                headers={"content-type": "application/json"},
            ),
            413,
            "too_large",
        ),
        (await ministry.client.get("/v1/documents/never-sent"), 404, None),
        (await ministry.client.get(f"/v1/inbox/{NGHE_AN}/never/0"), 404, None),
    ]
    await anonymous.aclose()
    for response, status, reason in cases:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == status and problem["detail"]
        assert problem.get("reason") == reason
    # A record signed elsewhere: another agency's is refused by name, a genuine one queued.
    foreign = new_document(NGHE_AN, [MINISTRY], "Không phải của Bộ")
    foreign_record = document_record(
        foreign, [stack.pki.key(NGHE_AN, Role.SIGNER), stack.pki.key(NGHE_AN, Role.AGENCY)]
    )
    refused = await post("/v1/events", content=foreign_record, headers={"content-type": EVENT_TYPE})
    assert refused.status_code == 422 and refused.json()["reason"] == "sender_mismatch"
    tampered = bytearray(document_record(new_document(MINISTRY, [NGHE_AN], "Sửa"), stack.ministry))
    tampered[-5] ^= 1
    bad = await post("/v1/events", content=bytes(tampered), headers={"content-type": EVENT_TYPE})
    assert bad.status_code == 422 and bad.json()["reason"] in ("bad_signature", "malformed")
    own = new_document(MINISTRY, [NGHE_AN], "Hệ thống tự ký")
    queued = await post(
        "/v1/events",
        content=document_record(own, stack.ministry),
        headers={"content-type": EVENT_TYPE},
    )
    assert queued.status_code == 202 and queued.json()["document_id"] == own.document_id
    # Nothing refused at the edge reached the bus.
    assert ministry.node.outbox.get(foreign.document_id) is None
    assert [e.document_id for e in ministry.node.outbox.entries()] == [own.document_id]


async def test_the_openapi_document_is_committed_and_schemathesis_finds_nothing(
    nodes: tuple[Stack, Node, Node], tmp_path: Path
) -> None:
    _, ministry, _ = nodes
    served = (await ministry.client.get("/openapi.json")).json()
    committed = json.loads((ROOT / "docs" / "openapi" / "agency.json").read_text("utf-8"))
    assert served == committed, "run: python -m consumers.agency.openapi > docs/openapi/agency.json"
    assert served["openapi"].startswith("3.1")
    run = await asyncio.to_thread(
        subprocess.run,
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{ministry.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--max-examples",
            "15",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
            "--exclude-path",
            "/v1/events",  # a signed Avro record: generated bytes say nothing about it
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # its cache stays out of the repository
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def _node_process(stack: Stack, folder: Path, keys: Path, port: int) -> subprocess.Popen[bytes]:
    log = (folder / "node.log").open("ab")
    return subprocess.Popen(
        [
            DOCBUS,
            *("serve", "agency", "--agency", MINISTRY, "--keys", str(keys)),
            *("--trust", str(stack.pki.dev.trust_dir), "--data-dir", str(folder / "node")),
            *("--listen", f"127.0.0.1:{port}", "--bootstrap", stack.settings.bootstrap),
        ],
        env={**os.environ, "DOCBUS_BLOB_DIR": str(stack.blobs.root)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def _up(url: str, process: subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(60), httpx.AsyncClient() as client:
        while True:
            assert process.poll() is None, "the node exited"
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)


async def test_a_node_killed_mid_stream_loses_and_duplicates_nothing(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path / "bus") as stack:
        keys = tmp_path / "keys"
        keys.mkdir()
        for role in (Role.SIGNER, Role.AGENCY):
            stack.pki.key(MINISTRY, role)  # issued into the development PKI's folder
            for kind in ("key", "cert"):
                name = f"{role.value.lower()}.{kind}.pem"
                issued = stack.pki.dev.root / "agencies" / MINISTRY / name
                (keys / name).write_bytes(issued.read_bytes())
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        node = _node_process(stack, tmp_path, keys, port)
        await _up(url, node)
        token = (tmp_path / "node" / "token").read_text().strip()
        accepted: list[str] = []
        hundred = asyncio.Event()

        async def post(client: httpx.AsyncClient, i: int) -> None:
            with contextlib.suppress(httpx.TransportError):
                r = await client.post(
                    "/v1/documents", json={"recipients": [NGHE_AN], "subject": f"Số {i}"}
                )
                if r.status_code == 202:
                    accepted.append(r.json()["document_id"])
                    if len(accepted) >= 100:
                        hundred.set()

        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            posting = [asyncio.create_task(post(client, i)) for i in range(300)]
            await hundred.wait()
            node.kill()  # SIGKILL: no shutdown, no flush, no commit
            await asyncio.gather(*posting)
        node.wait()
        assert 100 <= len(accepted) < 300
        node = _node_process(stack, tmp_path, keys, port)
        try:
            await _up(url, node)
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:

                async def all_archived() -> bool:
                    for document_id in accepted:
                        state = (await client.get(f"/v1/documents/{document_id}")).json()
                        if state["state"] != "ARCHIVED":
                            return False
                    return True

                assert await _until(all_archived, seconds=120)
        finally:
            node.terminate()
            node.wait(30)
        for document_id in accepted:
            [entry] = stack.archive.find(document_id)  # archived once, never twice
            assert not entry.conflict
            inbox = stack.inbox_folder(NGHE_AN) / path_segment(MINISTRY) / document_id
            assert [p.name for p in inbox.iterdir()] == ["0"]


async def test_files_sent_as_multipart_arrive_whole_small_inline_large_by_hash(
    nodes: tuple[Stack, Node, Node],
) -> None:
    _, ministry, nghe_an = nodes
    small, large = b"Phu luc", os.urandom(700 * 1024)  # the large one goes by the blob store
    posted = await ministry.client.post(
        "/v1/documents",
        data={"metadata": json.dumps({"recipients": [NGHE_AN], "subject": "Hồ sơ kèm tệp"})},
        files=[
            ("file", ("phu-luc.txt", small, "text/plain")),
            ("file", ("ban-ve.dwg", large, "application/octet-stream")),
        ],
    )
    assert posted.status_code == 202, posted.text
    document_id = posted.json()["document_id"]
    base = f"/v1/inbox/{MINISTRY}/{document_id}/0"

    async def received() -> bool:
        return (await nghe_an.client.get(base)).status_code == 200

    await _until(received)
    got = [(await nghe_an.client.get(f"{base}/attachments/{n}")) for n in (0, 1)]
    assert [g.content for g in got] == [small, large]
    assert got[1].headers["x-content-type-options"] == "nosniff"
    record = (await nghe_an.client.get(f"{base}/event")).content
    assert len(record) < 64 * 1024  # the large file travelled by hash
    missing = await ministry.client.post(
        "/v1/documents", files=[("file", ("a.txt", b"x", "text/plain"))]
    )
    assert missing.status_code == 400 and missing.json()["reason"] == "malformed"


async def test_a_secret_document_is_sealed_to_the_certificate_the_directory_names(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    # No address book anywhere: the ministry's node seals with what the directory names.
    key_file, cert_file = pki.dev.issue_encryption(NGHE_AN, KemAlgorithm.X25519)
    operator = pki.key("docbus.directory", Role.SERVICE)
    signer = pem_cert(*pki.key(MINISTRY, Role.SIGNER).chain).decode()
    directory = make_directory(
        json.loads((files("bus") / "data" / "registry.json").read_text("utf-8")),
        {NGHE_AN: cert_file.read_text("ascii")},
        1,
        datetime.now(UTC),
        signing={MINISTRY: [signer]},
    )
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        await stack.stop_service(f"inbox-{NGHE_AN}")
        for key, record in sign_directory(directory, operator):
            await send_once(stack.settings, Output(stack.settings.topics.directory, key, record))
        opener = EncryptionKey.from_pem(key_file.read_bytes())
        recipient = _node(stack, NGHE_AN, tmp_path / "nghe-an", opener)
        async with (
            _serve(_node(stack, MINISTRY, tmp_path / "ministry")) as ministry,
            _serve(recipient) as nghe_an,
        ):
            await _until(_directory_in_force(ministry.node))
            await _agencies_as_the_directory_names_them(ministry, cert_file.read_text(), signer)
            body = "Chỉ người nhận được đọc".encode()
            document_id = await _secret(ministry, "Phương án tuyệt mật", body)
            kept = ministry.node.outbox.get(document_id, 0)
            assert kept is not None and body not in kept.record  # sealed before it left

            async def opened() -> bytes | None:
                got = await nghe_an.client.get(
                    f"/v1/inbox/{MINISTRY}/{document_id}/0/attachments/0"
                )
                return got.content if got.status_code == 200 else None

            assert await _until(opened) == body


async def _agencies_as_the_directory_names_them(node: Node, sealing: str, signer: str) -> None:
    """An integrator looks recipients up on its node: unit, jurisdiction, certificates."""
    found = (await node.client.get(f"/v1/agencies/{NGHE_AN}")).json()
    assert found["jurisdiction"] == "nghe-an" and found["in_force"] is True
    assert found["encryption_certificate"] == sealing
    ministry = (await node.client.get(f"/v1/agencies/{MINISTRY}")).json()
    assert ministry["signing_certificates"] == [signer]
    assert ministry["encryption_certificate"] is None
    page = (await node.client.get("/v1/agencies", params={"unit": "nghe-an", "limit": 1})).json()
    assert [a["code"] for a in page["items"]] == [NGHE_AN] and page["directory_version"] == 1
    rest = await node.client.get("/v1/agencies", params={"unit": "nghe-an", "after": page["next"]})
    assert all(a["code"] > NGHE_AN for a in rest.json()["items"])
    unknown = await node.client.get("/v1/agencies/000.00.00.Z99")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    anonymous = await node.client.get(f"/v1/agencies/{NGHE_AN}", headers={"authorization": ""})
    assert anonymous.status_code == 401


def _directory_in_force(node: AgencyNode, version: int = 1) -> Callable[[], Any]:
    async def check() -> bool:
        return node.directory is not None and node.directory.version >= version

    return check


async def test_a_renewed_encryption_certificate_seals_the_next_document_and_old_ones_still_open(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    operator = pki.key("docbus.directory", Role.SERVICE)
    shipped = json.loads((files("bus") / "data" / "registry.json").read_text("utf-8"))
    old_key, old_cert = pki.dev.issue_encryption(NGHE_AN, KemAlgorithm.X25519)
    old = (EncryptionKey.from_pem(old_key.read_bytes()), old_cert.read_text("ascii"))
    new_key, new_cert = pki.dev.issue_encryption(NGHE_AN, KemAlgorithm.X25519)  # renewed
    new = (EncryptionKey.from_pem(new_key.read_bytes()), new_cert.read_text("ascii"))
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        await stack.stop_service(f"inbox-{NGHE_AN}")
        topic = stack.settings.topics.directory

        async def publish(version: int, cert: str) -> None:
            made = make_directory(shipped, {NGHE_AN: cert}, version, datetime.now(UTC))
            for key, record in sign_directory(made, operator):
                await send_once(stack.settings, Output(topic, key, record))

        await publish(1, old[1])
        # The recipient's node holds the renewed key and keeps the old one.
        recipient = _node(stack, NGHE_AN, tmp_path / "nghe-an", new[0], (old[0],))
        async with (
            _serve(_node(stack, MINISTRY, tmp_path / "ministry")) as ministry,
            _serve(recipient) as nghe_an,
        ):
            await _until(_directory_in_force(ministry.node, 1))
            first = await _secret(ministry, "Trước khi đổi khóa")
            await publish(2, new[1])
            await _until(_directory_in_force(ministry.node, 2))
            second = await _secret(ministry, "Sau khi đổi khóa")
            for document_id, cert in ((first, old[1]), (second, new[1])):
                kept = ministry.node.outbox.get(document_id, 0)
                assert kept is not None
                sealed = _sealed_to(kept.record)
                assert sealed == {_key_id(cert)}  # the certificate in force when it was sent
                path = f"/v1/inbox/{MINISTRY}/{document_id}/0/attachments/0"

                async def opened(path: str = path) -> bytes | None:
                    got = await nghe_an.client.get(path)
                    return got.content if got.status_code == 200 else None

                assert await _until(opened) == b"mat"


async def _secret(node: Node, subject: str, body: bytes = b"mat") -> str:
    """POST a SECRET document to Nghệ An with one attachment holding ``body``; its id."""
    posted = await node.client.post(
        "/v1/documents",
        json={
            "recipients": [NGHE_AN],
            "subject": subject,
            "confidentiality": "SECRET",
            "attachments": [{"name": "mat.txt", "content_base64": base64.b64encode(body).decode()}],
        },
    )
    assert posted.status_code == 202, posted.text
    return str(posted.json()["document_id"])


def _sealed_to(record: bytes) -> set[str]:
    codec = default_codec()
    doc = codec.decode_document(codec.decode_event(record).payload)
    assert doc.sealed is not None
    return {k.key_id for k in doc.sealed.keys}


def _key_id(pem: str) -> str:
    """The sealing key id of an encryption certificate file (its leaf, the chain after it)."""
    leaf = x509.load_pem_x509_certificates(pem.encode())[0]
    return hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


async def test_a_revised_then_revoked_document_shows_its_state_in_the_recipients_node(
    nodes: tuple[Stack, Node, Node],
) -> None:
    stack, ministry, nghe_an = nodes
    doc = new_document(MINISTRY, [NGHE_AN], "Kế hoạch tập huấn năm 2027")
    lives = [
        doc,
        dataclasses.replace(doc, revision=1, action=Action.UPDATE, subject="Kế hoạch (bổ sung)"),
        dataclasses.replace(doc, revision=2, action=Action.REVOKE),
    ]
    view = f"/v1/inbox/{MINISTRY}/{doc.document_id}"
    for life in lives:
        queued = await ministry.client.post(
            "/v1/events",
            content=document_record(life, stack.ministry),
            headers={"content-type": EVENT_TYPE},
        )
        assert queued.status_code == 202, queued.text

        async def arrived(revision: int = life.revision) -> bool:
            return (await nghe_an.client.get(f"{view}/{revision}")).status_code == 200

        await _until(arrived)  # in order: a revision follows one the inbox holds
    seen = [(await nghe_an.client.get(f"{view}/{r}")).json() for r in range(3)]
    assert [(s["action"], s["state"], s["superseded_by"]) for s in seen] == [
        ("NEW", "superseded", 1),
        ("UPDATE", "withdrawn", 2),
        ("REVOKE", "revocation", None),
    ]
    listed = (await nghe_an.client.get("/v1/inbox")).json()["items"]
    assert [i["state"] for i in listed if i["document_id"] == doc.document_id] == [
        "superseded",
        "withdrawn",
        "revocation",
    ]


async def test_a_withdrawal_is_asked_by_the_sender_alone_and_answered_by_the_recipient(
    nodes: tuple[Stack, Node, Node],
) -> None:
    # edXML 13 → 15/16 end to end: the ministry asks Nghệ An to withdraw a document; Nghệ
    # An's node shows the request and its answer reaches the ministry's node. Another agency
    # holding a genuine certificate, writing to the status topic, cannot ask in its stead.
    stack, ministry, nghe_an = nodes
    posted = await ministry.client.post(
        "/v1/documents", json={"recipients": [NGHE_AN], "subject": "Công văn gửi nhầm"}
    )
    document_id = posted.json()["document_id"]
    view = f"/v1/inbox/{MINISTRY}/{document_id}/0"

    async def listed() -> bool:
        return (await nghe_an.client.get(view)).status_code == 200

    await _until(listed)
    early = await nghe_an.client.post(f"{view}/status", json={"code": "CHANGE_ACCEPTED"})
    assert early.status_code == 409  # nothing was asked yet
    sent = ministry.node.outbox.get(document_id)
    assert sent is not None
    intruder = stack.pki.key(BAC_NINH, Role.AGENCY)
    forged = [
        # Bắc Ninh asks in its own name: it sent no such document.
        Status(document_id, StatusCode.WITHDRAW_REQUESTED, BAC_NINH, now_ms(),
               event_digest=event_digest(sent.record)),
        # Bắc Ninh's key, the ministry's name: the signature is not the sender's.
        Status(document_id, StatusCode.WITHDRAW_REQUESTED, MINISTRY, now_ms(),
               event_digest=event_digest(sent.record)),
    ]  # fmt: skip
    for status in forged:
        await send_once(
            stack.settings,
            # Keyed for the recipient, as a genuine request is: its node reads it.
            Output(
                stack.settings.topics.status, NGHE_AN.encode(), status_record(status, [intruder])
            ),
        )
    # Nghệ An "answers" a request that was never made, with its own genuine key.
    unasked = Status(
        document_id,
        StatusCode.CHANGE_REFUSED,
        NGHE_AN,
        now_ms(),
        event_digest=event_digest(sent.record),
    )
    value = status_record(unasked, [stack.pki.key(NGHE_AN, Role.AGENCY)])
    key = MINISTRY.encode()  # keyed for the sender: its node reads it, in order
    await send_once(stack.settings, Output(stack.settings.topics.status, key, value))
    await asyncio.sleep(3)  # the ministry's node reads it (within a fetch wait) before asking
    asked = await ministry.client.post(
        f"/v1/documents/{document_id}/withdraw", json={"message": "Gửi nhầm, đề nghị thu hồi"}
    )
    assert asked.status_code == 202, asked.text

    async def requested() -> list[dict[str, Any]]:
        return list((await nghe_an.client.get(view)).json()["requests"])

    [request] = await _until(requested)
    assert (
        request["code"] == "WITHDRAW_REQUESTED"
        and request["message"] == "Gửi nhầm, đề nghị thu hồi"
    )
    answer = await nghe_an.client.post(f"{view}/status", json={"code": "CHANGE_ACCEPTED"})
    assert answer.status_code == 202, answer.text

    async def answered() -> set[tuple[str, str]]:
        state = (await ministry.client.get(f"/v1/documents/{document_id}")).json()
        codes = {(s["code"], s["by"]) for s in state["statuses"]}
        return codes if ("CHANGE_ACCEPTED", NGHE_AN) in codes else set()

    codes = await _until(answered)
    assert ("WITHDRAW_REQUESTED", MINISTRY) in codes
    assert ("WITHDRAW_REQUESTED", BAC_NINH) not in codes
    assert ("CHANGE_REFUSED", NGHE_AN) not in codes  # an answer to nothing is not kept
    assert len((await nghe_an.client.get(view)).json()["requests"]) == 1  # forgeries ignored


async def test_what_is_due_and_not_completed_is_overdue_until_the_recipient_completes_it(
    nodes: tuple[Stack, Node, Node],
) -> None:
    _, ministry, nghe_an = nodes
    sent = {}
    for name, due in (("late", "2026-01-10"), ("later", "2099-01-01"), ("undated", None)):
        body: dict[str, Any] = {"recipients": [NGHE_AN], "subject": f"Báo cáo {name}"}
        if due:
            body["due_date"] = due
        sent[name] = (await ministry.client.post("/v1/documents", json=body)).json()["document_id"]

    async def all_listed() -> bool:
        items = (await nghe_an.client.get("/v1/inbox")).json()["items"]
        return set(sent.values()) <= {i["document_id"] for i in items}

    await _until(all_listed)
    overdue = (await nghe_an.client.get("/v1/inbox/overdue", params={"on": "2026-06-01"})).json()
    assert [(i["document_id"], i["due_date"]) for i in overdue["items"]] == [
        (sent["late"], "2026-01-10")
    ]
    view = f"/v1/inbox/{MINISTRY}/{sent['late']}/0"
    assert (await nghe_an.client.get(view)).json()["due_date"] == "2026-01-10"
    for code in ("ACCEPTED", "COMPLETED"):  # only the closing feedback takes it off
        answer = await nghe_an.client.post(f"{view}/status", json={"code": code})
        assert answer.status_code == 202
        still = (await nghe_an.client.get("/v1/inbox/overdue", params={"on": "2026-06-01"})).json()
        assert bool(still["items"]) is (code == "ACCEPTED")
    later = (await nghe_an.client.get("/v1/inbox/overdue", params={"on": "2100-01-01"})).json()
    assert [i["document_id"] for i in later["items"]] == [sent["later"]]


def test_an_inbox_index_made_before_due_dates_gains_them(tmp_path: Path) -> None:
    old = tmp_path / "received.sqlite"
    with sqlite3.connect(old) as db:
        db.execute(
            "CREATE TABLE received (seq INTEGER PRIMARY KEY AUTOINCREMENT, sender TEXT NOT NULL,"
            " document_id TEXT NOT NULL, revision INTEGER NOT NULL, subject TEXT NOT NULL,"
            " received_at TEXT NOT NULL, verification TEXT NOT NULL,"
            " UNIQUE (sender, document_id, revision))"
        )
        db.execute(
            "INSERT INTO received VALUES (1, ?, 'x', 0, 'cũ', '2026-01-01T00:00:00+00:00', '{}')",
            (MINISTRY,),
        )
    index = ReceivedIndex(old)
    [kept] = index.after(0, 10)
    assert kept.subject == "cũ" and kept.due_date is None and kept.answered is None
    index.add(MINISTRY, "y", 0, "mới", datetime.now(UTC), {}, date(2026, 2, 1))
    assert [r.document_id for r in index.overdue(date(2026, 3, 1), 10)] == ["y"]
    index.close()
