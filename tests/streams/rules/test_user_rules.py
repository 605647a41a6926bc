"""User rules in the engine: each kind fires as specified, with the book's suppression,
aggregation and resolution; built-in tuning; live replacement of the rules."""

from __future__ import annotations

import math

import rules_data

from rankwatch.schemas import Alert, LogEvent, StepEvent
from rankwatch.streams.engine import Engine
from rankwatch.streams.rules import changes, parse_rules

T0 = rules_data.T0


def run(engine: Engine, events: list[StepEvent | LogEvent]) -> list[Alert]:
    return [*engine.process_many(events), *engine.flush()]


def fired(alerts: list[Alert]) -> list[tuple[str, tuple[int, ...], int | None]]:
    return sorted((a.rule, tuple(a.ranks), a.step) for a in alerts if a.status == "firing")


def test_every_kind_fires_once_per_incident_and_overrides_apply() -> None:
    rules = parse_rules(rules_data.RULES)
    events = rules_data.job_events("llama-1") + rules_data.job_events("bench-1")
    engine = rules.engine()
    alerts = run(engine, events)
    by_job = {job: fired([a for a in alerts if a.job_id == job]) for job in ("llama-1", "bench-1")}
    # The built-in crash rule sees the same ENOSPC records: rank 0's at once, then the ranks
    # that follow within the incident book's wait as one job alert.
    crash = [("crash", (0,), 40), ("crash", (0, 2, 3), 40)]
    assert by_job["llama-1"] == [
        *crash,
        ("disk_full", (0, 2), 40),  # min_ranks = 2: one job alert; rank 3 joins it silently
        ("loss_explosion", (2,), 50),
        ("loss_plateau", (0, 1, 2, 3), 0),  # the Python rule, gathered by the incident book
        ("low_mfu", (1,), 30),
        ("retry_storm", (0,), 20),
    ]
    # bench-*: low_mfu and loss_explosion off for those jobs only
    assert by_job["bench-1"] == [
        *crash,
        ("disk_full", (0, 2), 40),
        ("loss_plateau", (0, 1, 2, 3), 0),
        ("retry_storm", (0,), 20),
    ]
    mfu = next(a for a in alerts if a.rule == "low_mfu" and a.job_id == "llama-1")
    assert mfu.summary == "MFU 0.20 on rank 1 since step 30"
    assert mfu.evidence["field"] == "mfu" and mfu.evidence["value"] == 0.2
    disk = next(a for a in alerts if a.rule == "disk_full" and a.status == "firing")
    assert disk.scope == "job" and disk.severity == "critical"
    # the open incident collected the third rank without a second alert
    (incident,) = [i for i in engine.jobs["llama-1"].incidents.values() if i["rule"] == "disk_full"]
    assert incident["ranks"] == {0, 2, 3}


def test_same_input_same_ids() -> None:
    events = rules_data.job_events("llama-1")
    first = run(parse_rules(rules_data.RULES).engine(), events)
    second = run(parse_rules(rules_data.RULES).engine(), events)
    assert [a.alert_id for a in first] == [a.alert_id for a in second]


def _steps(field_values: list[float], **extra: object) -> list[StepEvent]:
    return [
        StepEvent(job_id="j", rank=r, step=s, timestamp=T0 + s, world_size=2, **{"temp": v})
        for s, v in enumerate(field_values)
        for r in range(2)
    ]


THRESHOLD = """
[[rule]]
name = "hot"
kind = "threshold"
field = "temp"
op = ">"
value = 90
for_steps = 3
recover_steps = 2
scope = "{scope}"
"""


def test_threshold_rank_scope_resolves_after_recover_steps() -> None:
    engine = parse_rules(THRESHOLD.format(scope="rank")).engine()
    temps = [80, 95, 95, 80, 95, 95, 95, 95, 80, 80, 80]
    alerts = run(engine, _steps(temps))
    rows = [(a.rule, a.status, a.scope, a.step) for a in alerts]
    # both ranks hot from step 4: gathered into one job alert; two good steps resolve it
    assert rows == [("hot", "firing", "job", 4), ("hot", "resolved", "job", 4)]


def test_threshold_job_scope_and_nonfinite_on_extra_strings() -> None:
    engine = parse_rules(THRESHOLD.format(scope="job")).engine()
    alerts = run(engine, _steps([80, 95, 95, 95, 95, 80, 80]))
    # judged at the job's ticks: rank 0 is over first; rank 1 joins the open incident
    assert [(a.status, a.ranks, a.step) for a in alerts] == [
        ("firing", [0], 1),
        ("resolved", [0, 1], 1),
    ]
    nonfinite = parse_rules(
        "[[rule]]\nname='bad_temp'\nkind='threshold'\nfield='temp'\nop='nonfinite'\n"
    ).engine()
    events = [StepEvent(job_id="j", rank=0, step=1, timestamp=T0, temp="nan")]
    assert [a.rule for a in run(nonfinite, events)] == ["bad_temp"]
    # a missing or non-numeric field is no evidence either way
    events = [StepEvent(job_id="j", rank=0, step=s, timestamp=T0 + s, temp="hot") for s in range(3)]
    assert run(nonfinite, events) == []


def test_frequency_per_rank_and_levels() -> None:
    rules = parse_rules(
        "[[rule]]\nname='oom_retry'\nkind='frequency'\npattern='retry'\ncount=2\nwindow_s=5\n"
        "per='rank'\nlevels=['warn']\n"
    )
    engine = rules.engine()

    def log(rank: int, t: float, level: str = "WARNING") -> LogEvent:
        return LogEvent(job_id="j", rank=rank, timestamp=T0 + t, level=level, message="retry")

    alerts = run(engine, [log(0, 0), log(1, 1), log(0, 9), log(1, 2), log(0, 10, "ERROR")])
    assert fired(alerts) == [("oom_retry", (1,), None)]  # rank 0's two are 9 s apart


def test_builtin_tuning_and_nccl_error_muted_separately() -> None:
    nccl = [
        LogEvent(job_id="j", rank=3, timestamp=T0, level="ERROR",
                 message="NCCL error in: ../nccl.cpp:1, unhandled system error"),
    ]  # fmt: skip
    # The record is all the job ever says: at the end of input it is a job that stopped.
    stopped = ("job_stopped", (3,), None)
    assert fired(run(Engine.with_builtin_detectors(), nccl)) == [
        stopped,
        ("nccl_error", (3,), None),
    ]
    muted = parse_rules("[builtin.nccl_error]\nenabled = false\n").engine()
    assert fired(run(muted, nccl)) == [stopped]
    retagged = parse_rules("[builtin.nccl_error]\nseverity = 'info'\n").engine()
    assert [a.severity for a in run(retagged, nccl) if a.rule == "nccl_error"] == ["info"]
    none = parse_rules("[builtin.loss_explosion]\nenabled = false\n").engine()
    nan = [StepEvent(job_id="j", rank=0, step=1, timestamp=T0, loss=math.nan)]
    assert fired(run(none, nan)) == []


def test_replacing_rules_keeps_state_of_unchanged_rules_and_logs_changes() -> None:
    before = parse_rules("[[rule]]\nname='a'\nkind='log_pattern'\npattern='boom'\n")
    after = parse_rules(
        "[builtin.straggler]\nenabled=false\n"
        "[[rule]]\nname='a'\nkind='log_pattern'\npattern='boom'\nseverity='critical'\n"
        "[[rule]]\nname='b'\nkind='log_pattern'\npattern='bang'\n"
    )
    assert changes(before, after) == [
        "added b",
        "changed a (severity: 'warning' -> 'critical')",
        "changed straggler (enabled: True -> False)",
    ]
    engine = before.engine()
    steps = [StepEvent(job_id="j", rank=0, step=s, timestamp=T0 + s, loss=2.0) for s in range(30)]
    engine.process_many(steps)
    loss_state = engine.jobs["j"].ranks[0].slots["loss_explosion"]
    after.install(engine)
    out = engine.process(LogEvent(job_id="j", rank=0, timestamp=T0 + 31, level="ERROR",
                                  message="bang"))  # fmt: skip
    out += engine.flush()
    assert [a.rule for a in out] == ["b"]
    job = engine.jobs["j"]
    assert job.ranks[0].slots["loss_explosion"] is loss_state  # warm state kept
    assert "straggler" not in job.slots
    assert sum(k.startswith("user:a:") for k in job.slots) == 1  # a's old slot replaced
