"""``rankwatch broker start|stop|status``: a local Kafka for development and demos.

The cluster's state lives in ``$RANKWATCH_HOME`` (default ``./.rankwatch``), so these commands
may run from different shells. See :mod:`rankwatch.infra.cluster`.
"""

from __future__ import annotations

import argparse
from typing import Any

from rankwatch.cli.common import error, reports_errors

# LSB's "program is not running" status, so scripts can test `rankwatch broker status`.
EXIT_NOT_RUNNING = 3


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "broker",
        help="run a local Kafka (KRaft) broker or 3-node cluster",
        description="Start, stop or inspect the local Kafka cluster kept in $RANKWATCH_HOME "
        "(default ./.rankwatch).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    start = actions.add_parser("start", help="start the cluster (reuses a running one)")
    start.add_argument(
        "--port",
        type=int,
        default=None,
        help="first broker port (default 9092, or the existing cluster's; 0 picks free ports)",
    )
    start.add_argument(
        "--nodes",
        type=int,
        choices=(1, 3),
        default=None,
        help="1 node (default) or 3 nodes with replication factor 3",
    )
    start.add_argument(
        "--secure",
        action="store_true",
        help="TLS with a CA made for this cluster and SASL/SCRAM-SHA-512 users on every port; "
        "prints the client config file to use",
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        metavar="SECONDS",
        help="how long to wait for the cluster to answer (default 90)",
    )
    start.set_defaults(handler=_start)

    stop = actions.add_parser("stop", help="stop the cluster (SIGTERM, then SIGKILL)")
    stop.add_argument(
        "--grace",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="seconds between SIGTERM and SIGKILL (default 15)",
    )
    stop.add_argument("--purge", action="store_true", help="also delete its data and logs")
    stop.set_defaults(handler=_stop)

    status = actions.add_parser("status", help="show the nodes; exit 0 if running, 3 if not")
    status.set_defaults(handler=_status)


@reports_errors
def _start(args: argparse.Namespace) -> int:
    from rankwatch.infra import LocalCluster

    if args.port is not None and not 0 <= args.port < 65536:
        return error(f"--port must be 0-65535, got {args.port}")
    cluster, reused = LocalCluster.start_or_reuse(
        nodes_count=args.nodes,
        port=args.port,
        # Without --secure, reuse whatever is there (a secure cluster stays secure).
        secure=True if args.secure else None,
        timeout_s=args.timeout,
    )
    verb = "already running" if reused else "started"
    mode = " (SASL_SSL)" if cluster.security is not None else ""
    print(f"Kafka {verb}{mode}: {len(cluster.specs)} node(s), bootstrap {cluster.bootstrap}")
    print(f"state and logs: {cluster.directory}")
    if cluster.security is not None:
        # The path, never the password: this output ends up in terminals and CI logs.
        print(f"client config: {cluster.security.client_config_file} (user rankwatch)")
        print("  use it with --config FILE or RANKWATCH_CONFIG=FILE")
        print(f"CA certificate: {cluster.security.ca_file}")
    return 0


@reports_errors
def _stop(args: argparse.Namespace) -> int:
    from rankwatch.infra import LocalCluster

    cluster = LocalCluster.open()
    if cluster is None:
        print("no local cluster to stop")
        return 0
    was_running = cluster.running
    cluster.stop(grace_s=args.grace, purge=args.purge)
    print(("stopped" if was_running else "not running") + (", data purged" if args.purge else ""))
    return 0


@reports_errors
def _status(args: argparse.Namespace) -> int:
    from rankwatch.infra import LocalCluster

    cluster = LocalCluster.open()
    if cluster is None:
        print("not running (no local cluster)")
        return EXIT_NOT_RUNNING
    states = cluster.status()
    running = sum(s.running for s in states)
    mode = " (SASL_SSL)" if cluster.security is not None else ""
    print(f"{running}/{len(states)} node(s) running{mode}, bootstrap {cluster.bootstrap}")
    for s in states:
        state = f"running (pid {s.pid})" if s.running else "stopped"
        print(f"  node {s.node_id}: port {s.port}, controller {s.controller_port}: {state}")
    return 0 if running == len(states) else EXIT_NOT_RUNNING
