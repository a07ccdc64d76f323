"""The directory as it travels (DESIGN §13): its parts (``bus.directory.parts``), then one
signed event (the envelope every docbus record has) whose payload is the manifest naming
them, signed once by the certificate pinned as ``directory`` in policy.toml. The same
records are on ``docbus.directory`` and, one per line, in the file for offline use.

:class:`DirectoryReader` is what every reader runs on what it reads: it keeps the parts,
checks each manifest, and adopts the newest complete version that may replace the one in
force. A version refused is logged with its reason and changes nothing."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime

import structlog

from bus.directory.model import DIRECTORY_TYPE, Directory, DirectoryError
from bus.directory.parts import (
    Manifest,
    MissingPart,
    assemble,
    is_part,
    parse_manifest,
    part_key,
    split,
)
from bus.trust.policy import Service
from bus.trust.signing import SigningKey, sign_event
from bus.trust.verifier import Verifier
from bus.wire.codec import default_codec
from bus.wire.errors import DocbusError

log = structlog.get_logger("directory")

#: What a reader keeps of parts no manifest has named yet: more than a whole national
#: version (about 110 MB), so that one arriving before its manifest is never lost, and a
#: bound on what anyone able to write the topic can make every reader hold.
LOOSE_BYTES = 256 * 1024 * 1024

#: A record as read: its key and value (either may be missing on a topic).
Record = tuple[bytes | None, bytes | None]


def sign_directory(directory: Directory, key: SigningKey) -> list[tuple[bytes, bytes]]:
    """The records of ``directory``: its parts, then its manifest signed with ``key``."""
    manifest, parts = split(directory)
    records = [(part_key(directory.name, digest), data) for digest, data in parts.items()]
    event = sign_event(DIRECTORY_TYPE, manifest.to_json(), [key])
    return [*records, (manifest.key, default_codec().encode_event(event))]


def open_manifest(record: bytes, verifier: Verifier, at: datetime | None = None) -> Manifest:
    """The manifest a signed record carries, once its one signature is the pinned directory
    operator's, valid at ``at`` (now by default). Raises DirectoryError saying why not."""
    try:
        event = default_codec().decode_event(record)
        if event.payload_type != DIRECTORY_TYPE:
            raise DirectoryError(f"not a directory but {event.payload_type}")
        verifier.verify_pinned(event, at or datetime.now(UTC), Service.DIRECTORY)
    except DocbusError as exc:
        raise DirectoryError(f"refused: {exc.message} ({exc.reason})") from exc
    return parse_manifest(event.payload)


def forward(current: Directory | None, name: str, version: int) -> None:
    """That version ``version`` of directory ``name`` may replace ``current``: the same
    directory, a later version. Raises DirectoryError."""
    if current is None:
        return
    if name != current.name:
        raise DirectoryError(f"directory {name!r} is not {current.name!r}")
    if version <= current.version:
        raise DirectoryError(
            f"version {version} is not newer than version {current.version} in force"
        )


class DirectoryReader:
    """The directory in force for one reader, from the records it reads (in any order, in
    any number of reads): parts are kept by the digest of what they hold, manifests are
    checked as they come, and the newest complete version newer than the one in force is
    adopted. A manifest whose parts have not all arrived waits for them."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier
        self.current: Directory | None = None
        self.refused: list[str] = []
        self._in_force: bytes | None = None
        self._parts: dict[str, bytes] = {}
        self._waiting: Manifest | None = None
        self._kept: tuple[str, ...] = ()

    def feed(self, records: Iterable[Record]) -> Directory | None:
        """Read ``records``; returns the version adopted from them, if any."""
        manifests = [self._waiting] if self._waiting else []
        for key, value in records:
            if value is None:
                continue
            if is_part(key):
                self._parts[hashlib.sha256(value).hexdigest()] = value
                continue
            try:
                manifests.append(open_manifest(value, self.verifier))
            except DirectoryError as exc:
                self._refuse(str(exc))
        adopted = self._adopt(manifests)
        self._prune({d for m in manifests for d in m.parts})
        return adopted

    def _prune(self, referenced: set[str]) -> None:
        """Keep the parts of the version in force and of the one waiting; drop those only
        older versions name; of the parts no manifest named yet (the next version's, or
        junk), keep the latest up to LOOSE_BYTES."""
        needed = set(self._waiting.parts if self._waiting else ()) | set(self._kept)
        loose = [d for d in self._parts if d not in needed and d not in referenced]
        budget = LOOSE_BYTES
        for digest in reversed(loose):
            budget -= len(self._parts[digest])
            if budget < 0:
                referenced.add(digest)
        self._parts = {d: v for d, v in self._parts.items() if d in needed or d not in referenced}

    def _adopt(self, manifests: list[Manifest]) -> Directory | None:
        self._waiting = None
        for manifest in sorted(manifests, key=lambda m: m.version, reverse=True):
            if manifest.key == self._in_force:
                return None  # the one in force, read again
            try:
                forward(self.current, manifest.name, manifest.version)
                found = assemble(manifest, self._parts)
            except MissingPart as exc:
                if self._waiting is None:
                    self._waiting = manifest  # its parts may come in a later read
                    self.refused.append(str(exc))
                    log.info("directory waits for its parts", version=manifest.version)
                continue
            except DirectoryError as exc:
                self._refuse(str(exc))
                continue
            self.current, self._in_force, self._kept = found, manifest.key, manifest.parts
            return found
        return None

    def _refuse(self, reason: str) -> None:
        self.refused.append(reason)
        log.warning("directory refused", reason=reason)


def open_directory(records: Iterable[Record], verifier: Verifier) -> Directory:
    """The newest valid directory in ``records`` (a signed file's); DirectoryError says why
    there is none."""
    reader = DirectoryReader(verifier)
    found = reader.feed(records)
    if found is None:
        raise DirectoryError(reader.refused[-1] if reader.refused else "no directory in it")
    return found


def to_file(records: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The offline file of a signed directory: one record per line, key and value in
    base64, the manifest last."""
    return b"".join(
        base64.b64encode(key) + b" " + base64.b64encode(value) + b"\n" for key, value in records
    )


def read_file(data: bytes) -> list[tuple[bytes, bytes]]:
    """The records of an offline file (:func:`to_file`); DirectoryError if it is none."""
    return [_line(number, line) for number, line in enumerate(data.splitlines(), 1)]


def _line(number: int, line: bytes) -> tuple[bytes, bytes]:
    try:
        key, value = line.split(b" ")
        return base64.b64decode(key, validate=True), base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise DirectoryError(f"not a signed directory file (line {number}: {exc})") from exc
