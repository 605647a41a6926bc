"""Step events applied in event-time order across ranks, whatever order they arrive in.

Kafka keeps each rank's events in order, not the ranks' order among themselves: after a broker
outage each rank's producer drains its own buffer, one rank's backlog lands far ahead of the
others', and a job-level rule evaluated at a tick would judge a picture that depends on that
interleaving (another straggler step, another alert id, ranks that look silent).

So step events are held per job and applied in the order ``(timestamp, rank, step)`` once
every *active* rank has reported a step at or past their timestamp: the job's low watermark,
the minimum over ranks of their latest step time. A rank whose latest step is more than
``max_lateness_s`` behind the newest event of the job is not active (it is dead, or a backlog
too late to wait for; ``rank_silent`` speaks for the dead one): it holds nobody back, and its
steps, when they come, are applied as they arrive. Within that bound the engine applies the
same sequence, ticks included, for any interleaving of the ranks; alerts and their ids are a
function of the events.

Log records are not held: the rank rules on them (an OOM, a fatal error) must fire even when
the job dies with them and no step ever follows. Held steps live in their rank's state
(``RankState.held``) so a worker snapshot keeps them; this index over them is rebuilt from
there.
"""

from __future__ import annotations

from heapq import heappop, heappush

from rankwatch.schemas import StepEvent
from rankwatch.streams.detectors.base import JobState

#: A held step: (event time, rank, step, arrival number, event); the first four decide order.
Held = tuple[float, int, int, int, StepEvent]

_NEG_INF = float("-inf")


class StepOrder:
    """The held steps of one job and the latest step time of each of its ranks.

    Runtime only: the engine rebuilds it from the job's ranks when it meets a job it did not
    build this for (a restored snapshot).
    """

    __slots__ = (
        "arrivals",
        "held",
        "high",
        "job",
        "latest",
        "median",
        "median_at",
        "seq",
        "step_high",
    )

    def __init__(self, job: JobState) -> None:
        self.job = job
        self.held: list[Held] = []  # heap
        self.arrivals: list[tuple[float, int]] = []  # heap, lazy: stale entries skipped
        self.latest: dict[int, float] = {}
        self.high = job.watermark  # newest event time, records included
        self.step_high = _NEG_INF  # newest step time
        self.seq = 0
        self.median = _NEG_INF  # of the ranks' latest times, computed when high was median_at
        self.median_at = _NEG_INF
        for rs in job.ranks.values():
            held: list[Held] | None = getattr(rs, "held", None)
            if held is None:  # a snapshot from before steps were held
                rs.held = held = []
            latest = rs.last_step_time
            for entry in held:
                heappush(self.held, entry)
                latest = max(latest, entry[0])
                self.seq = max(self.seq, entry[3] + 1)
            if latest > _NEG_INF:
                self.latest[rs.rank] = latest
                heappush(self.arrivals, (latest, rs.rank))
                self.high = max(self.high, latest)
                self.step_high = max(self.step_high, latest)

    def arrive(self, ts: float, rank: int) -> None:
        """Note a step of ``rank`` at ``ts`` (the caller holds the event)."""
        if ts > self.latest.get(rank, _NEG_INF):
            self.latest[rank] = ts
            heappush(self.arrivals, (ts, rank))
        if ts > self.step_high:
            self.step_high = ts
            if ts > self.high:
                self.high = ts

    def low(self, peer_lateness_s: float, max_lateness_s: float, refresh_s: float) -> float:
        """Event time up to which every active rank has reported: held steps at or before
        it can be applied.

        A rank drops out when it is ``peer_lateness_s`` behind the median rank (it died, or
        its backlog is lost: ``rank_silent``'s business), or ``max_lateness_s`` behind the
        newest event. Measured against the median, not the newest: after a broker outage the
        ranks drain one after another, the first far ahead of most, and none of those behind
        is dropped; a dead rank is one behind nearly all. All drop out when the job's log
        records run ``peer_lateness_s`` past its newest step: the job stopped stepping.
        """
        arrivals = self.arrivals
        high = self.high
        if high - self.step_high > peer_lateness_s:
            # No rank steps any more (a hung job that still logs): nobody to wait for.
            arrivals.clear()
            return high
        latest = self.latest
        near = high - peer_lateness_s
        while arrivals:
            ts, rank = arrivals[0]
            if ts == latest[rank]:
                if ts >= near:
                    return ts
                if ts >= high - max_lateness_s:
                    if high - self.median_at >= refresh_s:
                        # O(ranks), once per refresh_s of event time at most: a stale (lower)
                        # median only keeps a rank a little longer.
                        times = sorted(latest.values())
                        self.median = times[len(times) // 2]
                        self.median_at = high
                    if ts >= self.median - peer_lateness_s:
                        return ts
            heappop(arrivals)  # superseded by a later event, or the rank dropped out
        return high

    def pop_ready(self, low: float) -> Held | None:
        held = self.held
        if held and held[0][0] <= low:
            return heappop(held)
        return None
