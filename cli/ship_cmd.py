"""``rankwatch ship LOGFILE``: a trainer's existing text log into rankwatch, no code change.

Parsing lives in :mod:`rankwatch.producers.ship`; this module wires it to a file (``--output``)
or to Kafka, and to ``--follow``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from datetime import UTC
from pathlib import Path
from typing import IO, Any

from rankwatch.schemas import LogEvent, StepEvent, encode


def register(sub: Any) -> None:
    ship = sub.add_parser(
        "ship",
        help="turn a trainer's text log into log and step events (to Kafka or a file)",
        description="Group multi-line tracebacks into one record each, infer levels, pick up "
        "ranks ([rank7]:, [default7]:, [7]:, srun's 7:, [Rank 7]) and steps, blame torchrun's "
        "failure summary on its root-cause rank, and turn per-step metric lines (Hugging "
        "Face Trainer dicts, Megatron iteration lines, JSON step lines) into step events.",
    )
    ship.add_argument("logfile", type=Path, help="the log file to read")
    ship.add_argument(
        "--job",
        default=os.environ.get("RANKWATCH_JOB_ID"),
        help="job id (default: $RANKWATCH_JOB_ID)",
    )
    ship.add_argument(
        "--rank", type=int, default=0, help="rank of lines that name none (default 0)"
    )
    ship.add_argument("--world-size", type=int, default=None)
    ship.add_argument(
        "--node-rank",
        type=int,
        default=0,
        help="this node's rank, with --nproc-per-node: local ranks ([defaultN]:, torchrun's "
        "`local_rank: N`) become global ranks (default 0)",
    )
    ship.add_argument(
        "--nproc-per-node", type=int, default=None, help="workers per node (torchrun's option)"
    )
    ship.add_argument("--host", default=None, help="host field of the events (default: none)")
    ship.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep reading as the file grows, across rotation, until Ctrl-C",
    )
    ship.add_argument(
        "--from-end", action="store_true", help="with --follow: skip what the file already holds"
    )
    ship.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        help="write JSON lines to this file ('-': stdout) instead of Kafka",
    )
    ship.add_argument(
        "--utc",
        action="store_true",
        help="timestamps without a zone are UTC (default: this machine's zone)",
    )
    ship.add_argument(
        "--scrub-pattern",
        action="append",
        default=[],
        metavar="REGEX",
        help="extra secret pattern to redact (repeatable)",
    )
    ship.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers")
    ship.add_argument("--config", default=None, help="rankwatch config file")
    ship.set_defaults(handler=_run)


class _FileSink:
    def __init__(self, target: Path) -> None:
        self._stream: IO[str] = (
            sys.stdout if str(target) == "-" else target.open("a", encoding="utf-8")
        )
        self.failed = 0

    def send(self, event: StepEvent | LogEvent) -> None:
        self._stream.write(encode(event).decode() + "\n")

    def close(self) -> int:
        self._stream.flush()
        if self._stream is not sys.stdout:
            self._stream.close()
        return 0


class _KafkaSink:
    def __init__(self, args: argparse.Namespace) -> None:
        from confluent_kafka import Producer

        from rankwatch.config import load_settings

        settings = load_settings(args.config, bootstrap=args.bootstrap)
        self._topics = {"step": settings.topics.steps.name, "log": settings.topics.logs.name}
        self._producer = Producer(
            {
                **settings.confluent_config(),
                "enable.idempotence": True,
                "linger.ms": 50,
                "message.timeout.ms": 120_000,
                "log_level": 0,
            }
        )
        self.failed = 0

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.failed += 1
            if self.failed == 1:
                print(f"rankwatch ship: delivery failed: {error.str()}", file=sys.stderr)

    def send(self, event: StepEvent | LogEvent) -> None:
        while True:
            try:
                self._producer.produce(
                    self._topics[event.kind],
                    encode(event),
                    event.job_id.encode(),
                    on_delivery=self._delivered,
                )
                break
            except BufferError:  # librdkafka's queue is full: let it drain (back-pressure)
                self._producer.poll(0.5)
        self._producer.poll(0)

    def close(self) -> int:
        return int(self._producer.flush(60))


def _lines(args: argparse.Namespace, stop: Callable[[], bool]) -> Iterable[str]:
    if args.follow:
        from rankwatch.producers._tail import follow

        return follow(args.logfile, from_start=not args.from_end, stop=stop)
    path: Path = args.logfile
    return path.open(encoding="utf-8", errors="replace", newline="")


def _first_time(path: Path, naive_tz: Any) -> float | None:
    """The first timestamp in the file's head: lines before it get synthetic times just
    before it, not "now" (which would put them after everything that follows)."""
    from itertools import islice

    from rankwatch.producers._ship_lines import timestamp_of

    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in islice(handle, 2000):
            found = timestamp_of(line, naive_tz)
            if found is not None:
                return found.timestamp() - 1.0
    return None


def _run(args: argparse.Namespace) -> int:
    from rankwatch.producers._scrub import Scrubber
    from rankwatch.producers._tail import IDLE
    from rankwatch.producers.ship import LogParser

    if not args.job:
        print(
            "rankwatch ship: error: no job id: pass --job or set $RANKWATCH_JOB_ID", file=sys.stderr
        )
        return 2
    if not args.follow and not args.logfile.is_file():
        print(f"rankwatch ship: error: {args.logfile}: no such file", file=sys.stderr)
        return 2
    naive_tz = UTC if args.utc else None
    parser = LogParser(
        args.job,
        args.rank,
        host=args.host,
        world_size=args.world_size,
        naive_tz=naive_tz,
        live=args.follow,
        scrubber=Scrubber(args.scrub_pattern),
        start_time=None if args.follow else _first_time(args.logfile, naive_tz),
        node_rank=args.node_rank,
        nproc_per_node=args.nproc_per_node,
    )
    sink: _FileSink | _KafkaSink = (
        _FileSink(args.output) if args.output is not None else _KafkaSink(args)
    )
    stopping = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    counts = {"step": 0, "log": 0}
    try:
        for line in _lines(args, stopping.is_set):
            events = parser.flush(final=False) if line == IDLE else parser.feed(line)
            for event in events:
                sink.send(event)
                counts[event.kind] += 1
    except KeyboardInterrupt:  # Ctrl-C ends --follow: what was read is still shipped
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        for event in parser.flush():
            sink.send(event)
            counts[event.kind] += 1
        undelivered = sink.close()
    where = args.output if args.output is not None else "Kafka"
    print(
        f"rankwatch ship: {parser.records} records -> {counts['log']} log events, "
        f"{counts['step']} step events to {where}",
        file=sys.stderr,
    )
    if undelivered or sink.failed:
        print(f"rankwatch ship: {undelivered + sink.failed} events not delivered", file=sys.stderr)
        return 1
    return 0
