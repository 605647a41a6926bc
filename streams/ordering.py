"""Step events applied in event-time order across ranks, whatever order they arrive in.

Kafka keeps each rank's events in order, not the ranks' order among themselves: after a broker
outage each rank's producer drains its own buffer, one rank's backlog lands far ahead of the
others', and a job-level rule evaluated at a tick would judge a picture that depends on that
interleaving (another straggler step, another alert id, ranks that look silent).

So step events are held per job and applied in the order ``(timestamp, rank, step)`` once
every *active* rank has reported a step at or past their timestamp: the job's low watermark,
the minimum over ranks of their latest step time. Within the lateness bounds below the engine
applies the same sequence, ticks included, for any interleaving of the ranks: alerts and their
ids are a function of the events.

A rank drops out of the minimum when it is ``peer_lateness_s`` behind the median rank (it died:
``rank_silent``'s business), or ``max_lateness_s`` behind the newest event. Measured against
the median, not the newest: after an outage the ranks drain one after another, the first far
ahead of most, and none of those behind is dropped; a dead rank is one behind nearly all. All
drop out when the job's log records run ``peer_lateness_s`` past its newest step: the job
stopped stepping (a hang), there is nobody to wait for. A dropped rank's steps, when they come,
are applied as they arrive.

What is held is the cross-rank part of a step. The per-rank rules (loss, gradient, memory,
throughput) see only their rank's steps, in the rank's own order, which Kafka keeps: they run
when the step arrives, and what they find is held with it for the incident book (which groups
ranks). The job-level rules' ``on_step``, the rank's and the job's clocks and the ticks wait.
Log records are not held: the rank rules on them (an OOM, a fatal error) must fire even when
the job dies with them and no step ever follows.

Cost: a step is appended to a list; once per round (as many step arrivals as the job has
ranks) the ready ones are sorted and applied, and the minimum is taken over the ranks: O(1)
per event, amortised. Held steps live in their rank's state (``RankState.held``) so a worker
snapshot keeps them; this index over them is rebuilt from there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rankwatch.streams.detectors.base import JobState
from rankwatch.streams.findings import Outcome

#: A held step: (event time, rank, step, arrival number, event, what the per-rank rules found
#: in it); the first four decide the order. The event is a ``StepEvent``, or a
#: :class:`~rankwatch.schemas.records.StepRecord` of decoded columns (which reads the same).
Held = tuple[float, int, int, int, Any, tuple[Outcome, ...]]

_NEG_INF = float("-inf")
_INF = float("inf")


class StepOrder:
    """The held steps of one job and the latest step time of each of its ranks.

    Runtime only: the engine rebuilds it from the job's ranks when it meets a job it did not
    build this for (a restored snapshot).
    """

    __slots__ = (
        "active",
        "due",
        "held",
        "high",
        "job",
        "latest",
        "median",
        "median_at",
        "seq",
        "start",
        "step_high",
        "world",
    )

    def __init__(self, job: JobState) -> None:
        self.job = job
        self.held: list[Held] = []  # in arrival order
        self.latest: dict[int, float] = {}
        self.high = job.watermark  # newest event time, records included
        self.step_high = _NEG_INF  # newest step time
        self.seq = 0
        self.due = 0  # step arrivals until the next release
        self.active = False  # some rank steps and is waited for
        self.median = _NEG_INF  # of the ranks' latest times, taken when high was median_at
        self.median_at = _NEG_INF
        self.world = job.world_size or 0  # the largest world_size steps announced
        self.start = _INF  # the earliest step time
        for rs in job.ranks.values():
            held: list[Held] | None = getattr(rs, "held", None)
            if held is None:  # a snapshot from before steps were held
                rs.held = held = []
            if not hasattr(rs, "got_step"):
                rs.got_step, rs.got_step_time = rs.last_step, rs.last_step_time
                for entry in held:
                    if entry[2] > rs.got_step:
                        rs.got_step, rs.got_step_time = entry[2], entry[0]
            latest = rs.last_step_time
            for entry in held:
                self.held.append(entry)
                latest = max(latest, entry[0])
                self.seq = max(self.seq, entry[3] + 1)
            if latest > _NEG_INF:
                self.latest[rs.rank] = latest
                self.high = max(self.high, latest)
                self.step_high = max(self.step_high, latest)
                self.start = min(self.start, latest)
                self.active = True

    def low(self, peer_lateness_s: float, max_lateness_s: float) -> float:
        """Event time up to which every active rank has reported: held steps at or before
        it can be applied. O(ranks): called once per round."""
        high = self.high
        times = self.latest.values()
        if not times or high - self.step_high > peer_lateness_s:
            self.active = False
            return high
        self.active = True
        # Ranks of the job not heard from yet (their first steps still on the way) count as
        # ranks at the job's first step: waited for like the others.
        missing = self.world - len(times)
        if missing <= 0:
            lowest = min(times)
            if lowest >= high - peer_lateness_s:
                return lowest
            ordered = sorted(times)
        else:  # taken to be where the job's first step was
            if self.start >= high - peer_lateness_s:
                return self.start
            ordered = [self.start] * missing + sorted(times)
        if high - self.median_at >= peer_lateness_s / 2:
            # The median as of when the job's newest time last moved on (by half the bound):
            # ranks that catch up after it (backlogs drained one after another) do not move
            # it, so the last ranks of a drain are not taken for dead; ranks that step on past
            # a dead one do. A dead rank drops out 30-45 s after its last step, by when
            # rank_silent (30 s, confirmed over 15 more) is due anyway.
            self.median = ordered[len(ordered) // 2]
            self.median_at = high
        floor = max(high - max_lateness_s, self.median - peer_lateness_s)
        for ts in ordered:
            if ts >= floor:
                return ts
        return high

    def hold(
        self,
        held: list[Held],
        now: float,
        rank: int,
        step: int,
        event: Any,
        found: tuple[Outcome, ...],
        world: int | None,
    ) -> bool:
        """Hold a step just received (``held`` is its rank's list, ``RankState.held``); True
        when a round of arrivals is due and the ready steps should be released. ``world``: the
        world size the step announced, if any. One row of :meth:`hold_rows`."""
        self.hold_rows(
            [held], [now], [rank], [step], [event], {0: found} if found else {}, [world], 0
        )
        return self.due <= 0

    def hold_rows(
        self,
        held_of: list[list[Held]],
        times: list[float],
        ranks: list[int],
        steps: list[int],
        events: list[Any],
        found: Mapping[int, Sequence[Outcome]],
        worlds: list[int | None],
        start: int,
    ) -> int:
        """Hold rows ``start, start + 1, ...`` of parallel lists just received (``held_of``:
        each row's rank's list, ``found``: what the per-rank rules found, by row), up to the
        row after which a round of arrivals is due (``due <= 0``) or the end; returns the
        index of the next row not held. The columnar path holds a batch's rows in one call;
        :meth:`hold` is one row."""
        seq = self.seq
        due = self.due
        mine = self.held
        latest = self.latest
        step_high = self.step_high
        n = len(times)
        k = start
        while k < n:
            now = times[k]
            r = ranks[k]
            got = found.get(k) if found else None
            entry = (now, r, steps[k], seq, events[k], () if got is None else tuple(got))
            seq += 1
            held_of[k].append(entry)
            mine.append(entry)
            k += 1
            last = latest.get(r)
            if last is None or now > last:
                if last is None:  # a rank's first step: the job's size and start
                    world = worlds[k - 1]
                    if world is not None and world > self.world:
                        self.world = world
                    if now < self.start:
                        self.start = now
                latest[r] = now
                if now > step_high:
                    step_high = now
                    if now > self.high:
                        self.high = now
            due -= 1
            if due <= 0:
                break
        self.seq = seq
        self.due = due
        self.step_high = step_high
        return k

    def take_ready(self, low: float) -> list[Held]:
        """The held steps at or before ``low``, in event-time order; the rest stay held."""
        held = self.held
        if not held:
            return held
        if held[-1][0] <= low and len(held) == 1:
            self.held = []
            return held
        ready = [e for e in held if e[0] <= low]
        if ready:
            self.held = [e for e in held if e[0] > low] if len(ready) < len(held) else []
            ready.sort()
        return ready
