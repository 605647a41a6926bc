"""POST a JSON body with a timeout, and classify the answer as delivered, retryable or not."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import orjson

from rankwatch.sinks.notify.base import OK, Outcome

#: HTTP statuses worth trying again: the endpoint may be fine in a moment.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def post_json(url: str, payload: Any, timeout_s: float) -> tuple[Outcome, bytes]:
    """The outcome and the response body (empty when there was none)."""
    request = urllib.request.Request(
        url,
        data=orjson.dumps(payload),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "rankwatch"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return OK, response.read()
    except urllib.error.HTTPError as exc:
        retryable = exc.code in RETRYABLE_STATUS
        return Outcome(retryable, f"HTTP {exc.code} {exc.reason}"), b""
    except TimeoutError:
        return Outcome(True, f"no answer within {timeout_s:g} s"), b""
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Outcome(True, f"cannot reach the endpoint: {reason}"), b""
