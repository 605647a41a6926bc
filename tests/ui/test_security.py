"""Beyond loopback the dashboard needs its token, on every request, the live stream included."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rankwatch.ui.security import COOKIE
from rankwatch.ui.testing import Filled, UIServer
from rankwatch.ui.testing import http_get as get

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token-0123456789abcdef"


@pytest.fixture(scope="module")
def guarded(filled: tuple[str, Filled]) -> Iterator[UIServer]:
    # 0.0.0.0: every address of this machine, beyond loopback; the test speaks to 127.0.0.1 only.
    with UIServer(filled[0], host="0.0.0.0", token=TOKEN) as ui:
        yield ui


@pytest.mark.parametrize(
    "path", ["/", "/jobs/ui-job", "/api/jobs", "/api/live?job=ui-job", "/static/job.js"]
)
def test_without_the_token_refused(guarded: UIServer, path: str) -> None:
    reply = get(guarded.url + path)
    assert reply.status == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert b"ui-job" not in reply.body
    assert get(guarded.url + path, {"Authorization": "Bearer wrong-token-0123456789"}).status == 401


def test_with_the_token_served(guarded: UIServer) -> None:
    reply = get(guarded.url + "/api/jobs", {"Authorization": f"Bearer {TOKEN}"})
    assert reply.status == 200
    assert "ui-job" in [j["job_id"] for j in reply.json()]
    assert reply.headers["x-frame-options"] == "DENY"


def test_token_in_the_address_once_becomes_a_cookie(guarded: UIServer) -> None:
    first = get(guarded.url + f"/jobs/ui-job?metric=loss&token={TOKEN}")
    assert first.status == 303
    assert first.headers["location"] == "/jobs/ui-job?metric=loss"  # the token left the address
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    again = get(guarded.url + "/jobs/ui-job?metric=loss", {"Cookie": f"{COOKIE}={TOKEN}"})
    assert again.status == 200
    assert get(guarded.url + "/?token=wrong-token-0123456789").status == 401
