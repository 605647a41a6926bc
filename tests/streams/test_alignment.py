"""The worker's merge of the steps and logs partitions by timestamp, in-process."""

from __future__ import annotations

import random

import pytest

from rankwatch.streams.runtime.alignment import InputAligner

STEPS, LOGS = 0, 1


def test_one_flowing_topic_goes_straight_through_when_the_other_is_at_its_end() -> None:
    aligner = InputAligner(2, slack_ms=0)
    aligner.mark_end(LOGS, 0)
    for offset in range(3):
        aligner.add(STEPS, 0, 100 - offset, offset, f"s{offset}")  # not in time order: kept
    assert aligner.ready(0.0) == ["s0", "s1", "s2"]
    assert aligner.held() == 0


def test_heads_in_timestamp_order_ties_in_topic_order() -> None:
    aligner = InputAligner(2, slack_ms=0)
    for offset, ts in enumerate([10, 20, 30]):
        aligner.add(STEPS, 0, ts, offset, f"s{ts}")
    for offset, ts in enumerate([5, 20, 40]):
        aligner.add(LOGS, 0, ts, offset, f"l{ts}")
    aligner.mark_end(STEPS, 0)
    aligner.mark_end(LOGS, 0)
    assert aligner.ready(0.0) == ["l5", "s10", "s20", "l20", "s30", "l40"]


def test_an_add_clears_the_end_mark() -> None:
    aligner = InputAligner(2, slack_ms=0)
    aligner.mark_end(LOGS, 0)
    aligner.add(LOGS, 0, 50, 0, "l50")
    aligner.add(STEPS, 0, 10, 0, "s10")
    aligner.add(STEPS, 0, 60, 1, "s60")
    # logs[0] brought a message after its end: it may bring more before t=60.
    assert aligner.ready(0.0) == ["s10", "l50"]
    assert aligner.first_held() == {(STEPS, 0): 1}


def test_a_record_waits_for_a_lagging_topic_and_goes_once_it_is_caught_up() -> None:
    aligner = InputAligner(2, slack_ms=0)
    aligner.add(LOGS, 3, 100, 7, "oom")
    lagging = {(STEPS, 3)}

    def caught_up(topic: int, partition: int) -> bool:
        return (topic, partition) not in lagging

    assert aligner.ready(0.0, caught_up) == []
    assert aligner.first_held() == {(LOGS, 3): 7}  # the commit stops before it
    aligner.add(STEPS, 3, 90, 0, "s90")
    aligner.add(STEPS, 3, 110, 1, "s110")
    lagging = {(LOGS, 3)}  # more records were fetched after the OOM
    assert aligner.ready(0.1, caught_up) == ["s90", "oom"]
    assert aligner.first_held() == {(STEPS, 3): 1}
    lagging.clear()  # read to the end the last fetch reported: nothing to wait for
    assert aligner.ready(0.2, caught_up) == ["s110"]
    assert aligner.held() == 0 and aligner.first_held() == {}


def test_partitions_are_merged_independently() -> None:
    aligner = InputAligner(2, slack_ms=0)
    aligner.add(LOGS, 0, 100, 0, "l0")  # partition 0 waits for its steps ...
    aligner.mark_end(LOGS, 1)
    aligner.add(STEPS, 1, 500, 0, "s1")  # ... partition 1 does not wait for partition 0
    assert aligner.ready(0.0) == ["s1"]
    assert aligner.held() == 1


def test_a_topic_known_to_be_behind_is_waited_for_past_max_wait() -> None:
    aligner = InputAligner(2, slack_ms=0, max_wait_s=5.0)
    aligner.add(LOGS, 0, 100, 0, "l100")
    assert aligner.ready(10.0, lambda t, p: False) == []
    assert aligner.ready(60.0, lambda t, p: False) == []  # its steps are on their way
    aligner.add(STEPS, 0, 150, 0, "s150")
    assert aligner.ready(61.0, lambda t, p: False) == ["l100"]


def test_within_the_slack_nothing_waits() -> None:
    aligner = InputAligner(2, slack_ms=10_000)
    aligner.add(STEPS, 0, 100_000, 0, "s100")
    assert aligner.ready(0.0, lambda t, p: None) == []  # nothing known of logs[0] yet
    aligner.add(LOGS, 0, 95_000, 0, "l95")
    aligner.add(LOGS, 0, 109_000, 1, "l109")
    aligner.add(LOGS, 0, 111_000, 2, "l111")
    # Live, the steps are a little behind: records up to 10 s past the newest step go at once.
    assert aligner.ready(0.1, lambda t, p: False) == ["l95", "s100", "l109"]
    assert aligner.first_held() == {(LOGS, 0): 2}
    aligner.add(STEPS, 0, 101_000, 1, "s101")
    assert aligner.ready(0.2, lambda t, p: False) == ["s101", "l111"]


def test_a_partition_that_waited_too_long_is_handed_on_as_it_is() -> None:
    aligner = InputAligner(2, slack_ms=0, max_wait_s=5.0)
    aligner.add(LOGS, 0, 100, 0, "l100")
    assert aligner.ready(10.0) == []
    assert aligner.ready(14.9) == []
    assert aligner.ready(15.0) == ["l100"]
    aligner.add(LOGS, 0, 101, 1, "l101")  # the clock starts again for the next wait
    assert aligner.ready(16.0) == []


def test_a_partition_holding_too_much_is_handed_on() -> None:
    aligner = InputAligner(2, slack_ms=0, max_held=3)
    for offset in range(2):
        aligner.add(LOGS, 0, offset, offset, offset)
    assert aligner.ready(0.0, lambda t, p: False) == []  # steps[0] behind: wait ...
    aligner.add(LOGS, 0, 2, 2, 2)
    assert aligner.ready(0.0, lambda t, p: False) == [0, 1, 2]  # ... up to the bound


def test_dropped_partitions_forget_messages_and_ends() -> None:
    aligner = InputAligner(2, slack_ms=0)
    aligner.add(LOGS, 0, 1, 0, "a")
    aligner.mark_end(STEPS, 1)
    aligner.drop({0, 1})
    assert aligner.held() == 0 and aligner.first_held() == {}
    aligner.add(LOGS, 1, 1, 0, "b")
    assert aligner.ready(0.0) == []  # steps[1]'s end was forgotten with it


@pytest.mark.parametrize("seed", range(20))
def test_any_delivery_of_a_produced_sequence_comes_out_in_its_order(seed: int) -> None:
    """Two topics written in time order, delivered in random chunks, one topic running far
    ahead of the other: the merge is the order they were written in, or with a slack, never
    a message before one of the other topic more than the slack older."""
    rng = random.Random(seed)
    written = [(t, rng.choice([STEPS, STEPS, STEPS, LOGS])) for t in range(300)]
    for slack in (0, 5):
        out = _deliver(written, InputAligner(2, slack_ms=slack), random.Random(seed))
        assert sorted(out) == [ts for ts, _ in written]
        if slack == 0:
            assert out == [ts for ts, _ in written]
        topic_of = dict(written)
        for i, ts in enumerate(out):
            later = [u for u in out[i + 1 :] if topic_of[u] != topic_of[ts]]
            assert not later or min(later) >= ts - slack, (ts, min(later))


def _deliver(
    written: list[tuple[int, int]], aligner: InputAligner, rng: random.Random
) -> list[int]:
    per_topic: list[list[tuple[int, int]]] = [[], []]
    for ts, topic in written:
        per_topic[topic].append((len(per_topic[topic]), ts))
    ends = [len(q) for q in per_topic]
    read = [0, 0]
    out: list[int] = []

    def caught_up(topic: int, _partition: int) -> bool:
        return read[topic] >= ends[topic]

    while read != ends:
        topic = rng.choice([t for t in (STEPS, LOGS) if read[t] < ends[t]])
        chunk = rng.randint(1, 60)
        for offset, ts in per_topic[topic][read[topic] : read[topic] + chunk]:
            aligner.add(topic, 0, ts, offset, ts)
        read[topic] = min(ends[topic], read[topic] + chunk)
        out += aligner.ready(0.0, caught_up)
    return out + aligner.ready(0.0, caught_up)


def test_adding_consumed_messages_in_bulk_is_adding_them_one_by_one() -> None:
    """add_messages (the consumer loop's) leaves the aligner as add() of each in turn, and
    stops at the first message that carries an error (an end of partition, handled apart)."""
    from test_checkpoint import Error, Message

    rng = random.Random(4)
    topics = {"steps": 0, "logs": 1}
    messages = [
        Message(rng.choice(list(topics)), rng.randrange(3), k, b"v", 1_000 + k) for k in range(60)
    ]
    messages[37] = Message("logs", 1, 37, None, 0, Error(-191))
    one = InputAligner(2, slack_ms=0)
    one.mark_end(1, 1)
    for msg in messages[:37]:
        one.add(topics[msg.topic()], msg.partition(), msg.timestamp()[1], msg.offset(), msg)
    bulk = InputAligner(2, slack_ms=0)
    bulk.mark_end(1, 1)  # an end mark that an add clears
    assert bulk.add_messages(messages, topics, 0) == 37
    assert bulk.add_messages(messages, topics, 38) == 60
    for msg in messages[38:]:
        one.add(topics[msg.topic()], msg.partition(), msg.timestamp()[1], msg.offset(), msg)
    for name in ("_queues", "_newest", "_at_end"):
        assert getattr(bulk, name) == getattr(one, name), name
    assert (1, 1) not in bulk._at_end and len(bulk._newest) == 6
