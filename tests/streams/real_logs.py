"""Real launcher logs (``tests/producers/data/``) through ``rankwatch ship`` and the engine:
what a person who ships a failed job's log would be alerted to."""

from __future__ import annotations

from pathlib import Path

from rankwatch.cli.main import main
from rankwatch.schemas import Alert, decode
from rankwatch.streams import Engine

DATA = Path(__file__).parents[1] / "producers" / "data"


def shipped_alerts(name: str, tmp_path: Path, *, flush: bool = False) -> list[Alert]:
    """The built-in detectors' alerts over the log ``name`` shipped as job ``j`` (UTC
    timestamps); ``flush``: with the engine's end-of-input flush."""
    out = tmp_path / "events.jsonl"
    assert main(["ship", str(DATA / name), "--job", "j", "--utc", "--output", str(out)]) == 0
    engine = Engine.with_builtin_detectors()
    alerts: list[Alert] = []
    for line in out.read_bytes().splitlines():
        alerts += engine.process(decode(line))
    if flush:
        alerts += engine.flush()
    return alerts
