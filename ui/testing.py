"""Real parts for the dashboard's tests, benchmarks and screenshot: a store filled by the
simulator, ``rankwatch ui`` as a real server process, and Debian's chromium.

Nothing here is a mock. :func:`fill_store` runs a simulated job through the real detectors and
writes its steps, logs and alerts with the storage sink's own write path
(:meth:`~rankwatch.sinks.storage.SqlStore.write_batch`). :class:`UIServer` starts the
``rankwatch ui`` command in a subprocess on a free port. :func:`find_chromium` finds Debian's
chromium, installing it with apt-get where it is missing and we are root.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from rankwatch.schemas import Alert, LogEvent, StepEvent


class ChromiumUnavailable(RuntimeError):
    """No chromium here and none could be installed; the message says why."""


def find_chromium(install: bool = True) -> str:
    """The path of Debian's chromium; ``apt-get install chromium`` (as root) if missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and install and shutil.which("apt-get"):
        if os.geteuid() != 0:
            raise ChromiumUnavailable("chromium is not installed and we are not root to install it")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise ChromiumUnavailable(
                    f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}"
                )
        found = shutil.which("chromium")
    if found is None:
        raise ChromiumUnavailable("chromium is not installed and apt-get could not install it")
    return found


@contextmanager
def browser_page(width: int = 1300, height: int = 1000) -> Iterator[Any]:
    """A Playwright page in Debian's chromium (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    with sync_playwright() as pw:
        # As root chromium refuses its sandbox; the pages are our own, on loopback.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = pw.chromium.launch(executable_path=executable, args=args)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Filled:
    """What :func:`fill_store` wrote: the job, its leaking rank and its alerts."""

    job_id: str
    ranks: int
    steps: int
    leak_rank: int
    alerts: list[Alert] = field(default_factory=list)


def fill_store(
    url: str,
    *,
    job_id: str = "ui-job",
    ranks: int = 16,
    steps: int = 200,
    leak_rank: int = 5,
    leak_step: int = 20,
    extra: str = "",
    step_time_s: float = 0.5,
    batch: int = 2000,
) -> Filled:
    """A simulated job (rank ``leak_rank`` leaking GPU memory from ``leak_step``, plus the
    ``extra`` faults in ``rankwatch simulate --scenario`` syntax) through the real detectors,
    written to the store at ``url`` in batches as the storage sink writes them."""
    from rankwatch.simulate import JobSpec, simulate
    from rankwatch.simulate.plan import parse_plan
    from rankwatch.sinks.storage import open_store
    from rankwatch.streams import Engine

    spec = JobSpec(job_id=job_id, ranks=ranks, steps=steps, step_time_s=step_time_s)
    plan = parse_plan(
        ",".join(p for p in (f"memory_leak@{leak_step}:{leak_rank}", extra) if p), spec
    )
    engine = Engine.with_builtin_detectors()
    filled = Filled(job_id, ranks, steps, leak_rank)
    pending: list[StepEvent | LogEvent] = []
    pending_alerts: list[Alert] = []
    with open_store(url) as store:

        def flush() -> None:
            store.write_batch(
                [e for e in pending if isinstance(e, StepEvent)],
                [e for e in pending if isinstance(e, LogEvent)],
                pending_alerts,
            )
            filled.alerts.extend(pending_alerts)
            pending.clear()
            pending_alerts.clear()

        for event in simulate(spec, plan):
            pending.append(event)
            pending_alerts.extend(engine.process(event))
            if len(pending) >= batch:
                flush()
        pending_alerts.extend(engine.flush())
        flush()
    return filled


@dataclass
class UIServer:
    """``rankwatch ui`` in a subprocess: ``start()``, use :attr:`url`, ``stop()``.

    ``host`` is what it binds; requests always go to loopback (a wildcard bind answers there).
    """

    db: str
    host: str = "127.0.0.1"
    token: str | None = None
    port: int = 0
    process: subprocess.Popen[str] | None = None
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        from rankwatch.ui.app import url_of

        return url_of(self.host, self.port)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "rankwatch.cli", "ui", "--db", self.db]
        cmd += ["--host", self.host, "--port", str(self.port)]
        return cmd + (["--token", self.token] if self.token else [])

    def start(self, timeout_s: float = 30.0) -> UIServer:
        self.port = self.port or free_port()
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        connect = "127.0.0.1" if self.host in ("0.0.0.0", "127.0.0.1") else self.host
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out = self.process.stdout.read() if self.process.stdout else ""
                raise RuntimeError(f"rankwatch ui exited {self.process.returncode}: {out}")
            try:
                with socket.create_connection((connect, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"rankwatch ui did not listen on port {self.port} in {timeout_s} s")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.log = self.process.stdout.read().splitlines()
            self.process.stdout.close()
        self.process = None

    def __enter__(self) -> UIServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate: Any, timeout_s: float = 20.0, interval_s: float = 0.1) -> Any:
    """Poll ``predicate()`` until it is truthy (returned) or ``timeout_s`` passes (``None``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    return None


@dataclass
class Reply:
    """An HTTP answer as it came: status, headers (lower-cased names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 30.0) -> Reply:
    """GET ``url`` without following redirects (a test sees the 303 and its cookie)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request(
            "GET",
            (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
            headers=headers or {},
        )
        response = conn.getresponse()
        return Reply(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        conn.close()


def write_alert_like(db: str, template: Alert, alert_id: str, summary: str) -> Alert:
    """Write a new firing alert shaped like ``template`` (seen now) through the store's write
    path, as the storage sink would on a new incident; returns it."""
    from datetime import UTC, datetime

    from rankwatch.sinks.storage import open_store

    now = datetime.now(UTC)
    alert = template.model_copy(
        update={"alert_id": alert_id, "summary": summary, "first_seen": now, "last_seen": now}
    )
    with open_store(db) as store:
        store.write_batch([], [], [alert])
    return alert
