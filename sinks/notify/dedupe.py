"""The delivered set: ``(destination, alert_id, status)`` already delivered, kept in SQLite.

A restarted sink re-reads alerts whose offsets were not committed; this file makes sure none of
them reaches a person twice. One small table, shared by the destination threads under a lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from rankwatch.sinks.exceptions import SinkError


class DeliveredSet:
    """Persistent set of delivered ``(destination, alert_id, status)``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS delivered (destination TEXT NOT NULL, "
                "alert_id TEXT NOT NULL, status TEXT NOT NULL, delivered_at REAL NOT NULL, "
                "PRIMARY KEY (destination, alert_id, status)) WITHOUT ROWID"
            )
        except (OSError, sqlite3.Error) as exc:
            raise SinkError(f"{self.path}: cannot open the delivered-alerts file: {exc}") from None
        self._lock = threading.Lock()

    def contains(self, destination: str, alert_id: str, status: str) -> bool:
        with self._lock:
            found = self._conn.execute(
                "SELECT 1 FROM delivered WHERE destination=? AND alert_id=? AND status=?",
                (destination, alert_id, status),
            ).fetchone()
        return found is not None

    def add(self, destination: str, keys: Iterable[tuple[str, str]]) -> None:
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "INSERT OR IGNORE INTO delivered VALUES (?, ?, ?, ?)",
                [(destination, alert_id, status, now) for alert_id, status in keys],
            )
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()
