"""`docbus demo`, the main job on a fresh machine, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bus.store.archive import open_archive
from tests.conftest import Store

pytestmark = pytest.mark.integration


def test_the_demo_meets_every_expected_outcome(tmp_path: Path, store: Store) -> None:
    # On SQLite and on PostgreSQL (`docbus demo --database URL`).
    database = ["--database", store.database] if store.database else []
    done = subprocess.run(
        [sys.executable, "-m", "bus", "demo", "--data-dir", str(tmp_path), *database],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all outcomes as expected" in done.stdout
    assert done.stdout.count("✓") == 14
    # Among them: the plain document found by its subject typed without diacritics, and
    # its evidence bundle proven offline.
    assert "archive: search, then" in done.stdout
    assert (
        "final checkpoint: docbus.archiver, 7 entries, root " in done.stdout
        and "✗" not in done.stdout
    )
    assert "Traceback" not in done.stdout + done.stderr
    archive = open_archive(tmp_path / "archive", database=store.database)
    try:
        # plain, two-jurisdiction, merged-province, secret and edXML documents, the one
        # forged statuses could not settle and the one signed before its key was revoked;
        # no attack's document
        assert archive.count() == 7
    finally:
        archive.close()
    received = list((tmp_path / "inbox").glob("*/*/*/0/event.avro"))
    # H41: plain, two-jurisdiction, secret, edXML, the two attacked ones that were genuine;
    # H06: two-jurisdiction, merged, secret
    assert len(received) == 9
    [legacy] = (tmp_path / "edxml-out" / "000.00.00.H41").glob("000.00.00.G22-000.00.00.G22*.edxml")
    assert "<edXML:Subject>V/v gửi nhận văn bản điện tử" in legacy.read_text("utf-8")
    assert not list((tmp_path / "inbox" / "000.00.01.H41").glob("*/*/0/event.avro"))
