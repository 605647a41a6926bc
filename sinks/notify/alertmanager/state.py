"""The firing alerts a destination must keep posting, kept in SQLite across restarts.

Alertmanager expects a client to post a firing alert again and again while it is active; the
notify sink itself delivers each ``(alert_id, status)`` once and keeps no list of open alerts
(its :mod:`~rankwatch.sinks.notify.tracker` tracks offsets, its delivered set deliveries). So
this table remembers, per Alertmanager destination, every alert delivered firing and not yet
resolved, to be posted again; and, for a week, those delivered resolved, so that a firing copy
arriving late (parked on the retry topic meanwhile) does not reopen a resolved incident.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from rankwatch.schemas import Alert, EventDecodeError, decode, encode
from rankwatch.sinks.exceptions import SinkError

#: How long a resolution is remembered against a late firing copy.
KEEP_RESOLVED_S = 7 * 86400.0


class OpenAlerts:
    """``(destination, alert_id) -> newest firing Alert``, or a resolved mark.

    ``path`` None keeps it in memory only (a restarted sink then stops re-posting what fired
    before, and Alertmanager ends those alerts at their ``endsAt``).

    >>> book = OpenAlerts(None, "am")
    >>> a = Alert(alert_id="a1", job_id="j", rule="hang", severity="critical", scope="job",
    ...           first_seen=0, last_seen=0, summary="hang")
    >>> book.update([a]); [x.alert_id for x in book.firing()]
    ['a1']
    >>> book.update([a.model_copy(update={"status": "resolved"})])
    >>> book.firing(), book.resolved("a1")
    ([], True)
    """

    def __init__(self, path: str | Path | None, destination: str) -> None:
        self.destination = destination
        target = ":memory:" if path is None else str(path)
        try:
            if path is not None:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                target, isolation_level=None, check_same_thread=False, timeout=10
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS alertmanager_alerts (destination TEXT NOT NULL, "
                "alert_id TEXT NOT NULL, resolved INTEGER NOT NULL, alert BLOB NOT NULL, "
                "updated REAL NOT NULL, PRIMARY KEY (destination, alert_id)) WITHOUT ROWID"
            )
            self._conn.execute(
                "DELETE FROM alertmanager_alerts WHERE destination=? AND resolved=1 AND updated<?",
                (destination, time.time() - KEEP_RESOLVED_S),
            )
        except (OSError, sqlite3.Error) as exc:
            raise SinkError(f"{target}: cannot open the open-alerts table: {exc}") from None
        self._lock = threading.Lock()

    def update(self, alerts: list[Alert]) -> None:
        """Record what was just delivered: firing alerts open (or refreshed), resolved close."""
        now = time.time()
        rows = [
            (self.destination, a.alert_id, int(a.status == "resolved"), encode(a), now)
            for a in alerts
        ]
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "INSERT INTO alertmanager_alerts VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (destination, alert_id) DO UPDATE SET "
                "resolved=MAX(resolved, excluded.resolved), alert=excluded.alert, "
                "updated=excluded.updated",
                rows,
            )
            self._conn.execute("COMMIT")

    def resolved(self, alert_id: str) -> bool:
        """Whether this alert's resolution was delivered here."""
        with self._lock:
            row = self._conn.execute(
                "SELECT resolved FROM alertmanager_alerts WHERE destination=? AND alert_id=?",
                (self.destination, alert_id),
            ).fetchone()
        return bool(row and row[0])

    def firing(self) -> list[Alert]:
        """The alerts delivered firing and not resolved, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT alert FROM alertmanager_alerts WHERE destination=? AND resolved=0 "
                "ORDER BY updated",
                (self.destination,),
            ).fetchall()
        alerts = []
        for (raw,) in rows:
            try:
                event = decode(bytes(raw))
            except EventDecodeError:
                continue  # written by another version of the contract: nothing to re-post
            if isinstance(event, Alert):
                alerts.append(event)
        return alerts

    def close(self) -> None:
        self._conn.close()
