"""Names from the wire made safe as file names (DESIGN §7): one place for every writer."""

from __future__ import annotations

from urllib.parse import quote

MAX_NAME = 200


def safe_file_name(name: str, fallback: str) -> str:
    """The last path component of ``name`` without NUL, bounded; ``fallback`` if nothing
    usable is left (``""``, ``.``, ``..``)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].replace("\x00", "")[:MAX_NAME]
    return fallback if base in ("", ".", "..") else base


def path_segment(text: str) -> str:
    """``text`` as one path segment: percent-quoted (no separator survives), and never
    ``.`` or ``..`` (dots become %2E), so it cannot leave the folder it is joined to."""
    quoted = quote(text, safe="")
    if quoted in (".", ".."):
        return quoted.replace(".", "%2E")
    return quoted or "_"  # an empty name still names a folder of its own


def attachment_files(names: list[tuple[str, str]]) -> list[str]:
    """Safe, distinct file names for a document's attachments, given (name, sha256) pairs:
    two attachments with one base name never overwrite each other."""
    taken: set[str] = set()
    out = []
    for name, digest in names:
        base = safe_file_name(name, digest)
        chosen, n = base, 1
        while chosen.lower() in taken:
            n += 1
            stem, dot, ext = base.rpartition(".")
            chosen = f"{stem}-{n}.{ext}" if dot and stem else f"{base}-{n}"
        taken.add(chosen.lower())
        out.append(chosen)
    return out
