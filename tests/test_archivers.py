"""Several archivers on one PostgreSQL archive (DESIGN §6), on the real broker.

The archivers are real ``docbus serve archiver`` processes in one consumer group over the
delivery partitions; one of them is SIGKILLed while documents stream in.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from bus.audit.verify import verify_archive
from bus.audit.witness import Witness, WitnessState, witness_once
from bus.kafka.broker import EmbeddedBroker
from bus.kafka.topics import Topics
from bus.registry import Registry
from bus.store.archive import open_archive
from bus.store.outbox import State
from bus.trust.pki import CertRole, KeyAlgorithm
from bus.trust.verifier import Verifier
from bus.wire.model import Role
from producers.document import new_document
from tests.conftest import MINISTRY, Pki, postgres_database
from tests.stack import NGHE_AN, running_stack, start_gateway

pytestmark = pytest.mark.integration

DOCUMENTS = 300


def _archiver(
    broker: EmbeddedBroker, pki: Pki, url: str, folder: Path, key: tuple[Path, Path]
) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "log").open("wb")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bus",
            "serve",
            "archiver",
            "--database",
            url,
            "--data-dir",
            str(folder),
            "--trust",
            str(pki.dev.trust_dir),
            "--key",
            f"{key[0]},{key[1]}",
        ],
        env={**broker.client_env(), "DOCBUS_TRUST_RELOAD_SECONDS": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def test_three_archivers_archive_each_document_once_in_one_log_though_one_is_killed(
    broker: EmbeddedBroker, pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    # One log, one pinned identity: the three share the archiver's key.
    key = pki.dev.issue("docbus.archiver", CertRole.SERVICE, KeyAlgorithm.ED25519, replace=True)
    with postgres_database() as url:
        async with running_stack(
            broker.bootstrap, pki, registry, tmp_path, services=False, partitions=3
        ) as stack:
            start_gateway(stack)
            await stack.started()
            archivers = [
                _archiver(broker, pki, url, tmp_path / f"archiver-{i}", key) for i in range(3)
            ]
            try:
                sent: list[str] = []

                async def stream() -> None:
                    for i in range(DOCUMENTS):
                        doc = new_document(MINISTRY, [NGHE_AN], f"Công văn số {i}")
                        await stack.publisher.publish(doc)
                        sent.append(doc.document_id)
                        await asyncio.sleep(0.01)

                def archived() -> int:
                    with open_archive(None, database=url) as archive:
                        return archive.count()

                streaming = asyncio.create_task(stream())
                async with asyncio.timeout(120):
                    while (await asyncio.to_thread(archived)) < DOCUMENTS // 3:  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                archivers[0].kill()  # SIGKILL mid-stream: no commit, no goodbye
                await streaming
                async with asyncio.timeout(180):
                    for document_id in sent:
                        entry = await stack.publisher.wait(document_id)
                        assert entry.state is State.ARCHIVED, entry
                # A witness follows the checkpoints the three published side by side, in
                # whatever order they reached the topic, to the end and with no false
                # alarm: a checkpoint the killed archiver signed and never published is
                # published again by the archiver that got its re-deliveries.
                state = WitnessState(tmp_path / "witness")
                witness = Witness(
                    Verifier(pki.trust), pki.key("docbus.witness", Role.SERVICE), state, Topics()
                )
                await witness_once(stack.settings, witness)
                assert not state.alarms()
                last = state.last("docbus.archiver")
                assert last is not None and last[0].size == DOCUMENTS
                state.close()
            finally:
                for p in archivers:
                    p.terminate()
                for p in archivers:
                    p.wait(30)
        with open_archive(None, database=url) as archive:
            rows = archive.entries()
            assert sorted(r.document_id for r in rows) == sorted(sent)  # each once
            assert not any(r.conflict for r in rows)
            assert sorted(r.log_index for r in rows) == list(range(DOCUMENTS))
            assert archive.log_size() == DOCUMENTS
            report = verify_archive(archive, Verifier(pki.trust))
        assert report.clean, report.findings
        assert report.checkpoints and report.checkpoints[-1].size == DOCUMENTS
    # The work was shared: at least two of the processes archived documents.
    logs = [(tmp_path / f"archiver-{i}" / "log").read_text("utf-8") for i in range(3)]
    assert sum('"archived"' in log for log in logs) >= 2, logs
    # Log indexes are assigned inside each transaction, one writer at a time: no batch ever
    # failed on an index another archiver took (they would be retried, and hide the race).
    assert not any('"batch failed"' in log for log in logs), logs
