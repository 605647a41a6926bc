"""``rankwatch ui --db URL [--host 127.0.0.1] [--port 8765] [--token TOKEN]``: the dashboard.

Read-only over the store. It binds to loopback unless told otherwise; any other address needs a
token (``--token`` or ``$RANKWATCH_UI_TOKEN``), which every request must then carry.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from rankwatch.sinks.query.cli import add_store_args, guarded, store_url


def register(sub: Any) -> None:
    ui = sub.add_parser(
        "ui", help="the web dashboard over the store: jobs, heatmaps, alerts, logs (live)"
    )
    add_store_args(ui)
    ui.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine)"
    )
    ui.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    ui.add_argument(
        "--token",
        default=None,
        help="require this token on every request (needed beyond loopback; default "
        "$RANKWATCH_UI_TOKEN); open the dashboard once with ?token=TOKEN",
    )
    ui.set_defaults(handler=_ui)


@guarded("ui")
def _ui(args: argparse.Namespace) -> int:
    try:
        from rankwatch.ui.app import serve, url_of
        from rankwatch.ui.security import TOKEN_ENV, UIError, check_bind
    except ImportError as missing:  # starlette/uvicorn are the `ui` extra
        print(f"rankwatch ui: error: {missing}: pip install 'rankwatch[ui]'", file=sys.stderr)
        return 2
    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        check_bind(args.host, token)
    except UIError as refused:
        print(f"rankwatch ui: error: {refused}", file=sys.stderr)
        return 2
    db = store_url(args)
    url = url_of(args.host, args.port)
    hint = " (open it once with ?token=TOKEN)" if token else ""
    print(f"rankwatch ui | dashboard over {db} at {url}/{hint}; Ctrl-C stops it", flush=True)
    serve(db, args.host, args.port, token)
    return 0
