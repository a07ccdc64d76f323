"""How long commands show that they advance (DESIGN §10): a bar with counts on a terminal,
otherwise a JSON progress line on stderr every few seconds and one at the end."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import structlog
from rich.progress import Progress

log = structlog.get_logger(__name__)

#: Seconds between two progress lines when no terminal shows a bar.
EVERY = 5.0

Advance = Callable[[int, int | None], None]


@contextmanager
def progress(what: str) -> Iterator[Advance]:
    """A function to call as work advances: ``advance(done, total)`` (total None: unknown)."""
    if sys.stdout.isatty():
        with Progress(transient=True) as bar:
            task = bar.add_task(what, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
        return
    state: dict[str, int | None] = {"done": 0, "total": None}
    last = time.monotonic()

    def advance(done: int, total: int | None) -> None:
        nonlocal last
        state["done"], state["total"] = done, total
        if time.monotonic() - last >= EVERY:
            last = time.monotonic()
            log.info("progress", task=what, done=done, total=total)

    yield advance
    log.info("progress", task=what, done=state["done"], total=state["total"], finished=True)
