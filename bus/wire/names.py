"""Names from the wire made safe as file names (DESIGN §7): one place for every writer."""

from __future__ import annotations

import hashlib
import unicodedata
from urllib.parse import quote

from bus.wire.errors import DocbusError, Reason
from bus.wire.limits import MAX_NAME
from bus.wire.model import Document

#: Characters that make a name show other than it is (bidirectional overrides and isolates).
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_names(doc: Document) -> None:
    """Raise ``unsafe_name`` for a document id or attachment name that no file name can
    carry faithfully: control characters, bidirectional overrides, empty or over-long names.
    (Separators and dots are fine: they are mapped by :func:`path_segment` and
    :func:`attachment_files`.)"""
    for what, name in (
        ("document_id", doc.document_id),
        *(("attachment name", a.name) for a in doc.attachments),
    ):
        problem = _name_problem(name)
        if problem:
            raise DocbusError(Reason.UNSAFE_NAME, f"{what} {name[:60]!r} {problem}")


def _name_problem(name: str) -> str | None:
    if not name.strip():
        return "is empty"
    if len(name) > MAX_NAME:
        return f"is {len(name)} characters long (at most {MAX_NAME})"
    if any(unicodedata.category(c) == "Cc" or c in _BIDI for c in name):
        return "holds a control or bidirectional-override character"
    return None


#: Longest file name written, in UTF-8 bytes (file systems allow 255; room for "-n").
MAX_FILE_BYTES = 200


def _bounded(name: str) -> str:
    """``name`` cut to ``MAX_FILE_BYTES`` UTF-8 bytes, with a digest of the whole so two
    long names that share a beginning stay apart; the extension is kept."""
    if len(name.encode()) <= MAX_FILE_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    ext = f".{ext}" if dot and stem and len(ext.encode()) <= 16 else ""
    tag = "~" + hashlib.sha256(name.encode()).hexdigest()[:16]
    room = MAX_FILE_BYTES - len(tag) - len(ext.encode())
    head = name.encode()[:room].decode(errors="ignore")
    return head + tag + ext


def safe_file_name(name: str, fallback: str) -> str:
    """The last path component of ``name`` without NUL, bounded; ``fallback`` if nothing
    usable is left (``""``, ``.``, ``..``)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].replace("\x00", "")
    return fallback if base in ("", ".", "..") else _bounded(base)


def path_segment(text: str) -> str:
    """``text`` as one path segment: percent-quoted (no separator survives), never ``.``
    or ``..`` (dots become %2E), and bounded in length, so it cannot leave the folder it
    is joined to nor be refused by the file system."""
    quoted = quote(text, safe="")
    if quoted in (".", ".."):
        return quoted.replace(".", "%2E")
    return _bounded(quoted) or "_"  # an empty name still names a folder of its own


def attachment_files(names: list[str]) -> list[str]:
    """Safe, distinct file names for a document's attachments: two attachments with one
    base name never overwrite each other, and a name with nothing usable left becomes
    ``attachment-N`` (never anything the sender chose, such as its hash)."""
    taken: set[str] = set()
    out = []
    for i, name in enumerate(names):
        base = safe_file_name(name, f"attachment-{i + 1}")
        chosen, n = base, 1
        while chosen.lower() in taken:
            n += 1
            stem, dot, ext = base.rpartition(".")
            chosen = f"{stem}-{n}.{ext}" if dot and stem else f"{base}-{n}"
        taken.add(chosen.lower())
        out.append(chosen)
    return out
