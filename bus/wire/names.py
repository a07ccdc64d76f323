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
    return quoted.replace(".", "%2E") if quoted in ("", ".", "..") else quoted
