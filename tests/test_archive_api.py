"""The archive API over real HTTP, on an archive the real archiver wrote: search with and
without diacritics, paging, a document, an evidence bundle that verifies offline; and
nothing can be written through it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bus.audit.evidence import Evidence, check_evidence
from bus.kafka.records import document_record
from bus.kafka.topics import Topics
from bus.registry import load_registry
from bus.store.archive import Archive, SqliteArchive
from bus.store.blobs import BlobStore
from bus.trust.signing import SigningKey
from bus.trust.verifier import Policy, Verifier
from bus.wire.errors import Misconfigured
from bus.wire.model import Action, Role, attachment
from consumers.archive_api import create_archive_app
from consumers.archiver import Archiver
from producers.document import new_document
from tests.conftest import MINISTRY, Pki
from tests.records import delivered
from tests.serving import serving
from tests.stack import NGHE_AN
from tests.test_audit import archive_file, archiver_key  # noqa: F401  (the fixtures)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def api(archive_file: Path) -> AsyncIterator[tuple[str, Archive]]:  # noqa: F811
    archive = SqliteArchive(archive_file, read_only=True)
    try:
        async with serving(create_archive_app(archive)) as url:
            yield url, archive
    finally:
        archive.close()


async def test_search_finds_subjects_without_their_diacritics_and_pages(
    api: tuple[str, Archive], pki: Pki
) -> None:
    url, _ = api
    async with httpx.AsyncClient(base_url=url) as client:
        found = (await client.get("/v1/archive/documents", params={"q": "van ban 3"})).json()
        assert [i["subject"] for i in found["items"]] == ["Văn bản 3"]
        assert (await client.get("/v1/archive/documents", params={"q": "VĂN BẢN 3"})).json()[
            "items"
        ] == found["items"]
        by = {"sender": MINISTRY, "recipient": NGHE_AN, "limit": 3}
        first = (await client.get("/v1/archive/documents", params=by)).json()
        second = (
            await client.get("/v1/archive/documents", params={**by, "cursor": first["next"]})
        ).json()
        assert len(first["items"]) == 3 and first["next"] is not None
        assert {i["document_id"] for i in first["items"]}.isdisjoint(
            i["document_id"] for i in second["items"]
        )
        nobody = await client.get("/v1/archive/documents", params={"sender": "000.00.00.H99"})
        assert nobody.json() == {"items": [], "next": None}
        item = found["items"][0]
        base = f"/v1/archive/documents/{item['sender']}/{item['document_id']}/0"
        shown = (await client.get(base)).json()
        assert shown["subject"] == "Văn bản 3" and shown["log_index"] == item["log_index"]
        bundle = await client.get(f"{base}/evidence")
        assert bundle.status_code == 200
        proven = check_evidence(
            Evidence.from_bytes(bundle.content),
            Verifier(pki.trust, Policy(issued_at_tolerance=None)),
        )
        assert proven.document.subject == "Văn bản 3"
        missing = await client.get(f"/v1/archive/documents/{MINISTRY}/never/0")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"


async def test_nothing_can_be_written_through_the_api_and_schemathesis_finds_nothing(
    api: tuple[str, Archive], tmp_path: Path
) -> None:
    url, archive = api
    with pytest.raises(Misconfigured, match="readonly"):
        archive._db.execute("DELETE FROM entries")
    run = await asyncio.to_thread(
        subprocess.run,
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{url}/openapi.json",
            "--max-examples",
            "15",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def _archiving(
    pki: Pki,
    key: SigningKey,
    folder: Path,
    bus_blobs: Path,
) -> tuple[list[SigningKey], SigningKey, SqliteArchive, Archiver]:
    """The ministry's keys, a gateway's, an archive in ``folder`` and the real archiver."""
    archive = SqliteArchive(folder / "archive.sqlite")
    verifier = Verifier(pki.trust, Policy(), load_registry())
    archiver = Archiver(archive, key, Topics(), verifier, BlobStore(bus_blobs))
    keys = [pki.key(MINISTRY, Role.SIGNER), pki.key(MINISTRY, Role.AGENCY)]
    return keys, pki.key("docbus.gateway", Role.SERVICE), archive, archiver


def test_the_committed_openapi_is_the_served_one() -> None:
    served = create_archive_app(SqliteArchive.__new__(SqliteArchive)).openapi()
    committed = json.loads((ROOT / "docs" / "openapi" / "archive.json").read_text("utf-8"))
    assert served == committed, "run: python -m consumers.archive_api > docs/openapi/archive.json"


async def test_a_documents_history_says_which_revision_is_in_force_and_when_it_is_revoked(
    pki: Pki,
    archiver_key: SigningKey,  # noqa: F811
    tmp_path: Path,
) -> None:
    keys, gateway, archive, archiver = _archiving(pki, archiver_key, tmp_path, tmp_path / "blobs")
    doc = new_document(MINISTRY, [NGHE_AN], "Quyết định ban hành quy chế")
    lives = [
        doc,
        dataclasses.replace(doc, revision=1, action=Action.UPDATE, subject="Quyết định (sửa đổi)"),
        dataclasses.replace(doc, revision=2, action=Action.REPLACE, subject="Quyết định thay thế"),
    ]
    records = [document_record(d, keys) for d in lives]
    await archiver.handle([delivered(v, gateway, i) for i, v in enumerate(records)])
    app = create_archive_app(archive)
    base = f"/v1/archive/documents/{MINISTRY}/{doc.document_id}"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://a") as c:
        life = (await c.get(f"{base}/history")).json()
        assert life["current"] == 2 and not life["revoked"]
        assert [(r["action"], r["state"], r["by"]) for r in life["revisions"]] == [
            ("NEW", "superseded", 1),
            ("UPDATE", "superseded", 2),
            ("REPLACE", "current", None),
        ]
        first = (await c.get(f"{base}/0")).json()
        assert first["state"] == "superseded" and first["current_revision"] == 2
        revoke = dataclasses.replace(doc, revision=3, action=Action.REVOKE, attachments=())
        await archiver.handle([delivered(document_record(revoke, keys), gateway, 3)])
        life = (await c.get(f"{base}/history")).json()
        assert life["current"] is None and life["revoked"]
        assert [r["state"] for r in life["revisions"]] == [
            "superseded",
            "superseded",
            "withdrawn",
            "revocation",
        ]
        assert (
            await c.get(f"/v1/archive/documents/{NGHE_AN}/{doc.document_id}/history")
        ).status_code == 404
    archive.close()


async def test_attachments_come_back_as_archived_inline_or_from_the_archives_blob_store(
    pki: Pki,
    archiver_key: SigningKey,  # noqa: F811
    tmp_path: Path,
) -> None:
    bus_blobs = BlobStore(tmp_path / "bus-blobs")
    keys, gateway, archive, archiver = _archiving(
        pki, archiver_key, tmp_path / "archive", tmp_path / "bus-blobs"
    )
    small, large = "Tờ trình".encode(), os.urandom(300_000)
    doc = dataclasses.replace(
        new_document(MINISTRY, [NGHE_AN], "Hồ sơ kèm tệp"),
        attachments=(
            attachment("tờ trình.txt", small),
            attachment("bản vẽ.pdf", large),
            attachment("x.txt", b"x", "text/plain\r\nSet-Cookie: a=1"),  # written by the sender
        ),
    )
    doc = bus_blobs.offload(doc, 100_000)
    assert doc.attachments[1].content is None  # it travels by hash
    await archiver.handle([delivered(document_record(doc, keys), gateway, 0)])
    (tmp_path / "bus-blobs").rename(tmp_path / "gone")  # the archive keeps its own copy
    app = create_archive_app(archive)
    base = f"/v1/archive/documents/{MINISTRY}/{doc.document_id}/0/attachments"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://a") as c:
        first, second = await c.get(f"{base}/0"), await c.get(f"{base}/1")
        assert first.content == small and second.content == large
        assert second.headers["content-type"] == "application/pdf"
        assert second.headers["content-disposition"].startswith("attachment;")
        assert second.headers["x-content-type-options"] == "nosniff"
        odd = await c.get(f"{base}/2")  # a media type no header can carry: served as bytes
        assert odd.content == b"x"
        assert odd.headers["content-type"] == "application/octet-stream"
        assert "set-cookie" not in odd.headers
        assert (await c.get(f"{base}/3")).status_code == 404
    archive.close()
