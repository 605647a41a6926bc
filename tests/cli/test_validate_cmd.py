"""``rankwatch validate`` and ``rankwatch schema export``, through the real console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

VALID_LINES = [
    '{"kind":"step","job_id":"j","rank":0,"step":1,"timestamp":"2025-04-05T10:23:15Z"}',
    '{"kind":"step","job_id":"j","rank":1,"step":1,"timestamp":"2025-04-05T18:23:15+08:00",'
    '"loss":NaN,"gradient_norm":"-Infinity"}',
    '{"kind":"step","job_id":"j","rank":2,"step":1,"timestamp":1743848595.5,"loss":"inf",'
    '"custom_metric":3}',
    '{"kind":"log","job_id":"j","rank":0,"timestamp":1743848595,"level":"warn","message":"a\\nb"}',
    '{"kind":"log","job_id":"j","rank":0,"timestamp":1743848595,"level":"FATAL","message":"x",'
    '"logger":"torch","step":4}',
    '{"kind":"alert","alert_id":"a1","job_id":"j","rule":"cuda_oom","severity":"critical",'
    '"scope":"rank","ranks":[3],"step":null,"first_seen":"2025-04-05T10:23:15Z",'
    '"last_seen":1743848596,"summary":"s","evidence":{},"action":"pause_job","status":"firing"}',
    '{"kind":"step","job_id":"j","rank":0,"step":2,"timestamp":0,"schema_version":2,"new":1}',
]


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "rankwatch.cli", *args],
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc


def test_every_valid_form_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text("\n".join(VALID_LINES) + "\n\n")
    proc = run("validate", "--input", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "7 events: 7 valid (4 step, 2 log, 1 alert), 0 invalid"


def test_each_bad_line_is_reported_with_its_number_and_field(tmp_path: Path) -> None:
    lines = [
        VALID_LINES[0],
        '{"kind":"step","job_id":"j","rank":-1,"step":1,"timestamp":0}',
        '{"kind":"step","job_id":"j","step":1,"timestamp":0}',
        "not json",
        '{"kind":"log","job_id":"j","rank":0,"timestamp":0,"level":"LOUD","message":"m"}',
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes("\n".join(lines).encode() + b"\n\xff\n")
    proc = run("validate", "--input", str(path))
    assert proc.returncode == 1
    out = proc.stdout.splitlines()
    assert out[0] == "2: rank: Input should be greater than or equal to 0 (got -1)"
    assert out[1] == "3: rank: missing required field"
    assert out[2].startswith("4: not valid JSON")
    assert out[3].startswith("5: level: Input should be 'DEBUG'")
    assert out[4] == "6: message is not valid UTF-8 (byte 0)"
    assert out[5] == "6 events: 1 valid (1 step, 0 log, 0 alert), 5 invalid"


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = run("validate", "--input", str(tmp_path / "nope.jsonl"))
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr and "nope.jsonl" in proc.stderr


def test_job_option_fills_missing_job_id(tmp_path: Path) -> None:
    path = tmp_path / "seed.jsonl"
    path.write_text('{"step": 1, "loss": 2.1, "timestamp": "2025-04-05T10:23:15Z", "rank": 7}\n')
    assert run("validate", "--input", str(path)).returncode == 1
    assert run("validate", "--input", str(path), "--job", "j-1").returncode == 0


def test_schema_export_writes_loadable_json_schema(tmp_path: Path) -> None:
    proc = run("schema", "export", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    step = json.loads((tmp_path / "out" / "step.schema.json").read_text())
    assert set(step["required"]) == {"job_id", "rank", "step", "timestamp"}
    loss = step["properties"]["loss"]["anyOf"]
    assert {"type": "number"} in loss and {"type": "null"} in loss
    nan_pattern = next(option["pattern"] for option in loss if "pattern" in option)
    import re

    for spelling in ("nan", "NaN", "inf", "-Infinity", "+INF"):
        assert re.fullmatch(nan_pattern, spelling)
    log = json.loads((tmp_path / "out" / "log.schema.json").read_text())
    assert set(log["required"]) == {"job_id", "rank", "timestamp", "level", "message"}
    assert (tmp_path / "out" / "alert.schema.json").exists()
