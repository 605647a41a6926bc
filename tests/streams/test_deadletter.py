"""Dead letters stay small enough to send, whatever the size of the bad message."""

from __future__ import annotations

import orjson

from rankwatch.streams import Engine
from rankwatch.streams.pipeline import MAX_DEAD_PAYLOAD, DeadLetter, Pipeline


def test_a_10_mb_message_becomes_a_dead_letter_under_the_1_mb_request_limit() -> None:
    huge = b'{"kind":"log","message":"' + b"x" * (10 * 1024 * 1024) + b'"}'
    dead = Pipeline(Engine([])).handle(huge, topic="t", partition=0, offset=7)
    assert isinstance(dead, DeadLetter)
    value = dead.to_bytes()
    assert len(value) < 1024 * 1024
    letter = orjson.loads(value)
    assert letter["payload_truncated"] is True and letter["payload_bytes"] == len(huge)
    assert len(letter["payload"]) == MAX_DEAD_PAYLOAD and "over the" in letter["error"]


def test_a_small_bad_message_is_kept_whole() -> None:
    dead = Pipeline(Engine([])).handle(b"\xff\xfe{bad")
    assert isinstance(dead, DeadLetter)
    letter = orjson.loads(dead.to_bytes())
    assert letter["payload_encoding"] == "base64" and "payload_truncated" not in letter
