"""The dashboard's JSON API (``/api/...``): what the pages' scripts fetch.

- ``/api/jobs``: every job, its state and open alerts by severity;
- ``/api/jobs/{job_id}/heatmap?metric=&stat=&columns=&from=&to=``: the rank x step heatmap with
  the job's median, p10-p90 band and the most deviant rank;
- ``/api/jobs/{job_id}/curves?ranks=1,5&metric=...``: chosen ranks on the heatmap's columns;
- ``/api/jobs/{job_id}/alerts``: the job's alerts;
- ``/api/alerts/{alert_id}``: one alert;
- ``/api/logs?job=&rank=&level=&since=&until=&q=&limit=``: log records (full-text ``q``).

Bad parameters are a 400 naming the parameter; a store error a 400 or 503 with its message.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rankwatch.sinks.exceptions import QueryError, SinkError, StoreError
from rankwatch.sinks.query.specs import parse_ranks, parse_since
from rankwatch.sinks.storage import LEVELS, METRICS
from rankwatch.ui import views
from rankwatch.ui.reader import StoreReader

STATS = ("min", "median", "max")
MAX_COLUMNS = 2000
MAX_CURVE_RANKS = 32


class BadParam(ValueError):
    """A query parameter the API cannot use; the message names it."""


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def reader_of(request: Request) -> StoreReader:
    reader: StoreReader = request.app.state.reader
    return reader


def int_param(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadParam(f"{name}={raw!r}: expected an integer") from None


def time_param(request: Request, name: str) -> float | None:
    """Epoch seconds, a duration before now (``10m``) or an ISO 8601 time (with a zone)."""
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        return parse_since(raw)
    except QueryError:
        raise BadParam(
            f"{name}={raw!r}: expected epoch seconds, a duration (10m, 2h) or an ISO 8601 time"
        ) from None


def choice_param(request: Request, name: str, choices: tuple[str, ...], default: str) -> str:
    value = request.query_params.get(name) or default
    if value not in choices:
        raise BadParam(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def _heatmap_args(request: Request) -> dict[str, Any]:
    columns = int_param(request, "columns", 200)
    assert columns is not None
    if not 1 <= columns <= MAX_COLUMNS:
        raise BadParam(f"columns={columns}: expected 1 to {MAX_COLUMNS}")
    return {
        "metric": choice_param(request, "metric", METRICS, "gpu_memory_allocated_mb"),
        "stat": choice_param(request, "stat", STATS, "max"),
        "columns": columns,
        "step_from": int_param(request, "from"),
        "step_to": int_param(request, "to"),
    }


async def _answer(call: Callable[[], Any]) -> Response:
    """Run a store call, turning bad parameters and store errors into JSON errors."""
    try:
        return json_response(await call())
    except BadParam as bad:
        return error(400, str(bad))
    except (QueryError, StoreError) as bad:
        return error(400, str(bad))
    except (SinkError, sqlite3.Error, OSError) as failed:
        return error(503, f"the store failed: {failed}")


async def jobs(request: Request) -> Response:
    return await _answer(lambda: reader_of(request).call(views.jobs_view))


async def heatmap(request: Request) -> Response:
    async def run() -> Any:
        args = _heatmap_args(request)
        job_id = request.path_params["job_id"]
        return await reader_of(request).call(
            lambda store: views.heatmap_view(store, job_id, **args)
        )

    return await _answer(run)


async def curves(request: Request) -> Response:
    async def run() -> Any:
        args = _heatmap_args(request)
        raw = request.query_params.get("ranks", "")
        try:
            ranks = parse_ranks(raw) if raw else []
        except (ValueError, QueryError):
            raise BadParam(f"ranks={raw!r}: expected e.g. 0-3,7") from None
        if len(ranks) > MAX_CURVE_RANKS:
            raise BadParam(f"ranks: at most {MAX_CURVE_RANKS} curves at once")
        job_id = request.path_params["job_id"]
        return await reader_of(request).call(
            lambda store: views.curves_view(store, job_id, ranks=ranks, **args)
        )

    return await _answer(run)


async def job_alerts(request: Request) -> Response:
    async def run() -> Any:
        since = time_param(request, "since")
        job_id = request.path_params["job_id"]
        return await reader_of(request).call(views.job_alerts_view, job_id, since)

    return await _answer(run)


async def alert(request: Request) -> Response:
    found = await reader_of(request).call(views.find_alert, request.path_params["alert_id"])
    if found is None:
        return error(404, f"no alert {request.path_params['alert_id']!r} in this store")
    return json_response(found)


async def logs(request: Request) -> Response:
    async def run() -> Any:
        job_id = request.query_params.get("job", "")
        if not job_id:
            raise BadParam("job: required")
        level = request.query_params.get("level", "").upper() or None
        if level is not None and level not in LEVELS:
            raise BadParam(f"level={level!r}: expected one of {', '.join(LEVELS)}")
        limit = int_param(request, "limit", 500)
        assert limit is not None
        if not 1 <= limit <= 5000:
            raise BadParam(f"limit={limit}: expected 1 to 5000")
        kwargs: dict[str, Any] = {
            "rank": int_param(request, "rank"),
            "level": level,
            "since": time_param(request, "since"),
            "until": time_param(request, "until"),
            "text": request.query_params.get("q", "").strip() or None,
            "limit": limit,
        }
        return await reader_of(request).call(lambda store: views.logs_view(store, job_id, **kwargs))

    return await _answer(run)


routes = [
    Route("/api/jobs", jobs),
    Route("/api/jobs/{job_id:path}/heatmap", heatmap),
    Route("/api/jobs/{job_id:path}/curves", curves),
    Route("/api/jobs/{job_id:path}/alerts", job_alerts),
    Route("/api/alerts/{alert_id}", alert),
    Route("/api/logs", logs),
]
