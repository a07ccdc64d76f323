"""deploy/acls.txt read as data: who may write which topic (literal name or prefix)."""

from __future__ import annotations

from pathlib import Path

from bus.kafka.acls import parse_acls

ACLS = Path(__file__).resolve().parents[1] / "deploy" / "acls.txt"


def acls() -> list[tuple[str, str, str, str, str]]:
    """(principal, operation, resource, name, pattern) of every rule."""
    return [tuple(rule) for rule in parse_acls(ACLS.read_text("utf-8"))]  # type: ignore[misc]


def writers(topic: str) -> set[str]:
    """The principals allowed to write ``topic`` (literal or by prefix)."""
    return {
        p
        for p, op, kind, name, pattern in acls()
        if op == "Write" and kind == "topic"
        and (name == topic if pattern == "literal" else topic.startswith(name))
    }  # fmt: skip


def may_write(principal: str, topic: str) -> bool:
    return principal in writers(topic)
