"""Soak: healthy jobs with wide noise, and graded faults, through the detector engine in-process.

The detectors were tuned on ``rankwatch.simulate``'s jobs; this feeds them jobs from an
independent generator (``_soak_jobs.py``: 8-1024 ranks, 0.2-10 s steps, heavy-tailed noise,
checkpoints, evaluation pauses, restarts, elastic resizes, duplicated and reordered delivery)
and counts what a person would be paged for:

- a **false alarm** is a firing ``warning``/``critical`` alert on a healthy job; on a fault job,
  one of a rule that is neither the fault's nor an allowed consequence of it, or a second alert
  of the fault's rule for the same incident (one incident, one alert). ``info`` alerts are
  listed apart and not counted;
- **detection** (``--faults``): per fault kind and severity, the cases caught and the median
  latency in event time from the fault's start to its first matching firing alert.

Each job runs in a fresh engine (built-in rules, or ``--rules FILE`` as ``rankwatch replay
--rules`` loads it), jobs in parallel over ``--processes``. Prints a Markdown summary and writes
``$RANKWATCH_BENCH_RESULTS/soak-<out>.json`` (default ``benchmarks/results``).

    .venv/bin/python benchmarks/soak.py --healthy-jobs 20 --seed 1
    .venv/bin/python benchmarks/soak.py --rank-hours 1000 --out 1k
    .venv/bin/python benchmarks/soak.py --faults --fault-seeds 3 --out faults
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import multiprocessing
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from _bench import ROOT, LoadSampler, machine, write_results
from _soak_faults import KINDS, FaultCase, fault_suite
from _soak_jobs import DEFAULT_MAX_EVENTS, SoakJob, draw_job

from rankwatch.schemas import Alert, LogEvent, StepEvent
from rankwatch.streams import Engine

Task = tuple[int | FaultCase, int, str | None]  # (seed or fault case, max events, rules file)
Result = dict[str, Any]
SEVERE = ("warning", "critical")
EXAMPLES = 3  # summaries shown per rule
# What the report shows of a job's parameters beside its false alarms.
SHOWN = (
    "ranks", "steps", "step_s", "framework", "fp16", "memory_report", "report_timing",
    "ckpt_every", "eval_every", "eval_phase", "restarts", "attempt_field", "elastic",
)  # fmt: skip

_rules_cache: dict[str, Any] = {}


def _engine(rules: str | None) -> Engine:
    if rules is None:
        return Engine.with_builtin_detectors()
    if rules not in _rules_cache:
        from rankwatch.streams.rules import load_rules

        _rules_cache[rules] = load_rules(rules)
    engine: Engine = _rules_cache[rules].engine()
    return engine


def _keep(out: list[dict[str, Any]], alerts: list[Alert], at: float) -> None:
    for a in alerts:
        out.append(
            {
                "rule": a.rule,
                "severity": a.severity,
                "scope": a.scope,
                "ranks": a.ranks,
                "step": a.step,
                "status": a.status,
                "summary": a.summary[:400],
                "first_seen": a.first_seen.timestamp(),
                "at": at,  # event time when the engine raised it
            }
        )


def run_job(task: Task) -> Result:
    """Generate one job and run it through a fresh engine (in a worker process)."""
    what, max_events, rules = task
    if isinstance(what, FaultCase):
        params, fault = what.build(max_events)
        job = SoakJob(params, fault)
    else:
        params, fault = draw_job(what, max_events=max_events), None
        job = SoakJob(params)
    engine = _engine(rules)
    alerts: list[dict[str, Any]] = []
    clock = time.perf_counter
    started = clock()
    in_engine = 0.0
    events = 0
    event: StepEvent | LogEvent | None = None
    next_tick = -math.inf
    latest = 0.0  # the newest event time: when the end of input is (events come reordered)
    for event in job.events():
        t0 = clock()
        now = event.epoch
        latest = max(latest, now)
        if now >= next_tick:
            # The worker's clock as replay feeds it: the job's silences (checkpoints, restarts,
            # evaluation pauses) are seen as the live worker would see them.
            next_tick = now + 1.0
            out = engine.advance_clock(now, max_step=math.inf)
            if out:
                _keep(alerts, out, now)
        out = engine.process(event)
        in_engine += clock() - t0
        events += 1
        if out:
            _keep(alerts, out, event.epoch)
    t0 = clock()
    _keep(alerts, engine.flush(), latest)
    in_engine += clock() - t0
    total = clock() - started
    return {
        "job_id": params.job_id,
        "seed": params.seed,
        "case": dataclasses.asdict(what) if isinstance(what, FaultCase) else None,
        "fault": None
        if fault is None
        else {"rank": fault.rank, "start_step": fault.start_step, "start_time": fault.start_time},
        "params": params.describe(),
        "rank_hours": job.rank_seconds / 3600,
        "events": events,
        "step_events": job.step_events,
        "log_events": job.log_events,
        "duplicates": job.duplicates,
        "attempts": job.attempts,
        "clean_end": job.clean_end,
        "gen_s": total - in_engine,
        "engine_s": in_engine,
        "alerts": alerts,
        "timeline": job.timeline,
    }


def run_all(
    tasks: Iterable[Task], processes: int, enough: Callable[[list[Result]], bool] | None = None
) -> list[Result]:
    """Results in task order; stops handing out tasks once ``enough`` of the results in order
    say so (deterministic: which jobs count never depends on which finished first)."""
    ordered: list[Result] = []

    def take(result: Result) -> bool:
        ordered.append(result)
        _progress(result)
        return enough is not None and enough(ordered)

    if processes <= 1:
        for task in tasks:
            if take(run_job(task)):
                break
        return ordered
    done: dict[int, Result] = {}
    todo = enumerate(tasks)
    with multiprocessing.Pool(processes) as pool:
        inflight: dict[int, Any] = {}
        while True:
            while len(inflight) < processes and (nxt := next(todo, None)) is not None:
                inflight[nxt[0]] = pool.apply_async(run_job, (nxt[1],))
            if not inflight:
                return ordered
            time.sleep(0.02)
            for i in [i for i, r in inflight.items() if r.ready()]:
                done[i] = inflight.pop(i).get()
            while len(ordered) in done:
                if take(done.pop(len(ordered))):
                    return ordered  # leaving the block terminates what is still running


def _progress(r: Result) -> None:
    p = r["params"]
    severe = Counter(a["rule"] for a in r["alerts"] if a["status"] == "firing")
    print(
        f"  {r['job_id']}: {p['ranks']} ranks x {p['steps']} steps, {r['events']:,} events, "
        f"{r['rank_hours']:.1f} rank-h, {r['gen_s'] + r['engine_s']:.1f} s; firing: "
        f"{dict(severe) or 'none'}",
        file=sys.stderr,
        flush=True,
    )


# -- judging ----------------------------------------------------------------------------------


def context(alert: dict[str, Any], timeline: list[tuple[float, float, str]]) -> str:
    """What the job was doing over an alert's evidence (its first evidence to its firing)."""
    since, at = alert["first_seen"] - 5.0, alert["at"]
    labels = {what.split(",")[0] for a, b, what in timeline if a <= at and b >= since}
    return " + ".join(sorted(labels)) or "steady training"


def judge(r: Result) -> None:
    """Sort a job's firing alerts into detection, allowed consequences, false alarms, info."""
    firing = [a for a in r["alerts"] if a["status"] == "firing"]
    for a in firing:
        a["context"] = context(a, r["timeline"])
    r["info"] = [a for a in firing if a["severity"] not in SEVERE]
    # A job that went quiet and was relaunched later (job_restarted) did stop: its
    # job_stopped is news, not a false alarm (the generator's restarts are minutes down).
    restarts = [a["at"] for a in r["info"] if a["rule"] == "job_restarted"]
    r["info"] += [
        a for a in firing if a["rule"] == "job_stopped" and any(t > a["at"] for t in restarts)
    ]
    firing = [a for a in firing if a["severity"] in SEVERE and a not in r["info"]]
    r["detected"], r["consequences"] = None, []
    if r["case"] is None:
        r["false_alarms"] = firing
        return
    kind = KINDS[r["case"]["kind"]]
    start, rank = r["fault"]["start_time"], r["fault"]["rank"]
    false: list[dict[str, Any]] = []
    for a in firing:
        after = start is not None and a["at"] >= start
        if after and a["rule"] == kind.rule and (kind.scope == "job" or rank in a["ranks"]):
            if r["detected"] is None:
                r["detected"] = a
            else:
                false.append({**a, "why": "a second alert for the fault's incident"})
        elif after and a["rule"] in kind.allowed:
            r["consequences"].append(a)
        else:
            false.append(a)
    r["false_alarms"] = false
    r["latency_s"] = None if r["detected"] is None else r["detected"]["at"] - start


def false_alarm_table(results: list[Result]) -> dict[str, Any]:
    hours = sum(r["rank_hours"] for r in results)
    by_rule: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"count": 0, "jobs": [], "contexts": Counter(), "examples": []}
    )
    for r in results:
        for a in r["false_alarms"]:
            row = by_rule[a["rule"]]
            row["count"] += 1
            row["contexts"][a["context"]] += 1
            if r["job_id"] not in row["jobs"]:
                row["jobs"].append(r["job_id"])
            if len(row["examples"]) < EXAMPLES:
                shown = {k: r["params"][k] for k in SHOWN}
                row["examples"].append({"job_id": r["job_id"], "alert": a, "params": shown})
    count = sum(v["count"] for v in by_rule.values())
    info = Counter(a["rule"] for r in results for a in r["info"])
    return {
        "count": count,
        "per_1000_rank_hours": 1000 * count / hours if hours else None,
        "by_rule": dict(sorted(by_rule.items(), key=lambda kv: -kv[1]["count"])),
        "info_by_rule": dict(info),
    }


def totals(results: list[Result], wall: float) -> dict[str, Any]:
    events = sum(r["events"] for r in results)
    gen = sum(r["gen_s"] for r in results)
    engine = sum(r["engine_s"] for r in results)
    return {
        "jobs": len(results),
        "rank_hours": sum(r["rank_hours"] for r in results),
        "events": events,
        "duplicates": sum(r["duplicates"] for r in results),
        "restarted_jobs": sum(r["attempts"] > 1 for r in results),
        "wall_s": wall,
        "generation_events_per_s": events / gen if gen else None,
        "engine_events_per_s": events / engine if engine else None,
    }


def detection_curve(results: list[Result]) -> dict[str, Any]:
    cells: dict[tuple[str, float], list[Result]] = defaultdict(list)
    for r in results:
        cells[(r["case"]["kind"], r["case"]["severity"])].append(r)
    curve: dict[str, Any] = {}
    for (kind, sev), rs in sorted(cells.items()):
        latencies = [r["latency_s"] for r in rs if r["latency_s"] is not None]
        curve.setdefault(kind, {"rule": KINDS[kind].rule, "unit": KINDS[kind].unit, "rows": []})
        curve[kind]["rows"].append(
            {
                "severity": sev,
                "caught": len(latencies),
                "total": len(rs),
                "median_latency_s": statistics.median(latencies) if latencies else None,
                "false_alarms": sum(len(r["false_alarms"]) for r in rs),
                "missed": [r["job_id"] for r in rs if r["latency_s"] is None],
            }
        )
    for entry in curve.values():
        every = [row["severity"] for row in entry["rows"] if row["caught"] == row["total"]]
        entry["smallest_caught_on_every_seed"] = min(every) if every else None
    return curve


# -- report -----------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def print_totals(title: str, t: dict[str, Any], fa: dict[str, Any]) -> None:
    print(f"\n## {title}\n")
    print("| jobs | rank-hours | events | generation ev/s | engine ev/s | wall s |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {t['jobs']} | {t['rank_hours']:,.1f} | {t['events']:,} | "
        f"{_fmt(t['generation_events_per_s'], ',.0f')} | {_fmt(t['engine_events_per_s'], ',.0f')} "
        f"| {t['wall_s']:.1f} |"
    )
    print(
        f"\nFalse alarms: **{fa['count']}** ({_fmt(fa['per_1000_rank_hours'], '.2f')} per 1,000 "
        f"rank-hours); info alerts (not counted): {fa['info_by_rule'] or 'none'}\n"
    )
    if not fa["by_rule"]:
        return
    print("| rule | false alarms | jobs | when | first summaries (job: ranks x steps, step s) |")
    print("|---|---:|---:|---|---|")
    for rule, row in fa["by_rule"].items():
        when = "<br>".join(f"{what}: {n}" for what, n in row["contexts"].most_common())
        shown = "<br>".join(
            f"{e['job_id']} ({e['params']['ranks']}x{e['params']['steps']}, "
            f"{e['params']['step_s']:.2f} s): {e['alert']['summary'][:160]}"
            for e in row["examples"]
        )
        print(f"| {rule} | {row['count']} | {len(row['jobs'])} | {when} | {shown} |")


def print_curve(curve: dict[str, Any]) -> None:
    print("\n| fault | rule | severity | caught | median latency s | false alarms |")
    print("|---|---|---:|---:|---:|---:|")
    for kind, entry in curve.items():
        for row in entry["rows"]:
            print(
                f"| {kind} | {entry['rule']} | {row['severity']:g} ({entry['unit']}) | "
                f"{row['caught']}/{row['total']} | {_fmt(row['median_latency_s'])} | "
                f"{row['false_alarms']} |"
            )
    print("\nSmallest severity caught on every seed and size:")
    for kind, entry in curve.items():
        print(f"- {kind}: {_fmt(entry['smallest_caught_on_every_seed'], 'g')}")


def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else "unknown"

    return {"revision": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "-s"))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--healthy-jobs", type=int, default=None, help="healthy jobs to run")
    ap.add_argument("--rank-hours", type=float, default=None, help="or: until this many")
    ap.add_argument("--seed", type=int, default=1, help="jobs are drawn from SEED, SEED+1, ...")
    ap.add_argument("--faults", action="store_true", help="run the graded fault suite")
    ap.add_argument("--fault-seeds", type=int, default=3, help="seeds per fault and severity")
    ap.add_argument("--fault-shapes", default="8,64,256", help="job sizes (ranks) of faults")
    ap.add_argument("--fault-kinds", default=",".join(KINDS), help="comma-separated subset")
    ap.add_argument("--max-events-per-job", type=int, default=DEFAULT_MAX_EVENTS)
    ap.add_argument("--max-jobs", type=int, default=10_000, help="a bound for --rank-hours")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--rules", default=None, help="a rules file (default: the built-in rules)")
    ap.add_argument("--out", default="run", help="results go to soak-OUT.json")
    args = ap.parse_args(argv)
    if args.healthy_jobs is None and args.rank_hours is None and not args.faults:
        args.healthy_jobs = 8
    if args.rules:
        from rankwatch.streams.rules import RulesError

        try:
            _engine(args.rules)  # a bad rules file fails here, before any work
        except RulesError as exc:
            print(exc, file=sys.stderr)
            return 2
    results: dict[str, Any] = {
        "git": git_revision(),
        "args": vars(args),
        "machine": machine(),
    }
    bound, rules = args.max_events_per_job, args.rules
    with LoadSampler() as load:
        if args.healthy_jobs is not None or args.rank_hours is not None:
            seeds: Iterable[int]
            enough: Callable[[list[Result]], bool] | None = None
            if args.rank_hours is not None:
                hours = args.rank_hours
                seeds = itertools.islice(itertools.count(args.seed), args.max_jobs)
                enough = lambda done: sum(r["rank_hours"] for r in done) >= hours  # noqa: E731
            else:
                seeds = range(args.seed, args.seed + args.healthy_jobs)
            print(f"healthy jobs from seed {args.seed} ...", file=sys.stderr)
            started = time.perf_counter()
            healthy = run_all(((s, bound, rules) for s in seeds), args.processes, enough)
            wall = time.perf_counter() - started
            for r in healthy:
                judge(r)
            t, fa = totals(healthy, wall), false_alarm_table(healthy)
            print_totals(f"Healthy soak: seeds {args.seed}-{args.seed + len(healthy) - 1}", t, fa)
            results["healthy"] = {
                "seeds": [r["seed"] for r in healthy],
                **t,
                "false_alarms": fa,
                "jobs": [_job_row(r) for r in healthy],
            }
        if args.faults:
            shapes = tuple(int(x) for x in args.fault_shapes.split(","))
            kinds = tuple(k for k in args.fault_kinds.split(",") if k)
            cases = fault_suite(args.fault_seeds, args.seed, bound, shapes, kinds)
            print(f"fault suite: {len(cases)} jobs ...", file=sys.stderr)
            started = time.perf_counter()
            faulty = run_all(((c, bound, rules) for c in cases), args.processes)
            wall = time.perf_counter() - started
            for r in faulty:
                judge(r)
            t, fa = totals(faulty, wall), false_alarm_table(faulty)
            print_totals("Fault suite", t, fa)
            curve = detection_curve(faulty)
            print_curve(curve)
            results["faults"] = {
                "seeds": sorted({c.seed for c in cases}),
                "shapes": sorted({c.ranks for c in cases}),
                **t,
                "false_alarms": fa,
                "curve": curve,
                "jobs": [_job_row(r) for r in faulty],
            }
    results["load"] = load.summary()
    write_results(f"soak-{args.out}", results)
    return 0


def _job_row(r: Result) -> dict[str, Any]:
    """A job in the JSON: its numbers, its alerts judged, its parameters."""
    keep = ("job_id", "seed", "case", "fault", "rank_hours", "events", "duplicates", "attempts")
    return {
        **{k: r[k] for k in keep},
        "clean_end": r["clean_end"],
        "latency_s": r.get("latency_s"),
        "detected": r["detected"],
        "false_alarms": r["false_alarms"],
        "consequences": r["consequences"],
        "info": r["info"],
        "params": r["params"],
    }


if __name__ == "__main__":
    sys.exit(main())
