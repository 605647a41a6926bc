"""The dashboard application: routes put together, and :func:`serve` (``rankwatch ui``).

:func:`create_app` builds the Starlette app over a store URL: pages (:mod:`.pages`), the JSON
API (:mod:`.api`), the live stream (:mod:`.live`) and the static files (the page scripts and
the vendored uPlot), all behind :class:`~rankwatch.ui.security.Guard`. Starlette and uvicorn
are small, maintained, and enough: the dashboard is a few read-only routes and one stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from rankwatch.ui import api, live, pages
from rankwatch.ui.reader import StoreReader
from rankwatch.ui.security import Guard, check_bind

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def create_app(db: str, *, token: str | None = None, poll_s: float = live.POLL_S) -> Starlette:
    """The dashboard over the store at ``db`` (read-only); ``token`` guards every request."""
    reader = StoreReader(db)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        reader.close()

    static = StaticFiles(directory=str(resources.files("rankwatch.ui").joinpath("static")))
    app = Starlette(
        routes=[*pages.routes, *api.routes, *live.routes, Mount("/static", static, name="static")],
        middleware=[Middleware(Guard, token=token)],
        lifespan=lifespan,
    )
    app.state.reader = reader
    app.state.poll_s = poll_s
    return app


def url_of(host: str, port: int) -> str:
    """The address to print for people: a wildcard bind is reached on loopback from here.

    >>> url_of("0.0.0.0", 8765), url_of("::1", 80)
    ('http://127.0.0.1:8765', 'http://[::1]:80')
    """
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def serve(
    db: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    **uvicorn_options: Any,
) -> None:
    """Serve the dashboard until interrupted; refuses a non-loopback host without a token."""
    import uvicorn

    check_bind(host, token)
    uvicorn.run(
        create_app(db, token=token),
        host=host,
        port=port,
        log_level=uvicorn_options.pop("log_level", "warning"),
        access_log=False,
        **uvicorn_options,
    )
