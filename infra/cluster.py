"""A local Kafka cluster of 1 or 3 combined broker+controller nodes, driven from any process.

State (cluster id, ports, pids) lives in ``<run dir>/broker/state.json``, with one folder per node
holding its ``server.properties``, data and log. So ``rankwatch broker start`` and
``rankwatch broker stop`` may run in different processes, ``start`` twice reuses the running
cluster, and a stopped cluster restarts with its topics. The run dir is ``$RANKWATCH_HOME`` or
``.rankwatch`` in the working directory.

Ports: broker ports are ``port, port+1, ...``, controller ports follow them (so the single node's
default is 9092 and 9093, as in Kafka's quickstart). ``port=0`` picks free ports.

Secure mode (``secure=True``): TLS and SASL/SCRAM on every port, files in ``<dir>/security``;
see :mod:`rankwatch.infra.security`. :meth:`LocalCluster.client_config` gives a client the
settings it needs either way.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankwatch.infra import node as nodes
from rankwatch.infra.admin import wait_until_ready
from rankwatch.infra.exceptions import BrokerError, BrokerTimeout
from rankwatch.infra.jars import KAFKA_VERSION, ensure_kafka_jars
from rankwatch.infra.node import NodeSpec
from rankwatch.infra.security import CLIENT_USER, BrokerSecurity

HOME_ENV = "RANKWATCH_HOME"
DEFAULT_PORT = 9092


def run_dir() -> Path:
    """``$RANKWATCH_HOME`` or ``./.rankwatch``."""
    return Path(os.environ.get(HOME_ENV) or Path.cwd() / ".rankwatch").resolve()


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (all bound at once, so they are distinct)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((nodes.HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the JVM binds: TIME_WAIT leftovers of a killed node must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((nodes.HOST, port))
        except OSError:
            return True
    return False


@dataclass(frozen=True)
class NodeStatus:
    node_id: int
    pid: int | None
    port: int
    controller_port: int
    running: bool
    log_file: Path


class LocalCluster:
    """Handle on the local cluster whose state lives in ``directory``.

    Build one with :meth:`create` (new layout) or :meth:`open` (the one on disk); most callers
    want :meth:`start_or_reuse`.
    """

    def __init__(
        self,
        directory: Path,
        cluster_id: str,
        specs: list[NodeSpec],
        *,
        secure: bool = False,
    ) -> None:
        self.directory = directory
        self.cluster_id = cluster_id
        self.specs = specs
        #: TLS + SASL/SCRAM files when the cluster is secure, else None.
        self.security = BrokerSecurity(directory / "security") if secure else None
        self.pids: dict[int, int | None] = {spec.node_id: None for spec in specs}

    # ----- construction -------------------------------------------------------------------------

    @staticmethod
    def state_dir(home: Path | None = None) -> Path:
        return (home or run_dir()) / "broker"

    @classmethod
    def open(cls, home: Path | None = None) -> LocalCluster | None:
        """The cluster recorded under ``home`` (default: the run dir), or None if there is none."""
        directory = cls.state_dir(home)
        try:
            state: dict[str, Any] = json.loads((directory / "state.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BrokerError(
                f"{directory / 'state.json'} is unreadable ({exc}): remove it"
            ) from None
        cluster = cls(
            directory,
            state["cluster_id"],
            [NodeSpec.from_json(n) for n in state["nodes"]],
            secure=bool(state.get("secure", False)),
        )
        cluster.pids = {int(k): v for k, v in state["pids"].items()}
        return cluster

    @classmethod
    def create(
        cls,
        home: Path | None = None,
        *,
        nodes_count: int = 1,
        port: int = DEFAULT_PORT,
        controller_port: int | None = None,
        heap_mb: int | None = None,
        secure: bool = False,
    ) -> LocalCluster:
        """A new, not yet formatted layout (nothing written until :meth:`start`).

        ``secure``: TLS with a CA made for this cluster and SASL/SCRAM users on every port
        (:mod:`rankwatch.infra.security`), instead of plaintext without authentication.
        """
        if nodes_count not in (1, 3):
            raise BrokerError(f"nodes must be 1 or 3, got {nodes_count}")
        if port == 0:
            ports = free_ports(2 * nodes_count)
            broker_ports, controller_ports = ports[:nodes_count], ports[nodes_count:]
        else:
            first_controller = controller_port or port + nodes_count
            broker_ports = [port + i for i in range(nodes_count)]
            controller_ports = [first_controller + i for i in range(nodes_count)]
        heap = heap_mb or (512 if nodes_count == 1 else 384)
        directory = cls.state_dir(home)
        specs = [
            NodeSpec(i + 1, broker_ports[i], controller_ports[i], directory / f"node-{i + 1}", heap)
            for i in range(nodes_count)
        ]
        return cls(directory, "", specs, secure=secure)

    @classmethod
    def start_or_reuse(
        cls,
        home: Path | None = None,
        *,
        nodes_count: int | None = None,
        port: int | None = None,
        secure: bool | None = None,
        timeout_s: float = 90.0,
    ) -> tuple[LocalCluster, bool]:
        """Start the cluster under ``home``; return it and whether it was already running.

        An existing cluster is reused (restarted if stopped) when it matches the requested node
        count, port and security (``None``: as it is); a mismatch is an error rather than
        silently discarding its data.
        """
        cluster = cls.open(home)
        if cluster is not None:
            wanted_port = cluster.specs[0].port if port in (None, 0) else port
            wanted_nodes = nodes_count or len(cluster.specs)
            if secure is not None and secure != cluster.secure:
                have, want = ("a secure", "a plain") if cluster.secure else ("a plain", "a secure")
                raise BrokerError(
                    f"{cluster.directory} holds {have} cluster; stop it with "
                    f"`rankwatch broker stop --purge` to replace it with {want} one"
                )
            if wanted_nodes != len(cluster.specs) or wanted_port != cluster.specs[0].port:
                raise BrokerError(
                    f"{cluster.directory} holds a {len(cluster.specs)}-node cluster on port "
                    f"{cluster.specs[0].port}; stop it with `rankwatch broker stop --purge` to "
                    f"replace it with a {wanted_nodes}-node one on port {wanted_port}"
                )
            if all(s.running for s in cluster.status()):
                return cluster, True
        else:
            cluster = cls.create(
                home,
                nodes_count=nodes_count or 1,
                port=DEFAULT_PORT if port is None else port,
                secure=bool(secure),
            )
        cluster.start(timeout_s=timeout_s)
        return cluster, False

    # ----- queries ------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:P1,127.0.0.1:P2,...``"""
        return ",".join(spec.bootstrap for spec in self.specs)

    @property
    def secure(self) -> bool:
        return self.security is not None

    def client_config(self, user: str = CLIENT_USER) -> dict[str, str]:
        """librdkafka properties to reach this cluster: bootstrap, plus TLS and SASL if secure.

        In secure mode it holds ``user``'s password (``admin`` or ``rankwatch``): never log it.
        """
        if self.security is None:
            return {"bootstrap.servers": self.bootstrap}
        return self.security.client_config(self.bootstrap, user)

    def spec(self, node_id: int) -> NodeSpec:
        for spec in self.specs:
            if spec.node_id == node_id:
                return spec
        raise BrokerError(f"no node {node_id}: nodes are {[s.node_id for s in self.specs]}")

    def status(self) -> list[NodeStatus]:
        return [
            NodeStatus(
                s.node_id,
                self.pids.get(s.node_id),
                s.port,
                s.controller_port,
                nodes.is_running(self.pids.get(s.node_id), s),
                s.log_file,
            )
            for s in self.specs
        ]

    @property
    def running(self) -> bool:
        return any(s.running for s in self.status())

    # ----- lifecycle ----------------------------------------------------------------------------

    def start(self, *, timeout_s: float = 90.0) -> float:
        """Format if new, start every stopped node, wait for all; return seconds to ready."""
        started = time.monotonic()
        lib = ensure_kafka_jars()
        self._format(lib)
        for spec in self.specs:
            if not nodes.is_running(self.pids.get(spec.node_id), spec):
                self._launch(lib, spec)
        self._save()
        self._wait(timeout_s, len(self.specs))
        return time.monotonic() - started

    def stop(self, *, grace_s: float = 15.0, purge: bool = False) -> None:
        """Stop every node (SIGTERM, SIGKILL after ``grace_s``); ``purge`` also deletes data.

        With ``purge`` the nodes are killed at once: a clean shutdown protects data that is
        about to be deleted anyway.
        """
        if purge:
            grace_s = 0.0
        try:
            nodes.stop_all([(self.pids.get(s.node_id), s) for s in self.specs], grace_s=grace_s)
            self.pids = dict.fromkeys(self.pids)
        finally:
            if purge:
                shutil.rmtree(self.directory, ignore_errors=True)
            else:
                self._save()

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would (the others keep running)."""
        spec = self.spec(node_id)
        nodes.kill(self.pids.get(node_id), spec)
        self.pids[node_id] = None
        self._save()

    def restart_node(self, node_id: int, *, timeout_s: float = 60.0) -> None:
        """Start a stopped or killed node again and wait until the cluster lists it."""
        spec = self.spec(node_id)
        if not nodes.is_running(self.pids.get(node_id), spec):
            self._launch(ensure_kafka_jars(), spec)
            self._save()
        self._wait(timeout_s, len(self.specs))

    # ----- internals ----------------------------------------------------------------------------

    def _format(self, lib: Path) -> None:
        todo = [spec for spec in self.specs if not nodes.is_formatted(spec)]
        if not todo:
            return
        if len(todo) != len(self.specs) and len(self.specs) > 1:
            raise BrokerError(f"{self.directory}: some nodes are formatted, some not: purge it")
        for spec in self.specs:
            for port in (spec.port, spec.controller_port):
                if _port_in_use(port):
                    raise BrokerError(f"port {port} on {nodes.HOST} is already in use")
        self.cluster_id = self.cluster_id or nodes.random_cluster_id()
        self.directory.mkdir(parents=True, exist_ok=True)
        security = self.security
        if security is not None:
            security.ensure()
            security.write_client_config(self.bootstrap)

        def begin(spec: NodeSpec) -> Any:
            if security is None:
                return nodes.start_format(lib, spec, self.specs, self.cluster_id)
            return nodes.start_format(
                lib,
                spec,
                self.specs,
                self.cluster_id,
                overrides=security.broker_properties(spec.port, spec.controller_port, nodes.HOST),
                extra_args=security.format_args(),
            )

        # Formatting is a JVM start per node: run them side by side.
        running = [(s, begin(s)) for s in todo]
        for spec, process in running:
            nodes.finish_format(spec, process)

    def _launch(self, lib: Path, spec: NodeSpec) -> None:
        for port in (spec.port, spec.controller_port):
            if _port_in_use(port):
                raise BrokerError(f"node {spec.node_id}: port {port} on {nodes.HOST} is in use")
        self.pids[spec.node_id] = nodes.launch(lib, spec)

    def _wait(self, timeout_s: float, brokers: int) -> None:
        def alive() -> bool:
            return all(s.running for s in self.status() if s.pid is not None)

        try:
            wait_until_ready(
                self.client_config(), timeout_s=timeout_s, brokers=brokers, alive=alive
            )
        except BrokerTimeout as exc:
            logs = "\n".join(
                f"--- {s.log_file} ---\n{nodes.log_tail(self.spec(s.node_id))}"
                for s in self.status()
            )
            raise BrokerTimeout(f"{exc}\n{logs}") from None

    def _save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        state = {
            "kafka_version": KAFKA_VERSION,
            "cluster_id": self.cluster_id,
            "secure": self.secure,
            "nodes": [spec.to_json() for spec in self.specs],
            "pids": {str(k): v for k, v in self.pids.items()},
        }
        tmp = self.directory / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.directory / "state.json")
