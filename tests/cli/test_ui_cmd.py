"""``rankwatch ui`` refuses to serve beyond loopback without a token, saying why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--host", "0.0.0.0"], "refusing to serve on 0.0.0.0 without a token"),
        (["--host", "192.0.2.7"], "refusing to serve on 192.0.2.7 without a token"),
        (["--token", "short"], "the token is too short"),
        (["--token", "has spaces in it, 0123456789"], "the token may hold only"),
    ],
)
def test_refuses_with_a_clear_error(tmp_path: Path, args: list[str], expected: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rankwatch.cli", "ui", "--db", f"sqlite:///{tmp_path}/x.db", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert done.stderr.startswith("rankwatch ui: error: " + expected), done.stderr
    assert not (tmp_path / "x.db").exists()  # nothing was opened
