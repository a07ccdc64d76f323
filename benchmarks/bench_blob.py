"""A 100 MiB attachment through the whole bus, each service a ``docbus serve`` process:
published (``docbus publish --wait``), delivered, archived and written into the recipient's
inbox. Prints each process's peak RSS and the times, beside bare SHA-256 and a bare file
copy of the same bytes measured in the same run.

    python -m benchmarks.bench_blob [--mib 100]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_audit import PEAK
from bus.demo.stack import MINISTRY, NGHE_AN, CertRole, Stack, pair, running
from bus.wire.names import path_segment


def peak_mib(pid: int) -> float:
    """A running process's peak resident memory (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def bare(path: Path, scratch: Path) -> tuple[float, float]:
    """Seconds of a bare streamed SHA-256 and a bare file copy of ``path``."""
    start = time.perf_counter()
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    hashed = time.perf_counter() - start
    start = time.perf_counter()
    shutil.copyfile(path, scratch / "copy.bin")
    copied = time.perf_counter() - start
    (scratch / "copy.bin").unlink()
    return hashed, copied


def publish(stack: Stack, big: Path) -> tuple[dict[str, object], float, float]:
    """``docbus publish --wait`` of ``big``: (its JSON outcome, seconds, peak RSS MiB)."""
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            PEAK,
            "publish",
            "--from",
            MINISTRY,
            "--to",
            NGHE_AN,
            "--subject",
            "Bản đồ số 100 MiB",
            "--file",
            str(big),
            "--signer",
            pair(stack.pki, MINISTRY, CertRole.SIGNER),
            "--seal",
            pair(stack.pki, MINISTRY, CertRole.AGENCY),
            "--trust",
            str(stack.trust),
            "--outbox",
            str(stack.folder / "outbox.sqlite"),
            "--wait",
            "--json",
            "--timeout",
            "300",
        ],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    seconds = time.perf_counter() - start
    if not done.stdout.strip():
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout), seconds, int(done.stderr.split()[-1]) / 1024


def received(stack: Stack, document_id: str, name: str, seconds: float = 300) -> Path:
    folder = stack.folder / "inbox" / NGHE_AN / path_segment(MINISTRY) / path_segment(document_id)
    deadline = time.monotonic() + seconds
    while not (folder / "0" / "event.avro").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the inbox never received it")
        time.sleep(0.2)
    return folder / "0" / "attachments" / name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=100)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="docbus-blob-bench-"))
    big = folder / "ban-do.bin"
    with big.open("wb") as f:
        for _ in range(args.mib):
            f.write(os.urandom(1024 * 1024))
    hashed, copied = bare(big, folder)
    with running(folder / "stack") as stack:
        outcome, seconds, publish_rss = publish(stack, big)
        assert outcome["state"] == "ARCHIVED", outcome
        start = time.perf_counter()
        out = received(stack, str(outcome["document_id"]), big.name)
        inbox_wait = time.perf_counter() - start
        same = (
            hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(big.read_bytes()).digest()
        )
        rss = {name: peak_mib(p.pid) for name, p in stack.processes.items()}
    print(f"attachment: {args.mib} MiB, identical in the inbox: {same}")
    print(f"publish --wait → ARCHIVED: {seconds:.1f} s (then inbox +{inbox_wait:.1f} s)")
    print(f"bare SHA-256 of the file: {hashed:.2f} s; bare copy: {copied:.2f} s")
    print(f"peak RSS, MiB: publish {publish_rss:.0f}", end="")
    for name in ("gateway", "archiver", f"inbox-{NGHE_AN}"):
        print(f", {name} {rss[name]:.0f}", end="")
    print()
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
