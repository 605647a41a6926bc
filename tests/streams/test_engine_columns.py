"""rankwatch.streams.engine_columns: the columnar step path gives what Engine.process gives
(alerts, ids included, and every rank's state), with the real detectors and decoder."""

from __future__ import annotations

from rankwatch.streams import Engine


def _life_of_a_job() -> list[bytes]:
    """Step events of one 6-rank job through the rows the columnar path leaves to process():
    first steps, duplicates, an evaluation pass, a world_size announced late, a restart that
    says its attempt, one that does not (a lower step, later), late steps of an attempt that
    is over, and a rank whose gradient norm blows up (findings held with the steps)."""
    import random

    import orjson

    rng = random.Random(5)
    out: list[bytes] = []

    def emit(rank: int, n: int, t: float, **extra: object) -> None:
        value = {"schema_version": 1, "kind": "step", "job_id": "life", "rank": rank, "step": n, "timestamp": t,
                 "loss": 2.0 + rng.gauss(0, 0.02), "gradient_norm": 1.0 + rng.random() * 0.1,
                 "step_time_s": 1.0, "compute_time_s": 0.8, "data_time_s": 0.05,
                 "throughput_tokens_per_sec": 8000.0 + rng.random(), **extra}  # fmt: skip
        out.append(orjson.dumps(value))

    t = 1_700_000_000.0
    for n in range(60):
        for r in rng.sample(range(6), 6):
            extra: dict[str, object] = {"world_size": 6} if n >= 3 else {}
            if 30 <= n < 33:
                extra["phase"] = "eval"
            if n >= 45 and r == 2:
                extra["gradient_norm"] = 500.0
            emit(r, n, t + n + r * 0.01, **extra)
            if rng.random() < 0.03:
                emit(r, n, t + n + r * 0.01, **extra)  # redelivered
    t += 100
    for n in range(20, 40):  # restarted from step 20, attempt said
        for r in range(6):
            emit(r, n, t + n + r * 0.01, world_size=6, attempt=1)
    emit(4, 59, t - 50, world_size=6)  # a late step of the attempt that is over
    t += 100
    for n in range(10, 30):  # restarted again, attempt not said: a lower step, later
        for r in range(6):
            emit(r, n, t + n + r * 0.01, world_size=6, attempt=1)
    return out


def test_process_columns_matches_process_row_for_row() -> None:
    """Alerts, and every rank's state after each batch, the same as one event at a time."""
    from rankwatch.schemas import decode
    from rankwatch.schemas.columns import decode_batch
    from rankwatch.streams.engine import EngineConfig
    from rankwatch.streams.testing import state_difference

    messages = _life_of_a_job()
    for size in (len(messages), 97, 5, 1):
        one = Engine.with_builtin_detectors()
        # Every row that can takes the columnar path, however small the job.
        other = Engine.with_builtin_detectors(EngineConfig(columnar_from_ranks=0))
        alerts, got = [], []
        for i in range(0, len(messages), size):
            batch = messages[i : i + size]
            alerts += [a for m in batch for a in one.process(decode(m))]
            cols = decode_batch(batch).steps
            got += other.process_columns(cols, range(len(cols)))
            assert state_difference(other.jobs["life"], one.jobs["life"]) is None, i
        alerts += one.flush()
        got += other.flush()
        assert any(a.rule == "gradient_explosion" for a in alerts)
        assert any(a.rule == "job_restarted" for a in alerts)
        assert repr([a.model_dump() for a in got]) == repr([a.model_dump() for a in alerts])
