"""The live stream: what the storage sink writes reaches an open stream without asking again."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from rankwatch.ui.testing import Filled, UIServer, write_alert_like

pytestmark = pytest.mark.slow


def test_a_new_alert_reaches_the_open_stream(server: UIServer, filled: tuple[str, Filled]) -> None:
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    conn.request("GET", "/api/live?job=ui-job")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("content-type", "").startswith("text/event-stream")
    seen: list[dict[str, object]] = []
    event = ""
    wrote = False
    try:
        while True:
            line = response.fp.readline().decode().rstrip("\n")  # a timeout here fails the test
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "alert":
                seen.append(json.loads(line[6:]))
                if seen[-1]["alert_id"] == "live-stream-1":
                    break
            elif line.startswith("data: ") and event == "progress" and not wrote:
                # The stream is up and has sent what was there: now the sink writes a new alert.
                leak = next(a for a in filled[1].alerts if a.rule == "memory_growth")
                write_alert_like(filled[0], leak, "live-stream-1", "live one")
                wrote = True
    finally:
        conn.close()
    assert wrote
    assert seen[-1]["summary"] == "live one"
    # The alerts already stored came first, each once.
    before = [a["alert_id"] for a in seen[:-1]]
    assert len(before) == len(set(before)) >= 1
