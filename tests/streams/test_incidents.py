"""rankwatch.streams.incidents on its own: each promise of its docstring, through IncidentBook
and a plain JobState (no engine, no detectors)."""

from __future__ import annotations

import copy

from rankwatch.schemas import Alert
from rankwatch.streams import Finding, IncidentPolicy, JobState, Resolution
from rankwatch.streams.incidents import IncidentBook

T0 = 1_700_000_000.0


def job(world: int = 8) -> JobState:
    return JobState(job_id="job-1", world_size=world)


def finding(rank: int | None, t: float, *, rule: str = "loss_explosion", step: int = 10) -> Finding:
    return Finding(
        rule=rule,
        rank=rank,
        severity="critical",
        event_time=t,
        summary=f"loss is NaN on rank {rank}",
        step=step,
        evidence={"loss": "nan"},
    )


def feed(book: IncidentBook, state: JobState, *findings: Finding) -> list[Alert]:
    out: list[Alert] = []
    for f in findings:
        book.on_finding(state, f, out)
    return out


def tick(book: IncidentBook, state: JobState, now: float) -> list[Alert]:
    out: list[Alert] = []
    book.on_time(state, now, out)
    return out


def test_a_repeat_of_an_open_incident_only_extends_it() -> None:
    book, state = IncidentBook(), job()
    feed(book, state, finding(3, T0))
    (first,) = tick(book, state, T0 + 3)
    assert first.scope == "rank" and first.ranks == [3]
    assert feed(book, state, finding(3, T0 + 10), finding(3, T0 + 20)) == []
    assert tick(book, state, T0 + 21) == []
    (incident,) = state.incidents.values()
    assert incident["last_seen"] == T0 + 20 and incident["alert_id"] == first.alert_id


def test_many_ranks_within_the_wait_are_one_job_alert_listing_them() -> None:
    book, state = IncidentBook(IncidentPolicy(group_wait_s=2.0, job_fraction=0.5)), job(8)
    out = feed(book, state, *(finding(rank, T0 + rank * 0.1) for rank in range(5)))
    assert out == []  # gathered, not yet decided
    assert tick(book, state, T0 + 1.0) == []  # the wait is not over
    (alert,) = tick(book, state, T0 + 2.0)
    assert alert.scope == "job" and alert.ranks == [0, 1, 2, 3, 4]
    assert alert.summary.startswith("5 of 8 ranks: ")
    assert alert.evidence["ranks_affected"] == 5 and alert.evidence["world_size"] == 8


def test_every_rank_reporting_decides_at_once_without_waiting() -> None:
    book, state = IncidentBook(), job(4)
    (alert,) = feed(book, state, *(finding(rank, T0) for rank in range(4)))
    assert alert.scope == "job" and alert.ranks == [0, 1, 2, 3]


def test_a_few_ranks_below_the_fraction_get_an_alert_each() -> None:
    book, state = IncidentBook(IncidentPolicy(job_fraction=0.5, max_rank_alerts=3)), job(16)
    feed(book, state, finding(2, T0), finding(9, T0 + 0.5))
    alerts = tick(book, state, T0 + 5)
    assert [(a.scope, a.ranks) for a in alerts] == [("rank", [2]), ("rank", [9])]
    assert alerts[0].alert_id != alerts[1].alert_id


def test_more_ranks_than_max_rank_alerts_are_one_job_incident_whatever_their_share() -> None:
    book, state = IncidentBook(IncidentPolicy(job_fraction=0.9, max_rank_alerts=3)), job(64)
    feed(book, state, *(finding(rank, T0) for rank in (1, 5, 9, 13)))
    (alert,) = tick(book, state, T0 + 5)
    assert alert.scope == "job" and alert.ranks == [1, 5, 9, 13]


def test_an_immediate_rule_skips_the_wait_and_followers_are_gathered() -> None:
    book, state = IncidentBook(IncidentPolicy(group_wait_s=2.0)), job(8)
    (first,) = feed(book, state, finding(5, T0, rule="cuda_oom"))
    assert first.scope == "rank" and first.ranks == [5] and first.rule == "cuda_oom"
    # Every other rank follows within the wait: gathered, then one alert for the job, not seven.
    followers = [finding(r, T0 + 0.5, rule="cuda_oom") for r in range(8) if r != 5]
    assert feed(book, state, *followers) == []
    (job_alert,) = tick(book, state, T0 + 2.5)
    assert job_alert.scope == "job" and job_alert.ranks == list(range(8))
    assert tick(book, state, T0 + 10) == []


def test_an_immediate_rule_on_a_lone_rank_alerts_before_any_tick() -> None:
    book, state = IncidentBook(), job(8)
    (alert,) = feed(book, state, finding(0, T0, rule="fatal_error"))
    assert alert.status == "firing"
    plain = feed(IncidentBook(), job(8), finding(0, T0, rule="loss_explosion"))
    assert plain == []  # a rule not in immediate_rules waits for its group


def test_a_job_wide_finding_is_one_job_alert_at_once() -> None:
    book, state = IncidentBook(), job(8)
    (alert,) = feed(book, state, finding(None, T0, rule="hang"))
    assert alert.scope == "job"
    # A rank's finding of the same rule joins it: no second alert.
    assert feed(book, state, finding(2, T0 + 1, rule="hang")) == []
    assert 2 in state.incidents[next(iter(state.incidents))]["ranks"]


def test_resolutions_for_every_rank_close_with_the_same_id_and_a_new_fault_is_new() -> None:
    book, state = IncidentBook(), job(4)
    (fired,) = feed(book, state, *(finding(rank, T0) for rank in range(4)))
    out: list[Alert] = []
    for rank in range(3):
        book.on_resolution(state, Resolution("loss_explosion", rank, T0 + 30), out)
    assert out == []  # rank 3 is still firing
    book.on_resolution(state, Resolution("loss_explosion", 3, T0 + 31, summary="loss back"), out)
    (resolved,) = out
    assert resolved.status == "resolved" and resolved.alert_id == fired.alert_id
    assert resolved.summary == "resolved: loss back" and state.incidents == {}
    (again,) = feed(book, state, *(finding(rank, T0 + 100, step=90) for rank in range(4)))
    assert again.status == "firing" and again.alert_id != fired.alert_id


def test_an_incident_without_new_evidence_expires() -> None:
    book, state = IncidentBook(IncidentPolicy(expire_after_s=60.0)), job(8)
    (fired,) = feed(book, state, finding(1, T0, rule="cuda_oom"))
    assert tick(book, state, T0 + 59) == []
    (resolved,) = tick(book, state, T0 + 61)
    assert resolved.alert_id == fired.alert_id and resolved.status == "resolved"
    assert resolved.summary == "resolved: no new evidence"


def test_flush_decides_pending_groups_at_the_end_of_input() -> None:
    book, state = IncidentBook(), job(8)
    feed(book, state, finding(6, T0))
    out: list[Alert] = []
    book.flush(state, out)
    assert [(a.scope, a.ranks) for a in out] == [("rank", [6])] and state.pending == {}


def test_close_all_resolves_every_open_incident() -> None:
    book, state = IncidentBook(), job(8)
    feed(book, state, finding(0, T0, rule="cuda_oom"), finding(None, T0, rule="hang"))
    out: list[Alert] = []
    book.close_all(state, T0 + 5, "the job ended", out)
    assert {a.status for a in out} == {"resolved"} and len(out) == 2 and state.incidents == {}


def test_all_state_lives_in_the_job_state_so_it_persists_with_it() -> None:
    """A copy of the JobState taken mid-wait, given to a new book, decides the same way."""
    policy = IncidentPolicy(group_wait_s=2.0)
    book, state = IncidentBook(policy), job(8)
    feed(book, state, *(finding(rank, T0) for rank in range(5)))
    saved = copy.deepcopy(state)
    live = tick(book, state, T0 + 3)
    restored = tick(IncidentBook(policy), saved, T0 + 3)
    assert [a.model_dump() for a in restored] == [a.model_dump() for a in live] != []
