"""What verify-archive found, kept beside the archive for the audit page (DESIGN §12)."""

from __future__ import annotations

from datetime import datetime

from bus.store.tables import Tables


class AuditTables(Tables):
    """The archive's record of its own audits."""

    def add_audit(self, at: datetime, clean: bool, report: str) -> None:
        """Keep what a verify-archive run found (its JSON report), for the audit page."""
        with self._using():
            self._exec(
                "INSERT INTO audits (at, clean, report) VALUES (?, ?, ?)",
                (at.isoformat(), int(clean), report),
            )

    def latest_audit(self) -> tuple[datetime, bool, str] | None:
        """When the last verify-archive ran, whether it was clean, and its JSON report."""
        with self._using():
            row = self._exec(
                "SELECT at, clean, report FROM audits ORDER BY at DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        return datetime.fromisoformat(row[0]), bool(row[1]), str(row[2])
