"""Secure by default: who may bind where, the token check, and the security headers.

The dashboard binds to loopback unless told otherwise; any other address needs a token, given
by the operator (``--token`` or ``$RANKWATCH_UI_TOKEN``). With a token set, every request (the
live stream included) must carry it: ``Authorization: Bearer TOKEN``, or a cookie that a first
visit with ``?token=TOKEN`` sets (HttpOnly, SameSite=Strict) before redirecting to the same
address without the token, so it stays out of the history and of later links.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "rankwatch_ui_token"
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")
TOKEN_ENV = "RANKWATCH_UI_TOKEN"

#: Only our own files: no inline script or style, no framing, no third-party origins.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class UIError(Exception):
    """The dashboard cannot start as asked; the message says why and what to do."""


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the dashboard on this machine.

    >>> [is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "0.0.0.0", "")]
    [True, True, True, True, False, False]
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a token.

    >>> check_bind("0.0.0.0", None)
    Traceback (most recent call last):
    ...
    rankwatch.ui.security.UIError: refusing to serve on 0.0.0.0 without a token: ...
    """
    if token is not None and len(token) < 16:
        raise UIError("the token is too short: use 16 characters or more (openssl rand -hex 16)")
    if token is not None and not _TOKEN_CHARS.fullmatch(token):
        raise UIError(
            "the token may hold only letters, digits and . _ ~ + / = - (it goes in a cookie)"
        )
    if not is_loopback(host) and not token:
        raise UIError(
            f"refusing to serve on {host} without a token: anyone who can reach that address "
            f"would read every job's logs and alerts; give --token TOKEN or ${TOKEN_ENV} "
            "(e.g. openssl rand -hex 16), or bind 127.0.0.1"
        )


class Guard:
    """ASGI middleware: security headers on every response; the token on every request.

    A pure ASGI middleware (not Starlette's ``BaseHTTPMiddleware``) so that the live stream's
    chunks go out as they are made.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        if self.token is None:
            await self.app(scope, receive, send_with_headers)
            return
        headers = dict(scope.get("headers", []))
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = dict(query).get("token")
        if given is not None:
            if not self._ok(given):
                await _respond(send_with_headers, 401, b"bad token\n")
                return
            # First visit with ?token=: keep it in a cookie and drop it from the address.
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = scope.get("root_path", "") + scope["path"] + (f"?{rest}" if rest else "")
            cookie = f"{COOKIE}={given}; HttpOnly; SameSite=Strict; Path=/"
            await _respond(
                send_with_headers,
                303,
                b"",
                [(b"location", location.encode()), (b"set-cookie", cookie.encode())],
            )
            return
        if self._ok(_bearer(headers.get(b"authorization", b""))) or self._ok(
            _cookie(headers.get(b"cookie", b""))
        ):
            await self.app(scope, receive, send_with_headers)
            return
        await _respond(
            send_with_headers,
            401,
            b"this dashboard needs its token: Authorization: Bearer TOKEN, or open ?token=TOKEN\n",
            [(b"www-authenticate", b'Bearer realm="rankwatch"')],
        )

    def _ok(self, given: str | None) -> bool:
        assert self.token is not None
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


def _bearer(value: bytes) -> str | None:
    scheme, _, credentials = value.decode("latin-1").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def _cookie(value: bytes) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(value.decode("latin-1"))
    except Exception:  # a malformed Cookie header is no token
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
