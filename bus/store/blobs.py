"""The blob store (DESIGN §3, §7): large attachments kept by their SHA-256, outside records.

A folder holds each blob at ``<root>/<first two hex digits>/<sha256>``. Blobs are written
to a temporary file and renamed into place, so a reader never sees half a blob; every copy
out of the store is streamed in bounded chunks and checked against the hash the signed
document names, so integrity holds end to end whoever else writes to the folder.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from bus.wire.errors import DocbusError, Reason
from bus.wire.limits import BLOB_THRESHOLD, MAX_BLOB_BYTES
from bus.wire.model import Document, blob_location

CHUNK = 1024 * 1024
_HEX = re.compile(r"[0-9a-f]{64}")


class BlobStore:
    """A content-addressed folder of blobs."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        """Where the blob is kept; a name that is not a SHA-256 in hex never becomes a path."""
        if not _HEX.fullmatch(sha256):
            raise DocbusError(Reason.MALFORMED, f"{sha256[:80]!r} is not a SHA-256 in hex")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str, size: int) -> bool:
        p = self.path(sha256)
        return p.is_file() and p.stat().st_size == size

    def put_bytes(self, data: bytes) -> str:
        """Keep ``data``; returns its SHA-256."""
        digest = hashlib.sha256(data).hexdigest()
        if not self.has(digest, len(data)):
            self._install(digest, iter((data,)))
        return digest

    def put_file(self, source: Path) -> tuple[str, int]:
        """Keep a file, read once in chunks: (SHA-256, size)."""
        with source.open("rb") as f:
            return self.put_stream(f, source.name)

    def put_stream(self, stream: BinaryIO, what: str) -> tuple[str, int]:
        """Keep what ``stream`` holds, read once in chunks: (SHA-256, size)."""
        h = hashlib.sha256()
        size = 0
        tmp = self._temporary()
        try:
            with tmp.open("wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > MAX_BLOB_BYTES:
                        raise DocbusError(
                            Reason.TOO_LARGE, f"{what} is over {MAX_BLOB_BYTES} bytes"
                        )
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            target = self.path(digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.replace(target)
            return digest, size
        finally:
            tmp.unlink(missing_ok=True)

    def chunks(self, sha256: str, size: int) -> Iterator[bytes]:
        """The blob in chunks, checked: raises ``attachment_hash_mismatch`` after the last
        chunk if the bytes are not the ones the hash names (or the blob is missing)."""
        path = self.path(sha256)
        # Whoever else can write to the folder cannot make a reader follow a link, block on
        # a pipe, or read a device: only a regular file is a blob.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            raise _mismatch(sha256, "is not in the blob store") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _mismatch(sha256, "is a link, not a blob") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode) or path.parent.is_symlink():
            os.close(fd)
            raise _mismatch(sha256, "is not a regular file in the blob store")
        f: BinaryIO = os.fdopen(fd, "rb")
        h = hashlib.sha256()
        seen = 0
        with f:
            while chunk := f.read(CHUNK):
                seen += len(chunk)
                if seen > size:
                    raise _mismatch(sha256, "is longer than its stated size")
                h.update(chunk)
                yield chunk
        if seen != size or h.hexdigest() != sha256:
            raise _mismatch(sha256, "does not match its hash")

    def copy_to(self, sha256: str, size: int, target: Path) -> None:
        """Write the blob to ``target`` (atomically, checked); a bad blob leaves nothing."""
        self.path(sha256)  # a name that is not a hash is refused before anything is opened
        tmp = target.with_name(f".{target.name}.part")
        try:
            with tmp.open("wb") as out:
                for chunk in self.chunks(sha256, size):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)

    def copy_from(self, other: BlobStore, sha256: str, size: int) -> None:
        """Take a blob from another store, checked; one already here is checked again
        (another writer may share the folder)."""
        if self.has(sha256, size):
            for _ in self.chunks(sha256, size):
                pass
        else:
            self._install(sha256, other.chunks(sha256, size))

    def read(self, sha256: str, size: int) -> bytes:
        """The whole blob in memory (for sealed parts, which are opened in one piece)."""
        return b"".join(self.chunks(sha256, size))

    def _temporary(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        os.close(fd)
        return Path(name)

    def _install(self, sha256: str, chunks: Iterator[bytes]) -> None:
        target = self.path(sha256)
        tmp = self._temporary()
        try:
            with tmp.open("wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)

    def offload(self, doc: Document, threshold: int = BLOB_THRESHOLD) -> Document:
        """The document with every inline attachment over ``threshold`` moved here."""
        moved = []
        for a in doc.attachments:
            if a.content is not None and len(a.content) > threshold:
                digest = self.put_bytes(a.content)
                a = dataclasses.replace(a, content=None, location=blob_location(digest))
            moved.append(a)
        return dataclasses.replace(doc, attachments=tuple(moved))

    def inline(self, doc: Document) -> Document:
        """The document with its blob-store attachments read back in (checked)."""
        return dataclasses.replace(
            doc,
            attachments=tuple(
                dataclasses.replace(a, content=self.read(a.sha256, a.size), location=None)
                if a.in_blob_store
                else a
                for a in doc.attachments
            ),
        )


def _mismatch(sha256: str, what: str) -> DocbusError:
    return DocbusError(Reason.ATTACHMENT_HASH_MISMATCH, f"blob {sha256[:16]}… {what}")
