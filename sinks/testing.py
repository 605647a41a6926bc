"""Real servers for tests and benchmarks: a throw-away PostgreSQL cluster, a webhook endpoint,
Debian's Alertmanager and Prometheus.

Nothing here is a mock. :class:`PostgresServer` runs Debian's PostgreSQL (installing it with
apt-get if it is missing) in a temporary folder on a free loopback port. :class:`WebhookServer`
is a real HTTP server on loopback that stands in for Slack, DingTalk or any JSON webhook
(which cannot be reached from here): it records what it receives and can be told to fail, hang
or come back.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from rankwatch.sinks.exceptions import SinkError


class PostgresUnavailable(SinkError):
    """PostgreSQL cannot be installed or started here; the message says why."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_pg_bin(install: bool = True) -> Path:
    """The folder of ``initdb``/``pg_ctl``; apt-get installs PostgreSQL if it is missing."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if not candidates and install and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "postgresql"]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise PostgresUnavailable(
                    f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}"
                )
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if not candidates:
        raise PostgresUnavailable("PostgreSQL is not installed and apt-get could not install it")
    return Path(candidates[0])


@dataclass
class PostgresServer:
    """A PostgreSQL cluster of its own: ``start()``, use :attr:`url`, ``stop()``.

    PostgreSQL refuses to run as root, so as root the cluster is owned by, and runs as, the
    ``postgres`` OS user (created by the Debian package). Trust authentication on loopback only.
    """

    database: str = "rankwatch"
    port: int = 0
    root: Path | None = None
    _as_user: list[str] = field(default_factory=list)
    _bin: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def start(self, timeout_s: float = 60.0) -> PostgresServer:
        self._bin = find_pg_bin()
        # A folder the postgres user can reach: pytest's own tmp folders are 0700 root.
        self.root = Path(tempfile.mkdtemp(prefix="rankwatch-pg-"))
        self.port = self.port or _free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]
        data = self.root / "data"
        self._run(
            [
                str(self._bin / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            "initdb",
            timeout_s,
        )
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c shared_buffers=128MB"
        )
        self._run(
            [
                str(self._bin / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(self.root / "log"),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout_s)),
                "start",
            ],
            "pg_ctl start",
            timeout_s + 5,
        )
        self._run(
            [
                str(self._bin / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                self.database,
            ],
            "createdb",
            timeout_s,
        )
        return self

    def create_database(self, name: str) -> str:
        """A fresh database in this cluster; returns its URL."""
        assert self._bin is not None, "start() first"
        self._run(
            [
                str(self._bin / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                name,
            ],
            "createdb",
            30,
        )
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self._bin is not None and self.root is not None and (self.root / "data").exists():
            subprocess.run(
                [
                    *self._as_user,
                    str(self._bin / "pg_ctl"),
                    "-D",
                    str(self.root / "data"),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _run(self, command: list[str], what: str, timeout_s: float) -> None:
        done = subprocess.run(
            [*self._as_user, *command],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=self.root,
            check=False,
        )
        if done.returncode != 0:
            log = ""
            if self.root is not None and (self.root / "log").exists():
                log = (self.root / "log").read_text(errors="replace")[-800:]
            raise PostgresUnavailable(
                f"{what} failed ({done.returncode}): {(done.stderr or done.stdout).strip()} {log}"
            )

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


Mode = Literal["ok", "error", "hang", "reject"]


@dataclass(frozen=True)
class Received:
    """One request the webhook server accepted (mode ``ok``)."""

    path: str
    body: Any
    at: float


class WebhookServer:
    """A loopback HTTP endpoint whose behaviour tests change on the fly.

    Modes: ``ok`` answers 200 (DingTalk's ``{"errcode":0}`` body, which Slack and generic
    clients ignore) and records the request; ``error`` answers 503; ``reject`` answers 400;
    ``hang`` holds the request without answering until the mode changes or ``hang_s`` passes,
    then drops it (503, not recorded). (A real endpoint that times out the client but acts on
    the request later makes a duplicate no client can prevent: that case is not modelled.)
    ``stop()``/``start()`` take the port down and back (connection refused meanwhile).
    """

    def __init__(self, mode: Mode = "ok", hang_s: float = 30.0) -> None:
        self.mode: Mode = mode
        self.hang_s = hang_s
        self.received: list[Received] = []
        self.attempts = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.port = _free_port()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def set_mode(self, mode: Mode) -> None:
        with self._changed:
            self.mode = mode
            self._changed.notify_all()

    def bodies(self) -> list[Any]:
        with self._lock:
            return [r.body for r in self.received]

    def start(self) -> WebhookServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                with owner._changed:
                    owner.attempts += 1
                    deadline = time.monotonic() + owner.hang_s
                    mode = owner.mode
                    while owner.mode == "hang" and time.monotonic() < deadline:
                        owner._changed.wait(0.05)
                    if mode == "hang":
                        mode = "error"  # a held request is dropped, never processed late
                    if mode == "ok":
                        owner.received.append(
                            Received(self.path, json.loads(raw or b"null"), time.time())
                        )
                status = {"ok": 200, "error": 503, "reject": 400}.get(mode, 503)
                payload = b'{"errcode":0,"errmsg":"ok"}' if status == 200 else b"unavailable"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (its timeout): nothing to answer

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: tests read self.received, not stderr

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.set_mode(self.mode if self.mode != "hang" else "error")  # release held requests
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerUnavailable(SinkError):
    """A Debian server (Alertmanager, Prometheus) cannot be installed or started here."""


def find_debian_binary(binary: str, package: str, install: bool = True) -> Path:
    """``/usr/bin/BINARY``; as root, apt-get installs ``package`` if it is missing."""
    path = Path("/usr/bin") / binary
    if not path.exists() and install and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise ServerUnavailable(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    if not path.exists():
        why = "not root" if os.geteuid() != 0 else "apt-get could not install it"
        raise ServerUnavailable(f"{path} is missing (Debian package {package}; {why})")
    return path


class _DebianServer:
    """A server binary in a temporary folder on a free loopback port, stopped by ``stop()``."""

    binary = ""
    package = ""

    def __init__(self) -> None:
        self.port = _free_port()
        self.root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, binary: Path, root: Path) -> list[str]:
        raise NotImplementedError

    def start(self, timeout_s: float = 30.0) -> _DebianServer:
        binary = find_debian_binary(self.binary, self.package)
        self.root = Path(tempfile.mkdtemp(prefix=f"rankwatch-{self.binary}-"))
        log = (self.root / "log").open("wb")
        self._proc = subprocess.Popen(
            self.command(binary, self.root), stdout=log, stderr=subprocess.STDOUT, cwd=self.root
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                self.get("/-/ready")
                return self
            except OSError:
                time.sleep(0.1)
        text = self.log()[-1500:]
        self.stop()
        raise ServerUnavailable(f"{self.binary} did not become ready: {text}")

    def get(self, path: str) -> Any:
        """GET ``path`` and decode its JSON (``/-/ready`` answers text: returned as is)."""
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            raw = response.read()
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def log(self) -> str:
        if self.root is None or not (self.root / "log").exists():
            return ""
        return (self.root / "log").read_text(errors="replace")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            self._proc = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> _DebianServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AlertmanagerServer(_DebianServer):
    """Debian's Prometheus Alertmanager, alone (no cluster), routing every alert to one
    receiver: ``webhook_url`` (firing and resolved notifications, grouped by alert, within
    about a second), or nobody. Tests read its ``GET /api/v2/alerts`` and what it notified."""

    binary = "prometheus-alertmanager"
    package = "prometheus-alertmanager"

    def __init__(self, webhook_url: str | None = None) -> None:
        super().__init__()
        self.webhook_url = webhook_url

    def command(self, binary: Path, root: Path) -> list[str]:
        receiver = '  - name: "hook"\n'
        if self.webhook_url:
            receiver += (
                f"    webhook_configs:\n      - url: '{self.webhook_url}'\n"
                "        send_resolved: true\n"
            )
        (root / "alertmanager.yml").write_text(
            'route:\n  receiver: "hook"\n  group_by: ["alert_id"]\n'
            "  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n"
            f"receivers:\n{receiver}"
        )
        return [
            str(binary),
            f"--config.file={root / 'alertmanager.yml'}",
            f"--storage.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # alone: no gossip port
        ]

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """Its alerts (``active``, ``silenced``... as query parameters, "true"/"false")."""
        from urllib.parse import urlencode

        query = f"?{urlencode(filters)}" if filters else ""
        found: list[dict[str, Any]] = self.get(f"/api/v2/alerts{query}")
        return found


class PrometheusServer(_DebianServer):
    """Debian's Prometheus scraping ``targets`` (``host:port``) every second."""

    binary = "prometheus"
    package = "prometheus"

    def __init__(self, targets: list[str]) -> None:
        super().__init__()
        self.targets = targets

    def command(self, binary: Path, root: Path) -> list[str]:
        targets = ", ".join(f"'{t}'" for t in self.targets)
        (root / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: rankwatch\n"
            f"    static_configs:\n      - targets: [{targets}]\n"
        )
        return [
            str(binary),
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of an instant query (``/api/v1/query``)."""
        from urllib.parse import quote

        answer = self.get(f"/api/v1/query?query={quote(expr)}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result
