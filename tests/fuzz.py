"""Coverage-guided fuzzing (atheris, libFuzzer) of what reads bytes from the wire.

    python tests/fuzz.py TARGET SECONDS [CORPUS_DIR…]

Targets: ``codec`` (single-object Avro), ``verifier`` (a whole record through the one
verifier), ``edxml`` (edXML import) and ``inbox`` (the inbox writer given any document).
Each may only fail the way it is documented to (DocbusError with a reason code); anything
else is a crash, which atheris reports with the input that caused it. A crash found becomes
a file under ``tests/data/fuzz/TARGET/``, replayed by ``tests/test_fuzz.py`` on every run.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from bus.kafka.topics import Topics
    from bus.registry import load_registry
    from bus.store.blobs import BlobStore
    from bus.trust.pki import CertRole, DevPki, KeyAlgorithm
    from bus.trust.signing import SigningKey
    from bus.trust.truststore import TrustStore
    from bus.trust.verifier import Policy, Verifier
    from bus.wire.codec import default_codec
    from bus.wire.errors import DocbusError
    from bus.wire.model import Attachment, Document, Role
    from consumers.inbox import Inbox
    from producers.edxml import import_edxml

AGENCY = "000.00.00.H41"
AT = datetime(2026, 11, 25, tzinfo=UTC)


def codec_target() -> Callable[[bytes], None]:
    codec = default_codec()

    def one(data: bytes) -> None:
        with contextlib.suppress(DocbusError):
            codec.decode_payload(codec.decode_event(data))

    return one


def verifier_target(scratch: Path) -> Callable[[bytes], None]:
    pki = DevPki(scratch / "pki")
    pki.init()
    verifier = Verifier(TrustStore.load(pki.trust_dir), Policy(), load_registry())

    def one(data: bytes) -> None:
        verifier.verify(data, AT)  # a verdict, Verified or Rejected: never an exception

    return one


def edxml_target() -> Callable[[bytes], None]:
    def one(data: bytes) -> None:
        with contextlib.suppress(DocbusError):
            import_edxml(data)

    return one


def inbox_target(scratch: Path) -> Callable[[bytes], None]:
    pki = DevPki(scratch / "pki")
    pki.init()
    key = SigningKey.load(Role.AGENCY, *pki.issue(AGENCY, CertRole.AGENCY, KeyAlgorithm.ED25519))
    verifier = Verifier(TrustStore.load(pki.trust_dir), Policy(), load_registry())
    root = scratch / "area"
    folder = root / "inbox"
    inbox = Inbox(
        AGENCY, load_registry(), verifier, key, folder, Topics(), BlobStore(root / "blobs")
    )

    def one(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        names = [fdp.ConsumeUnicodeNoSurrogates(40) for _ in range(fdp.ConsumeIntInRange(0, 4))]
        doc = Document(
            document_id=fdp.ConsumeUnicodeNoSurrogates(60),
            sender=fdp.ConsumeUnicodeNoSurrogates(20),
            recipients=(AGENCY,),
            subject="fuzz",
            issued_at=AT,
            revision=fdp.ConsumeIntInRange(0, 3),
            attachments=tuple(
                Attachment(n, "application/octet-stream", 1, "00" * 32, b"x") for n in names
            ),
        )
        with contextlib.suppress(DocbusError):
            inbox._store(doc, b"event", None)
        outside = [p for p in root.rglob("*") if not p.is_relative_to(folder)]
        outside = [p for p in outside if p != folder and not p.is_relative_to(root / "blobs")]
        if outside:
            raise AssertionError(f"written outside the inbox: {outside}")
        escaped = [p for p in scratch.iterdir() if p.name not in ("pki", "area")]
        if escaped:
            raise AssertionError(f"written outside the inbox: {escaped}")

    return one


def target(name: str, scratch: Path) -> Callable[[bytes], None]:
    if name == "codec":
        return codec_target()
    if name == "verifier":
        return verifier_target(scratch)
    if name == "edxml":
        return edxml_target()
    if name == "inbox":
        return inbox_target(scratch)
    raise SystemExit(f"unknown target {name!r}: codec, verifier, edxml or inbox")


def main() -> None:
    name, seconds, *corpus = sys.argv[1:]
    with tempfile.TemporaryDirectory() as scratch:
        one = target(name, Path(scratch))
        atheris.Setup(
            [sys.argv[0], f"-max_total_time={seconds}", "-rss_limit_mb=2048", *corpus], one
        )
        atheris.Fuzz()


if __name__ == "__main__":
    main()
