"""The JSON API over a real server and a store filled by the simulator."""

from __future__ import annotations

import pytest

from rankwatch.ui.testing import Filled, UIServer
from rankwatch.ui.testing import http_get as get

pytestmark = pytest.mark.slow


def test_jobs_list_the_job_with_its_open_alerts(
    server: UIServer, filled: tuple[str, Filled]
) -> None:
    jobs = get(server.url + "/api/jobs").json()
    job = next(j for j in jobs if j["job_id"] == "ui-job")
    assert job["ranks"] == 16
    assert job["last_step"] == 199
    assert job["open_by_severity"].get("warning", 0) >= 1


def test_memory_heatmap_marks_the_leaking_rank(server: UIServer) -> None:
    heat = get(server.url + "/api/jobs/ui-job/heatmap?metric=gpu_memory_allocated_mb").json()
    assert heat["ranks"] == list(range(16))
    assert heat["marked"] == 5
    assert len(heat["values"]) == 16
    assert len(heat["median"]) == len(heat["step_edges"]) - 1
    # Late in the job the leaking rank is far above every other rank of its column.
    last = [row[-2] for row in heat["values"]]
    assert max(last) == last[5] > heat["p90"][-2]


def test_curves_of_chosen_ranks(server: UIServer) -> None:
    curves = get(
        server.url + "/api/jobs/ui-job/curves?ranks=5,6&metric=gpu_memory_allocated_mb"
    ).json()
    assert sorted(curves["series"]) == ["5", "6"]
    five, six = curves["series"]["5"], curves["series"]["6"]
    assert five[-2] - five[0] > 3000 > abs(six[-2] - six[0])


def test_bad_parameters_are_400_naming_them(server: UIServer) -> None:
    reply = get(server.url + "/api/jobs/ui-job/heatmap?metric=bogus")
    assert reply.status == 400
    assert "metric='bogus'" in reply.json()["error"]
    assert get(server.url + "/api/jobs/ui-job/heatmap?columns=0").status == 400
    assert get(server.url + "/api/logs?job=ui-job&level=LOUD").status == 400
    assert get(server.url + "/api/logs").json() == {"error": "job: required"}
    assert get(server.url + "/api/alerts/nope").status == 404


def test_an_alert_by_id(server: UIServer, filled: tuple[str, Filled]) -> None:
    leak = next(a for a in filled[1].alerts if a.rule == "memory_growth")
    alert = get(server.url + f"/api/alerts/{leak.alert_id}").json()
    assert alert["ranks"] == [5]
    assert alert["metric"] == "gpu_memory_allocated_mb"
    assert alert["evidence"]["slope_per_step"] == pytest.approx(leak.evidence["slope_per_step"])


def test_logs_by_level_text_and_time(server: UIServer, filled: tuple[str, Filled]) -> None:
    warn = get(server.url + "/api/logs?job=ui-job&level=WARNING").json()
    assert any(r["rank"] == 11 and "NCCL WARN" in r["message"] for r in warn)
    assert all(r["level"] in ("WARNING", "ERROR", "CRITICAL") for r in warn)
    found = get(server.url + "/api/logs?job=ui-job&q=completion+from+peer").json()
    assert [r["rank"] for r in found] == [11]
    start = min(r["time_s"] for r in warn)
    early = get(server.url + f"/api/logs?job=ui-job&until={start + 1}").json()
    assert early and all(r["time_s"] <= start + 1 for r in early)


def test_pages_and_security_headers(server: UIServer) -> None:
    for path in ("/", "/jobs/ui-job", "/alerts/x", "/logs?job=ui-job", "/static/job.js"):
        reply = get(server.url + path)
        assert reply.status == 200, path
        assert reply.headers["content-security-policy"].startswith("default-src 'self'")
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["x-frame-options"] == "DENY"
        assert reply.headers["referrer-policy"] == "no-referrer"
    page = get(server.url + "/jobs/%3Cscript%3E").body.decode()
    assert "<script>" not in page  # a job id is text, never markup
    assert get(server.url + "/static/vendor/uplot/LICENSE").status == 200
