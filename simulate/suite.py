"""The detector scenario suite: every fault scenario through the engine, scored.

For each scenario and job size it reports whether each expected alert fired (recall), how long
after the fault it fired (in event time), and every other alert (false positives): firing
alerts of rules the scenario does not allow, and extra alerts for an incident already alerted.

    rankwatch scenarios --ranks 8,64,256
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rankwatch.schemas import Alert
from rankwatch.simulate.job import Timeline, simulate
from rankwatch.simulate.model import JobSpec
from rankwatch.simulate.scenarios import SCENARIOS, Expectation
from rankwatch.streams import Engine


@dataclass(slots=True)
class Detection:
    expectation: Expectation
    alert: Alert | None = None
    latency_s: float | None = None  # event time from the fault's start to the alert

    @property
    def ok(self) -> bool:
        return self.latency_s is not None and self.latency_s <= self.expectation.within_s


@dataclass(slots=True)
class ScenarioResult:
    scenario: str
    ranks: int
    events: int
    detections: list[Detection] = field(default_factory=list)
    false_positives: list[Alert] = field(default_factory=list)
    firing: int = 0

    @property
    def passed(self) -> bool:
        return all(d.ok for d in self.detections) and not self.false_positives


def _matches(e: Expectation, alert: Alert) -> bool:
    if alert.rule != e.rule or alert.status != "firing":
        return False
    if e.scope == "job":
        return alert.scope == "job"
    return set(e.ranks) <= set(alert.ranks)


def run_scenario(
    name: str,
    ranks: int,
    *,
    steps: int = 260,
    at_step: int = 150,
    seed: int = 7,
    duplicates: float = 0.01,
    reorder: float = 0.02,
    engine_factory: Callable[[], Engine] = Engine.with_builtin_detectors,
) -> ScenarioResult:
    spec = JobSpec(job_id=f"sim-{name}-{ranks}", ranks=ranks, steps=steps, seed=seed)
    scenario = SCENARIOS[name](at_step=at_step, rank=min(3, ranks - 1))
    timeline = Timeline()
    engine = engine_factory()
    emitted: list[tuple[float, Alert]] = []
    count = 0
    for event in simulate(
        spec, [scenario], duplicates=duplicates, reorder=reorder, timeline=timeline
    ):
        count += 1
        for alert in engine.process(event):
            emitted.append((event.epoch, alert))
    last = emitted[-1][0] if emitted else spec.start_time
    emitted += [(last, a) for a in engine.flush()]

    result = ScenarioResult(name, ranks, count)
    start = timeline.fault_start.get(name)
    expectations = scenario.expectations(spec)
    allowed = {e.rule for e in expectations} | scenario.consequences
    seen_incidents: set[str] = set()
    for when, alert in emitted:
        if alert.status != "firing":
            continue
        result.firing += 1
        if alert.rule not in allowed:
            result.false_positives.append(alert)
            continue
        if alert.rule in {e.rule for e in expectations} and alert.rule not in scenario.consequences:
            # One incident, one alert: a second firing alert of the expected rule is noise.
            key = alert.rule
            if key in seen_incidents:
                result.false_positives.append(alert)
                continue
            seen_incidents.add(key)
        for e in expectations:
            if _matches(e, alert) and not any(d.expectation is e for d in result.detections):
                latency = None if start is None else when - start
                result.detections.append(Detection(e, alert, latency))
    for e in expectations:
        if not any(d.expectation is e for d in result.detections):
            result.detections.append(Detection(e))
    return result


def run_suite(
    ranks: Iterable[int] = (8, 64, 256), names: Iterable[str] | None = None, **kwargs: object
) -> list[ScenarioResult]:
    return [
        run_scenario(name, n, **kwargs)  # type: ignore[arg-type]
        for n in ranks
        for name in (names or SCENARIOS)
    ]


def format_report(results: list[ScenarioResult]) -> str:
    lines = [
        f"{'scenario':<20} {'ranks':>5} {'events':>8}  {'expected':<22} "
        f"{'fired':<5} {'after':>8}  false positives"
    ]
    expected = detected = fps = 0
    for r in results:
        fp_text = ", ".join(f"{a.rule}({a.scope}:{a.ranks[:4]})" for a in r.false_positives)
        rows: list[Detection | None] = list(r.detections) or [None]
        for i, d in enumerate(rows):
            head = f"{r.scenario:<20} {r.ranks:>5} {r.events:>8}" if i == 0 else " " * 35
            if d is None:
                lines.append(f"{head}  {'(nothing)':<22} {'-':<5} {'-':>8}  {fp_text or '0'}")
                continue
            expected += 1
            detected += d.ok
            after = "-" if d.latency_s is None else f"{d.latency_s:.0f}s"
            lines.append(
                f"{head}  {d.expectation.rule + '/' + d.expectation.scope:<22} "
                f"{'yes' if d.ok else 'NO':<5} {after:>8}  {fp_text or '0'}"
            )
        fps += len(r.false_positives)
    recall = detected / expected if expected else 1.0
    lines.append(f"recall {detected}/{expected} = {recall:.0%}; false positives {fps}")
    return "\n".join(lines)
