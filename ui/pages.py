"""The HTML pages: server-side shells that the page scripts fill from the JSON API.

A shell carries its page's parameters as ``data-`` attributes of ``<body>`` (the content
security policy allows no inline script), escaped here; everything shown from the store is
written by the scripts as text, never as markup.
"""

from __future__ import annotations

import html
from functools import cache
from importlib import resources
from string import Template

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from rankwatch.sinks.storage import METRICS

#: The metric a job page opens on: the leaking or throttled rank shows in memory first.
DEFAULT_METRIC = "gpu_memory_allocated_mb"


@cache
def template(name: str) -> Template:
    return Template(resources.files("rankwatch.ui").joinpath("templates", name).read_text("utf-8"))


def render(page: str, title: str, data: dict[str, str] | None = None, **fields: str) -> str:
    """The page shell around ``templates/PAGE.html``; ``data`` become ``data-*`` attributes.

    >>> out = render("logs", "logs", {"job": 'a"b'})
    >>> 'data-job="a&quot;b"' in out, "<script src=\\"/static/logs.js\\">" in out
    (True, True)
    """
    attrs = "".join(f' data-{k}="{html.escape(v, quote=True)}"' for k, v in (data or {}).items())
    main = template(f"{page}.html").substitute(**fields)
    return template("page.html").substitute(
        title=html.escape(title), page=page, data=attrs, main=main
    )


async def jobs_page(request: Request) -> HTMLResponse:
    return HTMLResponse(render("jobs", "jobs"))


async def job_page(request: Request) -> HTMLResponse:
    job_id = request.path_params["job_id"]
    metric = request.query_params.get("metric", DEFAULT_METRIC)
    metric = metric if metric in METRICS else DEFAULT_METRIC
    options = "".join(
        f'<option value="{m}"{" selected" if m == metric else ""}>{m}</option>' for m in METRICS
    )
    data = {
        "job": job_id,
        "metric": metric,
        "ranks": request.query_params.get("ranks", ""),
        "stat": request.query_params.get("stat", "max"),
    }
    return HTMLResponse(
        render("job", job_id, data, job=html.escape(job_id), metric_options=options)
    )


async def alert_page(request: Request) -> HTMLResponse:
    alert_id = request.path_params["alert_id"]
    return HTMLResponse(render("alert", f"alert {alert_id}", {"alert": alert_id}))


async def logs_page(request: Request) -> HTMLResponse:
    keys = ("job", "rank", "level", "since", "until", "q")
    data = {k: request.query_params.get(k, "") for k in keys}
    return HTMLResponse(render("logs", "logs", data))


routes = [
    Route("/", jobs_page),
    Route("/jobs/{job_id:path}", job_page),
    Route("/alerts/{alert_id}", alert_page),
    Route("/logs", logs_page),
]
