"""One local Kafka process: a combined broker + controller (KRaft) on 127.0.0.1.

A :class:`NodeSpec` is pure data (ports, folders) and renders ``server.properties``; the functions
here format its storage, launch it detached (so it outlives the command that started it), and
stop it: SIGTERM, then SIGKILL after a grace period, since a stuck JVM must not hang ``stop``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rankwatch.infra.exceptions import BrokerError
from rankwatch.infra.jars import LOG4J2_PROPERTIES, classpath

HOST = "127.0.0.1"

# Measured on a 2-core box (see infra/README in the report): SerialGC and C1-only JIT start the
# broker noticeably faster than the default G1 + tiered C2, and a local broker never needs C2.
JVM_FLAGS = (
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)

# Processes started by this Python process, kept so they can be reaped (no zombies, no
# "subprocess still running" warnings). Nodes started by another process are tracked by pid.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class NodeSpec:
    """Where one node listens and keeps its files."""

    node_id: int
    port: int
    controller_port: int
    directory: Path
    heap_mb: int = 512

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def properties_file(self) -> Path:
        return self.directory / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.directory / "kafka.log"

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "directory": str(self.directory)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeSpec:
        return cls(**{**data, "directory": Path(data["directory"])})


def render_properties(
    node: NodeSpec, voters: list[NodeSpec], overrides: Mapping[str, str] | None = None
) -> str:
    """``server.properties`` for a node of a cluster made of ``voters`` (itself included).

    ``overrides`` replace or add lines (the secure mode's listeners and TLS, see ``security``).
    """
    replication = min(len(voters), 3)
    lines = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "listeners": f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(node.data_dir),
        # A topic we did not create on purpose is a bug to surface, not to paper over (faust
        # would auto-create source topics with 1 partition and then crash on the mismatch).
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "default.replication.factor": str(replication),
        "min.insync.replicas": str(max(1, replication - 1)),
        "offsets.topic.replication.factor": str(replication),
        "transaction.state.log.replication.factor": str(replication),
        "transaction.state.log.min.isr": str(max(1, replication - 1)),
        "share.coordinator.state.topic.replication.factor": str(replication),
        "share.coordinator.state.topic.min.isr": str(max(1, replication - 1)),
        "group.initial.rebalance.delay.ms": "0",
        # Notice a killed node within ~3 s instead of 9 s, so fault tests stay short.
        "broker.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "3000",
    }
    if len(voters) == 1:
        # Dynamic quorum of one, formatted with --standalone.
        lines["controller.quorum.bootstrap.servers"] = f"{HOST}:{node.controller_port}"
    else:
        # Static quorum: every node knows every voter up front, no --standalone.
        lines["controller.quorum.voters"] = ",".join(
            f"{v.node_id}@{HOST}:{v.controller_port}" for v in voters
        )
    lines.update(overrides or {})
    return "".join(f"{key}={value}\n" for key, value in lines.items())


def _java(lib: Path, heap_mb: int, main: str, *args: str) -> list[str]:
    return [
        "java",
        f"-Xmx{heap_mb}m",
        f"-Xms{min(heap_mb, 256)}m",
        *JVM_FLAGS,
        f"-Dlog4j2.configurationFile={LOG4J2_PROPERTIES}",
        "-cp",
        classpath(lib),
        main,
        *args,
    ]


def is_formatted(node: NodeSpec) -> bool:
    return (node.data_dir / "meta.properties").is_file()


def random_cluster_id() -> str:
    """A cluster id as ``kafka-storage random-uuid`` makes one, without starting a JVM for it.

    Kafka's Uuid: 16 random bytes in URL-safe base64 without padding, never starting with "-"
    (it would read as a command-line flag).
    """
    while True:
        text = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def start_format(
    lib: Path,
    node: NodeSpec,
    voters: list[NodeSpec],
    cluster_id: str,
    *,
    overrides: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> subprocess.Popen[str]:
    """Write ``server.properties`` and begin formatting the storage (callers may run several).

    ``overrides`` go into the properties, ``extra_args`` to ``kafka-storage format`` (SCRAM
    users). The file is readable by its owner only: in secure mode it holds a private key.
    """
    node.directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(node.properties_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(render_properties(node, voters, overrides))
    args = ["format", "-t", cluster_id, "-c", str(node.properties_file), *extra_args]
    if len(voters) == 1:
        args.append("--standalone")
    return subprocess.Popen(
        _java(lib, 128, "kafka.tools.StorageTool", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish_format(node: NodeSpec, process: subprocess.Popen[str]) -> None:
    output, _ = process.communicate(timeout=120)
    if process.returncode != 0:
        raise BrokerError(f"formatting {node.data_dir} failed:\n{output.strip()}")


def launch(lib: Path, node: NodeSpec) -> int:
    """Start the node detached from this process; return its pid (not waiting for readiness)."""
    with node.log_file.open("ab") as log:
        process = subprocess.Popen(
            _java(lib, node.heap_mb, "kafka.Kafka", str(node.properties_file)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: Ctrl-C in the shell that ran `broker start` must not kill the broker,
            # and stop() can signal the whole group.
            start_new_session=True,
            cwd=node.directory,
        )
    _CHILDREN[process.pid] = process
    return process.pid


def is_running(pid: int | None, node: NodeSpec) -> bool:
    """Whether ``pid`` is alive and still this node's JVM (pids get reused after a reboot)."""
    if pid is None:
        return False
    child = _CHILDREN.get(pid)
    if child is not None:
        # Our own child: its Popen knows. Its pid cannot be reused before we reap it, and its
        # /proc cmdline can read empty for a moment while a loaded machine starts the JVM
        # (CI saw three fresh nodes taken for "exited while starting" that way).
        return child.poll() is None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:
        # No /proc (not Linux): fall back to "a process with that pid exists".
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z" and str(node.properties_file).encode() in cmdline


def stop_all(running: list[tuple[int | None, NodeSpec]], *, grace_s: float = 15.0) -> None:
    """SIGTERM every node's process group at once, SIGKILL those alive after ``grace_s`` seconds.

    All at once: a node stopped after its peers would wait in vain for a controller quorum to
    accept its controlled shutdown, and only the SIGKILL would end it.
    """
    alive = [(pid, node) for pid, node in running if pid is not None and is_running(pid, node)]
    alive_pids = [pid for pid, _ in alive]
    for pid in alive_pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for pid, node in alive:
        if not _wait_gone(pid, node, max(0.0, deadline - time.monotonic())):
            _signal_group(pid, signal.SIGKILL)
            if not _wait_gone(pid, node, 10.0):
                raise BrokerError(f"node {node.node_id} (pid {pid}) survived SIGKILL")
    for maybe_pid, _ in running:
        _reap(maybe_pid)


def kill(pid: int | None, node: NodeSpec) -> None:
    """SIGKILL at once: a crash, for fault tests."""
    if is_running(pid, node):
        assert pid is not None
        _signal_group(pid, signal.SIGKILL)
        _wait_gone(pid, node, 10.0)
    _reap(pid)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pid: int, node: NodeSpec, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_running(pid, node):
            return True
        time.sleep(0.1)
    return not is_running(pid, node)


def _reap(pid: int | None) -> None:
    child = _CHILDREN.pop(pid, None) if pid is not None else None
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)


def log_tail(node: NodeSpec, lines: int = 30) -> str:
    """The end of the node's log, for error messages."""
    try:
        text = node.log_file.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log yet)"
    return "\n".join(text.strip().splitlines()[-lines:])
