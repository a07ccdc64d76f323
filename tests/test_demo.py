"""`docbus demo`, the main job on a fresh machine, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bus.store.archive import Archive

pytestmark = pytest.mark.integration


def test_the_demo_meets_every_expected_outcome(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bus", "demo", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all outcomes as expected" in done.stdout
    assert done.stdout.count("✓") == 9
    assert (
        "final checkpoint: docbus.archiver, 5 entries, root " in done.stdout
        and "✗" not in done.stdout
    )
    assert "Traceback" not in done.stdout + done.stderr
    archive = Archive(tmp_path / "archive" / "archive.sqlite")
    try:
        # plain, two-jurisdiction, merged-province, secret and edXML documents; nothing rejected
        assert archive.count() == 5
    finally:
        archive.close()
    received = list((tmp_path / "inbox").glob("*/*/*/0/event.avro"))
    # H41: plain, two-jurisdiction, secret, edXML; H06: two-jurisdiction, merged, secret
    assert len(received) == 7
    [legacy] = (tmp_path / "edxml-out" / "000.00.00.H41").glob("000.00.00.G22-000.00.00.G22*.edxml")
    assert "<edXML:Subject>V/v gửi nhận văn bản điện tử" in legacy.read_text("utf-8")
    assert not list((tmp_path / "inbox" / "000.00.01.H41").glob("*/*/0/event.avro"))
