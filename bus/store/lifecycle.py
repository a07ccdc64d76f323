"""A document's life in the archive: its revisions, which one is in force, whether it was
revoked (DESIGN §3: NEW, REVOKE, UPDATE, REPLACE are edXML business types 0-3).

Pure logic over archived entries: the archive has already refused revisions from anyone but
the original sender (or its registry successor) and revisions that do not increase, so what
is left is the order the sender gave. A revision UPDATE or REPLACE supersedes every one
before it; a REVOKE withdraws the document (nothing is in force until a later revision puts
one back). Conflicting rows (other bytes under a known identity) take no part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from bus.store.documents import Entry
from bus.wire.codec import default_codec
from bus.wire.model import Action


class State(StrEnum):
    CURRENT = "current"  # the revision in force
    SUPERSEDED = "superseded"  # a later UPDATE or REPLACE took its place
    WITHDRAWN = "withdrawn"  # a later REVOKE withdrew the document
    REVOCATION = "revocation"  # the REVOKE itself


@dataclass(frozen=True)
class Revision:
    revision: int
    action: Action
    sender: str
    received_at: datetime
    log_index: int
    state: State
    #: The revision that superseded or withdrew this one.
    by: int | None


@dataclass(frozen=True)
class History:
    document_id: str
    sender: str
    #: The revision in force, or None (revoked).
    current: int | None
    revisions: tuple[Revision, ...]

    @property
    def revoked(self) -> bool:
        return self.current is None


def action_of(entry: Entry) -> Action:
    codec = default_codec()
    return codec.decode_document(codec.decode_event(entry.event).payload).action


def lineage(entries: Sequence[Entry], sender: str) -> list[Entry]:
    """The entries of one document id that belong to ``sender``'s document: its own, and the
    revisions of agencies that never sent a revision 0 of that id (the archive accepts those
    only from the sender's registry successors)."""
    originators = {e.sender for e in entries if e.revision == 0}
    return [e for e in entries if e.sender == sender or e.sender not in originators]


def states(revisions: Sequence[tuple[int, Action]]) -> dict[int, tuple[State, int | None]]:
    """Each revision's state, and the revision that superseded or withdrew it (for a REVOKE:
    the one that put a version back in force), from the (revision, action) pairs held."""
    ordered = sorted(revisions)
    out: dict[int, tuple[State, int | None]] = {}
    for i, (revision, action) in enumerate(ordered):
        later = ordered[i + 1 :]
        if action is Action.REVOKE:
            out[revision] = (
                State.REVOCATION,
                next((r for r, a in later if a is not Action.REVOKE), None),
            )
        elif not later:
            out[revision] = (State.CURRENT, None)
        elif later[0][1] is Action.REVOKE:
            out[revision] = (State.WITHDRAWN, later[0][0])
        else:
            out[revision] = (State.SUPERSEDED, later[0][0])
    return out


def history(entries: Sequence[Entry]) -> History | None:
    """The life of one document from its archived entries (one sender lineage, one id)."""
    rows = sorted((e for e in entries if not e.conflict), key=lambda e: e.revision)
    if not rows:
        return None
    actions = {e.revision: action_of(e) for e in rows}
    life = states(list(actions.items()))
    current = next((r for r, (s, _) in life.items() if s is State.CURRENT), None)
    return History(
        document_id=rows[0].document_id,
        sender=rows[-1].sender,
        current=current,
        revisions=tuple(
            Revision(
                e.revision,
                actions[e.revision],
                e.sender,
                e.received_at,
                e.log_index,
                *life[e.revision],
            )
            for e in rows
        ),
    )
