"""The live stream, ``/api/live?job=JOB``: server-sent events polled from the store.

Once a second the stream reads the job's summary and its alerts seen since the last look, and
sends ``progress`` (the job's last step, state, ranks) when it moved and ``alert`` for every
``(alert_id, status)`` not sent yet or seen again later. Reading the store (not the alerts topic)
keeps the dashboard one process with one dependency: whatever the storage sink wrote, the page
shows within about two seconds (the sink's commit plus this poll). A comment line every 15 s
keeps proxies from closing an idle stream; the browser's EventSource reconnects by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from rankwatch.sinks.storage import SqlStore
from rankwatch.ui import views
from rankwatch.ui.api import error, reader_of

POLL_S = 1.0
KEEPALIVE_S = 15.0
#: Alerts are polled from a little before the newest one sent: a later write may carry an
#: earlier ``last_seen`` (the sink commits in batches).
OVERLAP_S = 120.0


def sse(event: str, data: Any) -> bytes:
    """One server-sent event.

    >>> sse("progress", {"last_step": 3})
    b'event: progress\\ndata: {"last_step":3}\\n\\n'
    """
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _poll(store: SqlStore, job_id: str, since: float | None) -> tuple[Any, list[dict[str, Any]]]:
    if store.schema_version() == 0:
        return None, []
    job = next((j for j in store.jobs() if j.job_id == job_id), None)
    progress = (
        {
            "last_step": job.last_step,
            "state": job.state,
            "ranks": job.ranks,
            "last_seen_s": job.last_seen.timestamp(),
            "open_alerts": job.open_alerts,
        }
        if job
        else None
    )
    return progress, views.job_alerts_view(store, job_id, since)


async def stream(request: Request, job_id: str, poll_s: float) -> AsyncIterator[bytes]:
    reader = reader_of(request)
    sent: dict[tuple[str, str], float] = {}
    last_progress: Any = None
    newest = 0.0
    quiet_since = time.monotonic()
    yield b"retry: 2000\n\n"
    while not await request.is_disconnected():
        since = newest - OVERLAP_S if newest else None
        try:
            progress, alerts = await reader.call(_poll, job_id, since)
        except Exception as failed:  # the store went away: say so, keep trying
            yield sse("problem", {"error": str(failed)})
            progress, alerts = None, []
        if progress is not None and progress != last_progress:
            last_progress = progress
            yield sse("progress", progress)
            quiet_since = time.monotonic()
        for alert in alerts:
            key = (alert["alert_id"], alert["status"])
            newest = max(newest, alert["last_seen_s"])
            if sent.get(key, -1.0) < alert["last_seen_s"]:
                sent[key] = alert["last_seen_s"]
                yield sse("alert", alert)
                quiet_since = time.monotonic()
        if time.monotonic() - quiet_since > KEEPALIVE_S:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(poll_s)


async def live(request: Request) -> Response:
    job_id = request.query_params.get("job", "")
    if not job_id:
        return error(400, "job: required")
    poll_s: float = getattr(request.app.state, "poll_s", POLL_S)
    return StreamingResponse(
        stream(request, job_id, poll_s),
        media_type="text/event-stream",
        headers={"x-accel-buffering": "no"},
    )


routes = [Route("/api/live", live)]
