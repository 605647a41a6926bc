"""What the demo prints: its own lines, a progress bar on stderr, and the alerts as they fire.

The bar is redrawn in place (``\\r``) only when stderr is a terminal; otherwise a plain line
marks each quarter of the job, so a log file or a CI transcript stays readable. Alerts are
printed by the console sink's formatter, coloured by severity on a terminal.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from rankwatch.schemas import Alert

PREFIX = "rankwatch demo |"


def _isatty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def clock(seconds: float) -> str:
    """``1m05s`` or ``42s``.

    >>> clock(65.2), clock(9.0)
    ('1m05s', '9s')
    """
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Console:
    """Serialises the demo's output between the main thread and the alert follower."""

    def __init__(self) -> None:
        self.colour = _isatty(sys.stdout)
        self.live_bar = _isatty(sys.stderr)
        self._lock = threading.Lock()
        self._bar = ""
        self._quarter = -1

    def _clear(self) -> None:
        if self._bar:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def _redraw(self) -> None:
        if self._bar:
            sys.stderr.write(self._bar)
            sys.stderr.flush()

    def say(self, text: str) -> None:
        with self._lock:
            self._clear()
            print(f"{PREFIX} {text}", flush=True)
            self._redraw()

    def line(self, text: str) -> None:
        with self._lock:
            self._clear()
            print(text, flush=True)
            self._redraw()

    def progress(self, step: int, steps: int, elapsed_s: float, alerts: int) -> None:
        done = min(1.0, (step + 1) / steps)
        status = f"step {step + 1}/{steps}  {clock(elapsed_s)}  alerts {alerts}"
        with self._lock:
            if self.live_bar:
                filled = int(30 * done)
                self._clear()
                self._bar = f"\r[{'#' * filled}{'.' * (30 - filled)}] {status}"
                self._redraw()
            elif int(done * 4) > self._quarter:
                self._quarter = int(done * 4)
                print(f"{PREFIX} {status}", flush=True)

    def end_progress(self) -> None:
        with self._lock:
            if self._bar:
                sys.stderr.write("\n")
                sys.stderr.flush()
            self._bar = ""


class AlertFollower(threading.Thread):
    """Reads the alerts topic from where it ends now and prints the job's alerts as they come,
    each with how long after its last evidence (event time, here the wall clock) it arrived.

    It joins no consumer group (partitions are assigned by hand), so it takes nothing from the
    storage sink and needs no rebalance to start.
    """

    def __init__(self, settings: Any, job_id: str, console: Console) -> None:
        super().__init__(name="demo-alerts", daemon=True)
        from confluent_kafka import Consumer

        from rankwatch.cli._demo_procs import end_offsets

        self.job_id = job_id
        self.console = console
        self.alerts: list[tuple[Alert, float]] = []  # with when it arrived (wall clock)
        self._seen: set[tuple[str, str]] = set()
        self._stop_event = threading.Event()
        self._consumer = Consumer(
            {
                **settings.confluent_config(),
                "group.id": "rankwatch-demo-console",  # required by the client; never joined
                "enable.auto.commit": False,
                "log_level": 3,
            }
        )
        self._consumer.assign(end_offsets(self._consumer, [settings.topics.alerts.name]))

    def firing(self) -> list[Alert]:
        return [alert for alert, _ in self.alerts if alert.status == "firing"]

    def run(self) -> None:
        from rankwatch.schemas import EventDecodeError, decode
        from rankwatch.sinks.query.console import alert_line

        try:
            while not self._stop_event.is_set():
                message = self._consumer.poll(0.2)
                value = None if message is None or message.error() else message.value()
                if value is None:
                    continue
                try:
                    alert = decode(value)
                except EventDecodeError:
                    continue
                if not isinstance(alert, Alert) or alert.job_id != self.job_id:
                    continue
                key = (alert.alert_id, alert.status)
                if key in self._seen:  # a redelivery (worker restart): already shown
                    continue
                self._seen.add(key)
                now = time.time()
                self.alerts.append((alert, now))
                after = max(0.0, now - alert.last_seen.timestamp())
                self.console.line(
                    f"{alert_line(alert, colour=self.console.colour)}  [+{after:.1f} s]"
                )
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)
