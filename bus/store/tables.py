"""What the archive's tables share, whatever their concern: one database, one call at a
time, and the schema brought up to date before the first call (so an archiver started
before its database waits for it instead of failing)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from bus.store.database import Database, Rows
from bus.store.schema import migrate


class Tables:
    """The base of each concern's tables (:class:`~bus.store.archive.Archive` joins them).

    :param read_only: never migrate (a reader's role may not).
    """

    def __init__(self, db: Database, read_only: bool = False) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._migrated = read_only

    @contextmanager
    def _using(self) -> Iterator[None]:
        """One call at a time, on a schema that is up to date."""
        with self._lock:
            if not self._migrated:
                migrate(self._db)
                self._migrated = True
            yield

    def _exec(self, sql: str, params: Sequence[object] = ()) -> Rows:
        return self._db.execute(sql, params)
