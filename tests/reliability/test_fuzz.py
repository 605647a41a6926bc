"""The decoder fuzzer, short: the full 100,000-case run is ``reliability/run.py``."""

from __future__ import annotations

import pytest

from rankwatch.schemas import EventDecodeError, decode
from reliability.fuzz import accepted, corpus, run_fuzz


@pytest.mark.timeout(120)
def test_decoder_fuzz_returns_an_event_or_a_decode_error() -> None:
    valid = run_fuzz(1_000, seed=8)
    assert 0 < valid < 1_000  # the generators reach both sides of the property


@pytest.mark.parametrize("name,raw", corpus(big_bytes=2 * 1024 * 1024), ids=lambda v: str(v)[:30])
def test_every_corpus_message_is_refused_with_a_reason(name: str, raw: bytes) -> None:
    if name == "alert on the input topic":
        assert decode(raw).kind == "alert"  # valid, but not an input event: the pipeline says so
        return
    with pytest.raises(EventDecodeError) as info:
        decode(raw)
    assert str(info.value)


def test_nan_in_every_spelling_and_a_future_version_are_accepted() -> None:
    events = [decode(raw) for raw in accepted("j", 10)]
    assert all(e.kind == "step" for e in events)
    assert events[-1].schema_version == 7 and events[-1].extra == {"new_field": {"a": 1}}
