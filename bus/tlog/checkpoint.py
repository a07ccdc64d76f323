"""Checkpoints of the transparency log as C2SP tlog-checkpoint notes (c2sp.org/tlog-checkpoint).

The body is the log's origin, its size in decimal and its root hash in base64, one per
line, then any extension lines; it is signed as a C2SP signed note (:mod:`bus.tlog.note`).
Parsing accepts only what :meth:`Checkpoint.text` writes back byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from bus.tlog.note import Note, NoteError, NoteSigner, NoteVerifier, open_note, sign_note
from bus.wire.errors import DocbusError, Reason

_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")
HASH_SIZE = 32
#: The largest tree size, as Go's tlog and SQLite's integers hold it.
MAX_SIZE = 2**63 - 1


@dataclass(frozen=True)
class Checkpoint:
    """The state of a log: ``size`` leaves with root hash ``root``."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        """The note body (tlog-checkpoint)."""
        root = base64.b64encode(self.root).decode()
        return "".join(f"{line}\n" for line in (self.origin, self.size, root, *self.extensions))

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """The checkpoint in a note body; DocbusError(malformed) for anything else."""
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "" or not lines[0]:
            raise DocbusError(Reason.MALFORMED, "not a checkpoint: too few lines")
        origin, size, root, *extensions = lines[:-1]
        if not _SIZE.fullmatch(size) or int(size) > MAX_SIZE:
            raise DocbusError(Reason.MALFORMED, f"not a checkpoint: size {size!r}")
        try:
            digest = base64.b64decode(root, validate=True)
        except binascii.Error as exc:
            raise DocbusError(Reason.MALFORMED, "not a checkpoint: root hash") from exc
        if len(digest) != HASH_SIZE or any(not e for e in extensions):
            raise DocbusError(Reason.MALFORMED, "not a checkpoint: root hash or extension")
        checkpoint = cls(origin, int(size), digest, tuple(extensions))
        if checkpoint.text() != text:
            raise DocbusError(Reason.MALFORMED, "not a checkpoint: not in canonical form")
        return checkpoint

    def sign(self, signer: NoteSigner) -> bytes:
        """The signed note; the signer's name must be the log's origin."""
        if signer.name != self.origin:
            raise ValueError(f"{signer.name} cannot sign for the log {self.origin}")
        return sign_note(self.text(), [signer])


def open_checkpoint(
    note: bytes, log_key: NoteVerifier, witnesses: tuple[NoteVerifier, ...] = ()
) -> tuple[Checkpoint, Note]:
    """A signed checkpoint that ``log_key`` signed for its own origin; DocbusError otherwise."""
    try:
        opened = open_note(note, [log_key, *witnesses])
    except NoteError as exc:
        raise DocbusError(Reason.BAD_SIGNATURE, f"checkpoint: {exc}") from exc
    if not opened.signed_by(log_key.name):
        raise DocbusError(Reason.BAD_SIGNATURE, f"the checkpoint is not signed by {log_key.name}")
    checkpoint = Checkpoint.parse(opened.text)
    if checkpoint.origin != log_key.name:
        raise DocbusError(
            Reason.SENDER_MISMATCH, f"{log_key.name} signed a checkpoint of {checkpoint.origin}"
        )
    return checkpoint, opened


def note_text(note: bytes) -> str:
    """The body of a signed note, unchecked (to show or store what was published)."""
    try:
        return note.decode("utf-8").rsplit("\n\n", 1)[0] + "\n"
    except UnicodeDecodeError as exc:
        raise DocbusError(Reason.MALFORMED, "a checkpoint note is UTF-8") from exc
