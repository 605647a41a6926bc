"""Plain-text tables for the terminal, and JSON lines for programs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; the last column is not padded.

    >>> print(render_table(["JOB", "RANKS"], [["j1", 8], ["job-22", 16]]))
    JOB     RANKS
    j1      8
    job-22  16
    """
    cells = [[cell_text(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *cells]:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def cell_text(value: Any) -> str:
    """How one value reads in a table cell.

    >>> cell_text(None), cell_text(float("nan")), cell_text(0.123456789), cell_text(12)
    ('-', 'nan', '0.123457', '12')
    """
    if value is None:
        return "-"
    if isinstance(value, float):
        return str(value) if not math.isfinite(value) else f"{value:.6g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def json_line(record: dict[str, Any]) -> str:
    """One JSON object on one line; datetimes as UTC ``Z``, non-finite floats as strings.

    >>> json_line({"loss": float("nan"), "n": 1})
    '{"loss":"nan","n":1}'
    """
    from rankwatch.schemas._types import wire_safe

    return orjson.dumps(wire_safe(record), option=orjson.OPT_UTC_Z).decode()
