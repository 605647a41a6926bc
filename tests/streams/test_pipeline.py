"""rankwatch.streams.pipeline on its own: raw messages in, alerts and dead letters out, with the
real decoder and the real built-in detectors (no broker)."""

from __future__ import annotations

import base64

import orjson
import pytest

from rankwatch.schemas import Alert, decode, encode
from rankwatch.streams import Engine, JobState
from rankwatch.streams.pipeline import MAX_DEAD_PAYLOAD, DeadLetter, Pipeline

T0 = 1_700_000_000


def step(rank: int, n: int, loss: float | str = 2.0, job: str = "job-1") -> bytes:
    return orjson.dumps(
        {"kind": "step", "job_id": job, "rank": rank, "world_size": 4, "step": n,
         "timestamp": T0 + n, "loss": loss}
    )  # fmt: skip


def job_with_nan_loss() -> list[bytes]:
    """Four ranks, 40 healthy steps, then NaN on every rank: loss_explosion must fire."""
    out = [step(rank, n, 2.0 - n * 0.01) for n in range(40) for rank in range(4)]
    out += [step(rank, n, "nan") for n in range(40, 45) for rank in range(4)]
    return out


def run(messages: list[bytes]) -> list[Alert]:
    pipeline = Pipeline(Engine.with_builtin_detectors())
    alerts: list[Alert] = []
    for message in messages:
        result = pipeline.handle(message)
        assert not isinstance(result, DeadLetter), result.error
        alerts += result
    return alerts + pipeline.flush()


def test_the_same_input_gives_the_same_alerts_ids_included() -> None:
    first, second = run(job_with_nan_loss()), run(job_with_nan_loss())
    assert any(a.rule == "loss_explosion" and a.status == "firing" for a in first)
    # Compared on the wire (a NaN in the evidence is not equal to itself as a float).
    assert [encode(a) for a in first] == [encode(a) for a in second]


def test_a_bad_message_is_a_dead_letter_with_the_reason_and_processing_goes_on() -> None:
    pipeline = Pipeline(Engine([]))
    bad = b'{"kind":"step","job_id":"j","rank":-1,"step":1,"timestamp":0}'
    dead = pipeline.handle(bad, topic="rankwatch.steps", partition=2, offset=41, key=b"j")
    assert isinstance(dead, DeadLetter)
    assert dead.error.startswith("rank: ") and [p.field for p in dead.problems] == ["rank"]
    assert (dead.topic, dead.partition, dead.offset, dead.key) == ("rankwatch.steps", 2, 41, b"j")
    assert pipeline.handle(step(0, 1)) == []
    assert (pipeline.stats.events, pipeline.stats.bad) == (1, 1)


def test_not_json_is_a_dead_letter_too() -> None:
    dead = Pipeline(Engine([])).handle(b"loss=nan at step 3")
    assert isinstance(dead, DeadLetter) and "not valid JSON" in dead.error


def test_an_alert_on_the_input_is_not_an_input_event() -> None:
    alert = Alert(
        alert_id="a1", job_id="j", rule="cuda_oom", severity="critical", scope="rank",
        first_seen=T0, last_seen=T0, summary="x",
    )  # fmt: skip
    dead = Pipeline(Engine([])).handle(orjson.dumps(alert.model_dump(mode="json")))
    assert isinstance(dead, DeadLetter)
    assert dead.error == "kind: 'alert' is not an input event (step or log)"


def test_a_dead_letter_is_a_json_object_that_keeps_the_payload() -> None:
    dead = DeadLetter("bad", [], b'{"x": 1}', "t", 0, 7, b"k")
    record = orjson.loads(dead.to_bytes())
    assert record["payload"] == '{"x": 1}' and record["payload_encoding"] == "utf-8"
    assert record["key"] == "k" and record["offset"] == 7 and "payload_truncated" not in record


def test_a_binary_payload_travels_as_base64() -> None:
    raw = b"\xff\xfe\x00garbage"
    record = DeadLetter("bad", [], raw).to_json()
    assert record["payload_encoding"] == "base64"
    assert base64.b64decode(record["payload"]) == raw


def test_a_huge_payload_is_cut_so_the_dead_letter_still_fits_a_request() -> None:
    raw = b"x" * (MAX_DEAD_PAYLOAD * 3)
    record = DeadLetter("too big", [], raw).to_json()
    assert len(record["payload"]) == MAX_DEAD_PAYLOAD
    assert record["payload_truncated"] is True and record["payload_bytes"] == len(raw)


def test_an_engine_failure_dead_letters_the_event_and_the_stream_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = Engine([])
    pipeline = Pipeline(engine)
    real = engine.process

    def process(event: object) -> list[Alert]:
        if getattr(event, "step", None) == 2:
            raise ZeroDivisionError("a detector bug")
        return real(event)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "process", process)
    dead = pipeline.handle(step(0, 2), offset=5)
    assert isinstance(dead, DeadLetter)
    assert "internal error in the detector engine" in dead.error and "a detector bug" in dead.error
    assert pipeline.handle(step(0, 3)) == []
    assert (pipeline.stats.events, pipeline.stats.bad) == (1, 1)


def test_restore_is_asked_once_per_job_for_its_saved_state() -> None:
    asked: list[str] = []
    saved = JobState(job_id="job-1", world_size=4, max_step=99)

    def restore(job_id: str) -> JobState | None:
        asked.append(job_id)
        return saved if job_id == "job-1" else None

    engine = Engine([])
    pipeline = Pipeline(engine, restore=restore)
    for message in (step(0, 100), step(1, 100), step(0, 1, job="job-2"), step(2, 101)):
        assert pipeline.handle(message) == []
    assert asked == ["job-1", "job-2"]
    assert engine.jobs["job-1"].max_step >= 99  # the saved state carried on


def test_take_dirty_names_the_touched_jobs_and_rank_chunks_once() -> None:
    pipeline = Pipeline(Engine([]), ranks_per_chunk=2)
    for message in (step(0, 1), step(3, 1), step(1, 1, job="job-2")):
        pipeline.handle(message)
    assert pipeline.take_dirty() == {"job-1": {0, 1}, "job-2": {0}}
    assert pipeline.take_dirty() == {}


def test_jobs_of_revoked_partitions_are_forgotten() -> None:
    engine = Engine([])
    pipeline = Pipeline(engine)
    pipeline.handle(step(0, 1), partition=0)
    pipeline.handle(step(0, 1, job="job-2"), partition=1)
    assert pipeline.forget_partitions({1}) == ["job-2"]
    assert "job-2" not in engine.jobs and "job-1" in engine.jobs
    assert pipeline.partition_of == {"job-1": 0}


def test_defaults_fill_fields_a_line_lacks() -> None:
    line = b'{"step": 3, "loss": 2.5, "timestamp": 1700000000, "rank": 0}'
    assert Pipeline(Engine([])).handle(line, defaults={"job_id": "from-file"}) == []
    assert decode(line, defaults={"job_id": "from-file"}).job_id == "from-file"


# -- handle_batch: the columnar path gives what handle gives ----------------------------------


def _scenario_messages(name: str, ranks: int, seed: int) -> list[bytes]:
    from rankwatch.simulate import JobSpec, simulate
    from rankwatch.simulate.scenarios import SCENARIOS

    spec = JobSpec(job_id=f"sim-{name}", ranks=ranks, steps=200, seed=seed)
    fault = SCENARIOS[name](at_step=120, rank=min(3, ranks - 1))
    return [encode(e) for e in simulate(spec, [fault], duplicates=0.01, reorder=0.02)]


def _one_by_one(messages: list[bytes]) -> tuple[list[Alert], Pipeline]:
    pipeline = Pipeline(Engine.with_builtin_detectors())
    pipeline.feed_clock_from_events()
    alerts: list[Alert] = []
    for message in messages:
        result = pipeline.handle(message)
        assert not isinstance(result, DeadLetter), result.error
        alerts += result
    return alerts + pipeline.flush(), pipeline


def _in_batches(messages: list[bytes], seed: int) -> tuple[list[Alert], Pipeline]:
    import random

    from rankwatch.streams.engine import EngineConfig

    rng = random.Random(seed)
    # Every row that can takes the columnar path, however small the job.
    pipeline = Pipeline(Engine.with_builtin_detectors(EngineConfig(columnar_from_ranks=0)))
    pipeline.feed_clock_from_events()
    alerts: list[Alert] = []
    i = 0
    while i < len(messages):
        n = rng.choice([1, 2, 7, 60, 400, 1500])
        got, dead = pipeline.handle_batch(messages[i : i + n])
        assert not dead
        alerts += got
        i += n
    return alerts + pipeline.flush(), pipeline


@pytest.mark.parametrize(
    ("name", "ranks"),
    [("nan_loss", 16), ("memory_leak", 8), ("hang", 8), ("straggler", 64), ("cuda_oom", 8)],
)
def test_handle_batch_gives_the_alerts_and_state_of_handle(name: str, ranks: int) -> None:
    """A simulated job with its fault, duplicates and reordering, in batches of random size
    (1 to 1,500 messages): the same alerts, every field, in the same order (one job), and
    the same state of every rank, as one message at a time."""
    from rankwatch.streams.state_codec import decode_job, encode_job
    from rankwatch.streams.testing import state_difference

    messages = _scenario_messages(name, ranks, seed=11)
    one, a = _one_by_one(messages)
    batched, b = _in_batches(messages, seed=11)
    assert any(x.status == "firing" for x in one)
    assert repr([x.model_dump() for x in batched]) == repr([x.model_dump() for x in one])
    for job_id, job in a.engine.jobs.items():
        other = b.engine.jobs[job_id]
        assert state_difference(job, other) is None
        # Stored, the frame rules' tables read back as the scalar path's slots.
        assert state_difference(decode_job(encode_job(other)), job) is None


def test_handle_batch_of_two_jobs_steps_interleaved_gives_each_jobs_alerts() -> None:
    """Batches of step rows of two jobs mixed (the grouping path, not the one-job run):
    each job's alerts are those of one message at a time, in that job's order."""
    first = [m for m in _scenario_messages("nan_loss", 16, seed=5) if b'"kind":"step"' in m]
    second = [m for m in _scenario_messages("straggler", 64, seed=6) if b'"kind":"step"' in m]
    mixed = [m for pair in zip(first, second, strict=False) for m in pair]
    mixed += first[len(second) :] + second[len(first) :]
    one, _ = _one_by_one(mixed)
    batched, _ = _in_batches(mixed, seed=5)

    def by_job(alerts: list[Alert]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for a in alerts:
            out.setdefault(a.job_id, []).append(repr(a.model_dump()))
        return out

    assert len(by_job(one)) == 2 and all(by_job(one).values())
    assert by_job(batched) == by_job(one)


def test_handle_batch_dead_letters_bad_messages_by_position_and_applies_the_rest() -> None:
    good = job_with_nan_loss()
    bad = [b"not json", step(-1, 3), encode(_an_alert())]
    messages = [*good[:50], bad[0], *good[50:100], bad[1], bad[2], *good[100:]]
    pipeline = Pipeline(Engine.with_builtin_detectors())
    alerts, dead = pipeline.handle_batch(messages)
    assert [p for p, _ in dead] == [50, 101, 102]
    assert "not valid JSON" in dead[0][1].error
    assert dead[1][1].error.startswith("rank:")
    assert "is not an input event" in dead[2][1].error
    assert [a.rule for a in alerts + pipeline.flush()] == [a.rule for a in run(good)]
    assert pipeline.stats.events == len(good) and pipeline.stats.bad == 3


def _an_alert() -> Alert:
    alerts = run(job_with_nan_loss())
    assert alerts
    return alerts[0]


def test_an_engine_failure_in_a_batch_dead_letters_that_jobs_events_and_the_rest_goes_on() -> None:
    """A detector bug on one job's steps: those messages go to the dead letters with the
    reason, by position; another job's steps in the same batch are applied."""
    from rankwatch.schemas import LogEvent

    class Buggy:
        name = "buggy"

        def new_job_state(self) -> dict[str, int]:
            return {}

        def on_log(
            self, job: JobState, rank: object, state: object, event: LogEvent
        ) -> list[Alert]:
            return []

        def on_step(self, job: JobState, rank: object, state: object, event: object) -> None:
            if job.job_id == "bad":
                raise ZeroDivisionError("a detector bug")

        def on_tick(self, job: JobState, state: object, now: float) -> list[Alert]:
            return []

    pipeline = Pipeline(Engine([Buggy()]))  # type: ignore[list-item]
    messages = [step(r, n, job=j) for n in range(3) for j in ("bad", "good") for r in range(4)]
    _, dead = pipeline.handle_batch(messages)
    bad_positions = [i for i, m in enumerate(messages) if b'"bad"' in m]
    assert dead and {p for p, _ in dead} <= set(bad_positions)
    assert all("internal error in the detector engine" in d.error for _, d in dead)
    assert "a detector bug" in dead[0][1].error
    assert pipeline.engine.jobs["good"].max_step == 2  # the other job went on
    assert pipeline.stats.bad == len(dead)
