"""The archive's audit page (DESIGN §12): one self-contained HTML page, no script.

Each part sits under a heading band of its own colour, so a person finds it at a glance
and a screenshot test can tell each part is there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape

from bus.store.archive import Archive

#: The heading band of each part: (id, title, colour).
PARTS = (
    ("checkpoints", "Checkpoints of the log", "#1f5fa8"),
    ("witnesses", "Witness cosignatures", "#2e8b57"),
    ("verification", "Last verify-archive", "#8a5a00"),
    ("conflicts", "Conflicts kept", "#a31f34"),
)
_SHOWN = 50

_STYLE = """
body { font-family: sans-serif; margin: 0; color: #1b1b1b; }
h1 { margin: 16px; font-size: 22px; }
section { margin: 0 0 24px 0; }
h2 { margin: 0; padding: 12px 16px; color: white; font-size: 18px; }
table { border-collapse: collapse; margin: 8px 16px; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
code { font-size: 12px; }
p { margin: 8px 16px; }
"""


def audit_html(archive: Archive) -> str:
    checkpoints = archive.recent_checkpoints(_SHOWN)
    audit = archive.latest_audit()
    report = json.loads(audit[2]) if audit else None
    cosigned = {
        int(c["size"]): list(c.get("witnesses", ()))
        for c in (report["checkpoints"] if report else [])
    }
    parts = {
        "checkpoints": _table(
            ("size", "root hash", "signed at", "origin"),
            [
                (
                    str(c.checkpoint.size),
                    c.checkpoint.root.hex(),
                    c.at.isoformat(),
                    c.checkpoint.origin,
                )
                for c in checkpoints
            ],
            "no checkpoint yet",
        ),
        "witnesses": _table(
            ("size", "cosigned by"),
            [
                (str(size), ", ".join(names) or "none")
                for size, names in sorted(cosigned.items())[::-1]
            ],
            "no verify-archive has read the checkpoint topic yet"
            if not report
            else "no checkpoint",
        ),
        "verification": _verification(audit[0].isoformat() if audit else None, report),
        "conflicts": _table(
            ("row", "sender", "document", "revision", "received at"),
            [
                (str(e.seq), e.sender, e.document_id, str(e.revision), e.received_at.isoformat())
                for e in archive.conflicts(_SHOWN)
            ],
            "no conflict",
        ),
    }
    sections = "".join(
        f'<section id="{key}"><h2 style="background:{colour}">{escape(title)}</h2>'
        f"{parts[key]}</section>"
        for key, title, colour in PARTS
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>docbus audit</title><style>{_STYLE}</style></head><body>"
        f"<h1>Audit of {escape(archive.name)}</h1>{sections}</body></html>"
    )


def _verification(at: str | None, report: dict[str, object] | None) -> str:
    if report is None or at is None:
        return "<p>verify-archive has not run on this archive yet.</p>"
    findings = report.get("findings") or []
    assert isinstance(findings, list)
    verdict = "clean" if report.get("clean") else f"{len(findings)} discrepancies"
    counts = report.get("counts") or {}
    assert isinstance(counts, dict)
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    rows = [(str(f["kind"]), str(f["where"]), str(f["detail"])) for f in findings[:_SHOWN]]
    return f"<p><strong>{escape(verdict)}</strong> at {escape(at)}: {escape(summary)}</p>" + (
        _table(("kind", "where", "detail"), rows, "") if rows else ""
    )


def _table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]], empty: str) -> str:
    if not rows:
        return f"<p>{escape(empty)}</p>"
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td><code>{escape(c)}</code></td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"
