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
from collections import deque
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
#: The newest signed versions a reader keeps while their parts are missing.
CANDIDATES = 8
REFUSALS = 100

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
    any number of reads): :meth:`take` keeps parts by the digest of what they hold and the
    manifests that verify; :meth:`settle` adopts the newest complete version newer than the
    one in force. A manifest whose parts have not all arrived waits for them."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier
        self.current: Directory | None = None
        #: The latest refusals, for a command to say why (the log has them all).
        self.refused: deque[str] = deque(maxlen=REFUSALS)
        self._in_force: Manifest | None = None
        self._parts: dict[str, bytes] = {}
        self._candidates: list[Manifest] = []
        self._waited: bytes | None = None

    def feed(self, records: Iterable[Record]) -> Directory | None:
        """Read ``records``; returns the version adopted from them, if any."""
        self.take(records)
        return self.settle()

    def take(self, records: Iterable[Record]) -> None:
        """Keep what ``records`` hold, adopting nothing yet (a reader going through the
        topic's history takes each batch and settles at its end)."""
        for key, value in records:
            if value is None:
                continue
            if is_part(key):
                self._part(key or b"", value)
                continue
            try:
                manifest = open_manifest(value, self.verifier)
            except DirectoryError as exc:
                self._refuse(str(exc))
                continue
            if self._in_force is None or manifest.key != self._in_force.key:
                self._candidates.append(manifest)
        newest = sorted({m.key: m for m in self._candidates}.values(), key=lambda m: -m.version)
        self._candidates = newest[:CANDIDATES]
        self._prune()

    def _part(self, key: bytes, value: bytes) -> None:
        digest = hashlib.sha256(value).hexdigest()
        if key.rsplit(b"/", 1)[-1] != digest.encode():
            self._refuse(f"a part under another's name ({key[-16:]!r})")
            return
        self._parts[digest] = value

    def settle(self) -> Directory | None:
        """Adopt the newest complete candidate that may replace the one in force."""
        for manifest in list(self._candidates):
            try:
                forward(self.current, manifest.name, manifest.version)
                found = assemble(manifest, self._parts)
            except MissingPart as exc:
                if self._waited != manifest.key:
                    self._waited = manifest.key
                    self.refused.append(str(exc))
                    log.info("directory waits for its parts", version=manifest.version)
                continue
            except DirectoryError as exc:
                self._refuse(str(exc))
                self._candidates.remove(manifest)
                continue
            self.current, self._in_force = found, manifest
            self._candidates = [m for m in self._candidates if m.version > manifest.version]
            self._prune()
            return found
        return None

    @property
    def waiting(self) -> Manifest | None:
        """The newest version that waits for parts, if any."""
        return self._candidates[0] if self._candidates else None

    def _prune(self) -> None:
        """Keep the parts of the version in force and of those that wait; of the others
        (the next version's, or junk), the latest up to LOOSE_BYTES."""
        named = [*self._candidates, *([self._in_force] if self._in_force else [])]
        needed = {d for m in named for d in m.parts}
        budget = LOOSE_BYTES
        for digest in reversed([d for d in self._parts if d not in needed]):
            budget -= len(self._parts[digest])
            if budget < 0:
                del self._parts[digest]

    def _refuse(self, reason: str) -> None:
        self.refused.append(reason)
        log.warning("directory refused", reason=reason)


def genuine_keys(records: Iterable[Record]) -> set[bytes]:
    """The keys of ``records`` a publisher need not write again: manifests, and parts whose
    bytes are what their key names (a part someone wrote under another's name is not)."""
    return {
        key
        for key, value in records
        if key is not None
        and value is not None
        and (
            not is_part(key)
            or key.rsplit(b"/", 1)[-1] == hashlib.sha256(value).hexdigest().encode()
        )
    }


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
