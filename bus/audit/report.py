"""What an audit found (:class:`Report`), and its renderings for people: a terminal
summary, JSON, or a self-contained HTML page."""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bus.tlog.checkpoint import Checkpoint
from bus.wire.errors import Misconfigured


@dataclass(frozen=True)
class Finding:
    """One discrepancy: what kind, where, and what was seen."""

    kind: str
    where: str
    detail: str


@dataclass(frozen=True)
class CheckpointSeen:
    size: int
    root: str
    at: str
    signed_ok: bool
    #: The pinned witnesses whose cosignatures of it the checkpoint topic held, verified.
    witnesses: tuple[str, ...] = ()


@dataclass
class Report:
    """What an audit looked at and what it found; clean when ``findings`` is empty."""

    title: str
    counts: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    checkpoints: list[CheckpointSeen] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, object]:
        return {
            "title": self.title,
            "clean": self.clean,
            "counts": dict(sorted(self.counts.items())),
            "findings": [f.__dict__ for f in self.findings],
            "checkpoints": [c.__dict__ for c in self.checkpoints],
            "rejected": self.rejected,
        }


def checkpoint_seen(
    cp: Checkpoint, at: datetime | None, ok: bool, witnesses: tuple[str, ...] = ()
) -> CheckpointSeen:
    return CheckpointSeen(cp.size, cp.root.hex(), at.isoformat() if at else "-", ok, witnesses)


def print_report(report: Report, console: Console) -> None:
    """The terminal summary: counts, checkpoints, discrepancies, verdict."""
    counts = Table(title=report.title, show_header=False)
    for name, value in sorted(report.counts.items()):
        counts.add_row(name, str(value))
    console.print(counts)
    if report.checkpoints:
        table = Table(title="Checkpoints checked")
        for column in ("size", "root hash", "time", "signature"):
            table.add_column(column)
        for c in report.checkpoints:
            table.add_row(
                str(c.size), c.root[:16] + "…", c.at, "valid" if c.signed_ok else "INVALID"
            )
        console.print(table)
    if report.findings:
        table = Table(title=f"{len(report.findings)} discrepancies")
        for column in ("kind", "where", "detail"):
            table.add_column(column)
        for f in report.findings:
            table.add_row(escape(f.kind), escape(f.where), escape(f.detail))  # ids may hold [/x]
        console.print(table)
    console.print(
        "[green]clean: nothing altered or lost[/]" if report.clean else "[red]NOT clean[/]"
    )


def write_report(report: Report, path: Path) -> None:
    """Write ``report`` as JSON (``.json``) or a self-contained HTML page (``.html``)."""
    if path.suffix == ".json":
        path.write_text(json.dumps(report.to_json(), ensure_ascii=False, indent=2), "utf-8")
    elif path.suffix in (".html", ".htm"):
        path.write_text(_html(report), "utf-8")
    else:
        raise Misconfigured(f"{path}: a report is .json or .html")


def _rows(rows: list[list[str]]) -> str:
    return "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )


def _table(caption: str, head: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return ""
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return (
        f"<table><caption>{html.escape(caption)}</caption><thead><tr>{header}</tr></thead>"
        f"<tbody>{_rows(rows)}</tbody></table>"
    )


def _html(report: Report) -> str:
    verdict = (
        "Clean: nothing altered or lost"
        if report.clean
        else (f"NOT clean: {len(report.findings)} discrepancies")
    )
    body = "".join(
        [
            f"<h1>{html.escape(report.title)}</h1>",
            f'<p class="{"ok" if report.clean else "bad"}">{html.escape(verdict)}</p>',
            _table(
                "Counts by outcome",
                ["outcome", "count"],
                [[k, str(v)] for k, v in sorted(report.counts.items())],
            ),
            _table(
                "Discrepancies",
                ["kind", "where", "detail"],
                [[f.kind, f.where, f.detail] for f in report.findings],
            ),
            _table(
                "Checkpoints checked",
                ["size", "root hash", "time", "signature"],
                [
                    [str(c.size), c.root, c.at, "valid" if c.signed_ok else "INVALID"]
                    for c in report.checkpoints
                ],
            ),
            _table(
                "Rejected events",
                ["where", "reason", "stage"],
                [[r["where"], r["reason"], r["stage"]] for r in report.rejected],
            ),
        ]
    )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;font-family:monospace}caption{font-weight:bold;text-align:left}"
        ".ok{color:#060;font-weight:bold}.bad{color:#b00;font-weight:bold}"
    )
    return (
        f'<!DOCTYPE html><html lang="vi"><head><meta charset="utf-8">'
        f"<title>{html.escape(report.title)}</title><style>{style}</style></head>"
        f"<body>{body}</body></html>"
    )
