"""The directory as it travels (DESIGN §13): a signed event (the envelope every docbus record
has) whose payload is the directory's canonical JSON, signed once by the certificate pinned
as ``directory`` in policy.toml. The same bytes are the record on ``docbus.directory`` and
the file for offline use."""

from __future__ import annotations

from datetime import UTC, datetime

from bus.directory.model import DIRECTORY_TYPE, Directory, DirectoryError, parse_directory
from bus.trust.policy import Service
from bus.trust.signing import SigningKey, sign_event
from bus.trust.verifier import Verifier
from bus.wire.codec import default_codec
from bus.wire.errors import DocbusError


def sign_directory(directory: Directory, key: SigningKey) -> bytes:
    """The signed record of ``directory``."""
    return default_codec().encode_event(sign_event(DIRECTORY_TYPE, directory.to_json(), [key]))


def open_directory(record: bytes, verifier: Verifier, at: datetime | None = None) -> Directory:
    """The directory a signed record carries, once its one signature is the pinned directory
    operator's, valid at ``at`` (now by default). Raises DirectoryError saying why not."""
    try:
        event = default_codec().decode_event(record)
        if event.payload_type != DIRECTORY_TYPE:
            raise DirectoryError(f"not a directory but {event.payload_type}")
        verifier.verify_pinned(event, at or datetime.now(UTC), Service.DIRECTORY)
    except DocbusError as exc:
        raise DirectoryError(f"refused: {exc.message} ({exc.reason})") from exc
    return parse_directory(event.payload)


def forward(current: Directory | None, candidate: Directory) -> None:
    """That ``candidate`` may replace ``current``: the same directory, a later version.
    Raises DirectoryError."""
    if current is None:
        return
    if candidate.name != current.name:
        raise DirectoryError(f"directory {candidate.name!r} is not {current.name!r}")
    if candidate.version <= current.version:
        raise DirectoryError(
            f"version {candidate.version} is not newer than version {current.version} in force"
        )
