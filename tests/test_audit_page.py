"""The archive's /audit page in a real browser (headless Chromium, Debian's package).

An archive made on the real broker, cosigned by a witness, with a conflict the archiver
kept, and verified by `docbus audit verify-archive`; the page must show each of its parts,
in the DOM and on the screenshot (each part's heading band has a colour of its own).
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bus.audit.witness import Witness, WitnessState, witness_once
from bus.kafka.broker import EmbeddedBroker
from bus.kafka.records import document_record, send_once
from bus.kafka.runtime import Output
from bus.kafka.topics import Topics
from bus.registry import Registry
from bus.store.archive import SqliteArchive
from bus.store.outbox import State
from bus.trust.verifier import Verifier
from bus.wire.model import Role
from consumers.archive_api import create_archive_app
from consumers.audit_page import PARTS
from producers.document import new_document
from tests.conftest import MINISTRY, Pki
from tests.serving import serving
from tests.stack import NGHE_AN, running_stack

pytestmark = pytest.mark.integration


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:  # no skip: .ci/deps installs Debian's chromium
        pytest.fail("chromium is needed for the audit page test (apt-get install chromium)")
    return found


def _browse(url: str, screenshot: Path) -> str:
    """The page's DOM as the browser built it, and its screenshot."""
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    subprocess.run(
        [*base, f"--screenshot={screenshot}", "--window-size=1100,1500", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return dom


def _colour_rows(png: Path, colour: str) -> int:
    """How many rows of the screenshot show a long run of exactly this colour."""
    rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    image = Image.open(png).convert("RGB")
    width, height = image.size
    pixels = image.load()
    assert pixels is not None
    return sum(
        1 for y in range(height) if sum(pixels[x, y] == rgb for x in range(0, width, 10)) > 50
    )


async def test_the_audit_page_shows_checkpoints_cosignatures_the_last_audit_and_conflicts(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    async with running_stack(broker.bootstrap, pki, registry, tmp_path) as stack:
        docs = [new_document(MINISTRY, [NGHE_AN], f"Báo cáo kiểm toán {i}") for i in range(3)]
        for doc in docs:
            await stack.publisher.publish(doc)
            async with asyncio.timeout(30):
                assert (await stack.publisher.wait(doc.document_id)).state is State.ARCHIVED
        # Other bytes under the first document's identity: the archiver keeps and flags it.
        twin = document_record(dataclasses.replace(docs[0], subject="Bản khác"), stack.ministry)
        topic = stack.settings.topics.submitted
        await send_once(stack.settings, Output(topic, docs[0].document_id.encode(), twin))
        async with asyncio.timeout(30):
            while not stack.archive.conflicts():  # noqa: ASYNC110  (the archive has no push)
                await asyncio.sleep(0.1)
        state = WitnessState(tmp_path / "witness")
        witness = Witness(
            Verifier(pki.trust), pki.key("docbus.witness", Role.SERVICE), state, Topics()
        )
        await witness_once(stack.settings, witness)
        state.close()
        assert witness.cosigned >= 1
        audited = await asyncio.to_thread(
            subprocess.run,
            [
                *(sys.executable, "-m", "bus", "audit", "verify-archive"),
                *("--data-dir", str(tmp_path), "--trust", str(pki.dev.trust_dir)),
                *("--bootstrap", broker.bootstrap),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert audited.returncode == 0, audited.stdout + audited.stderr
    archive = SqliteArchive(tmp_path / "archive.sqlite", read_only=True)
    shot = tmp_path / "audit.png"
    try:
        async with serving(create_archive_app(archive)) as url:
            dom = await asyncio.to_thread(_browse, f"{url}/audit", shot)
    finally:
        archive.close()
    for key, title, _ in PARTS:
        assert f'id="{key}"' in dom and title in dom
    assert "docbus.witness" in dom  # the witness's cosignature, verified by verify-archive
    assert "<strong>clean</strong>" in dom
    assert docs[0].document_id in dom  # the conflict kept
    assert ">4</code>" in dom  # the checkpoint covering all four rows
    for key, _, colour in PARTS:  # each part's band is on the screenshot
        assert _colour_rows(shot, colour) >= 10, key
