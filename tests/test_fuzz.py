"""The fuzzing job (DESIGN §7): each target fuzzed for a bounded time on every run, and
every input that once crashed one replayed as a regression test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bus.kafka.records import document_record
from bus.wire.model import Role, attachment
from producers.document import new_document
from tests.conftest import MINISTRY, Pki

DATA = Path(__file__).parent / "data"
SECONDS = int(os.environ.get("DOCBUS_FUZZ_SECONDS", "12"))
TARGETS = ("codec", "verifier", "edxml", "inbox")


def _seeds(target: str, pki: Pki, folder: Path) -> Path:
    """A corpus to start from: genuine records, the edXML samples, the crashes kept."""
    folder.mkdir()
    if target in ("codec", "verifier"):
        keys = [pki.key(MINISTRY, Role.SIGNER), pki.key(MINISTRY, Role.AGENCY)]
        doc = new_document(MINISTRY, ["000.00.00.H41"], "Hạt giống")
        doc = doc.__class__(**{**doc.__dict__, "attachments": (attachment("a.txt", b"x"),)})
        (folder / "record").write_bytes(document_record(doc, keys))
    if target == "edxml":
        for sample in (DATA / "edxml").glob("*.edxml"):
            (folder / sample.name).write_bytes(sample.read_bytes())
    for crash in (DATA / "fuzz" / target).glob("*"):
        (folder / crash.name).write_bytes(crash.read_bytes())
    return folder


@pytest.mark.parametrize("target", TARGETS)
def test_fuzzing_finds_no_crash(target: str, pki: Pki, tmp_path: Path) -> None:
    seeds = _seeds(target, pki, tmp_path / "seeds")
    (tmp_path / "corpus").mkdir()
    run = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parent / "fuzz.py"),
            target,
            str(SECONDS),
            "corpus",
            str(seeds),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SECONDS * 10 + 120,
    )
    crashes = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("timeout-*"))
    found = "\n".join(f"{c.name}: {c.read_bytes().hex()}" for c in crashes)
    assert run.returncode == 0 and not crashes, (
        f"{target}: keep each input below under tests/data/fuzz/{target}/\n{found}\n"
        + run.stderr[-4000:]
    )
    assert "Done" in run.stderr  # it ran its time out, not stopped at the start


@pytest.mark.parametrize(
    "crash",
    sorted((DATA / "fuzz").glob("*/*")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_what_once_crashed_a_target_no_longer_does(crash: Path, tmp_path: Path) -> None:
    from tests.fuzz import target

    target(crash.parent.name, tmp_path)(crash.read_bytes())
