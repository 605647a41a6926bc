"""Run every fault of issue 8 and write the table: ``python reliability/run.py [--quick]``.

Starts what it needs (a single-node Kafka on free ports in a temporary ``RANKWATCH_HOME``, a
3-node one for the broker-kill fault, PostgreSQL, a webhook endpoint), runs each fault, prints
the table, writes it into ``RELIABILITY.md`` (the full run, or ``--write``), and exits 1 if
any alert or event was lost or duplicated. ``--only crash,fuzz`` runs a subset.

    .venv/bin/python reliability/run.py            # the full run: ~15 minutes
    .venv/bin/python reliability/run.py --quick    # a couple of trials each: ~5 minutes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reliability import big_job, faults, harness  # noqa: E402
from reliability.fuzz import corpus, run_fuzz  # noqa: E402
from reliability.harness import Tally  # noqa: E402

START, END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"
FAULTS = (
    "crash",
    "scale",
    "broker",
    "cluster3",
    "badinput",
    "fuzz",
    "webhook",
    "postgres",
    "bigjob",
)


def table(rows: list[Tally]) -> str:
    head = (
        "| fault | trials | events in | events out | alerts expected | alerts delivered "
        "| lost | duplicated | notes |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "".join(
        f"| {r.fault} | {r.trials} | {r.events_in} | {r.events_out} | {r.expected} "
        f"| {r.delivered} | {r.lost} | {r.duplicated} | {'; '.join(r.notes)} |\n"
        for r in rows
    )


def fuzz_row(bootstrap: str, tmp: Path, cases: int) -> Tally:
    """The hypothesis fuzzer on the decoder, every generated message then through the worker."""
    from reliability.faults import fuzz_live

    messages: list[bytes] = []
    started = time.monotonic()
    valid = run_fuzz(cases, sink=messages.append)
    took = time.monotonic() - started
    row = fuzz_live(bootstrap, tmp, messages)
    row.notes.insert(0, f"{len(messages)} hypothesis cases ({valid} valid) in {took:.0f} s")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a couple of trials of each")
    parser.add_argument("--only", default=",".join(FAULTS), help=f"comma list of {FAULTS}")
    parser.add_argument("--write", action="store_true", help="write RELIABILITY.md (--quick)")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument(
        "--runtime",
        choices=("batch", "faust"),
        default="batch",
        help="the worker runtime the faults run (rows of faust are named so; default: batch)",
    )
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    unknown = only - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
    q = args.quick
    harness.RUNTIME = args.runtime
    tmp = Path(tempfile.mkdtemp(prefix="rankwatch-reliability-"))
    rows: list[Tally] = []
    began = time.monotonic()

    def step(name: str, fn: Callable[[], list[Tally]]) -> None:
        if name not in only:
            return
        t = time.monotonic()
        print(f"-- {name} ...", flush=True)
        try:
            got = fn()
        except Exception as exc:  # a fault that crashes the harness is a failed row, not a hang
            got = [Tally(name, notes=[f"harness error: {exc!r}"], lost=1)]
        for row in got:
            if args.runtime != "batch":  # its own rows: the batch runtime's stay beside them
                row.fault += f" (--runtime {args.runtime})"
            print(f"   {row}", flush=True)
        print(f"   ({time.monotonic() - t:.0f} s)", flush=True)
        rows.extend(got)

    with faults.own_cluster(tmp / "home", 1) as cluster:
        b = cluster.bootstrap
        step(
            "crash",
            lambda: faults.worker_crash(b, tmp, trials=2 if q else 10, seconds=6, seed=args.seed),
        )
        step("scale", lambda: faults.scale_out_in(b, tmp, seconds=12 if q else 20))
        step("badinput", lambda: list(faults.bad_input(b, tmp, corpus())))
        step("fuzz", lambda: [fuzz_row(b, tmp, 2_000 if q else 100_000)])
        step("webhook", lambda: [faults.webhook_outage(b, tmp, down_s=10 if q else 120)])
        step("postgres", lambda: [faults.postgres_restart(b, tmp, seconds=8, down_s=3 if q else 8)])
        step("bigjob", lambda: big_job.big_job_restart(b, tmp, ranks=8_192 if q else 131_072))
    step(
        "broker", lambda: faults.broker_restart(tmp, seconds=10 if q else 16, down_s=4 if q else 10)
    )
    step("cluster3", lambda: faults.cluster_node_kill(tmp, seconds=10 if q else 16))

    text = table(rows)
    print(text)
    bad = [r for r in rows if not r.ok]
    print(
        f"{len(rows)} rows, {len(bad)} with losses or duplicates, {time.monotonic() - began:.0f} s"
    )
    if args.write or not q:
        doc = ROOT / "RELIABILITY.md"
        current = doc.read_text()
        if START in current and END in current:
            head, _, rest = current.partition(START)
            old, _, tail = rest.partition(END)
            # Rows of faults not run this time stay (a run of --only updates its own rows).
            mine = {r.fault for r in rows}
            kept = [
                line + "\n"
                for line in old.splitlines()
                if line.startswith("| ")
                and not line.startswith("| fault |")
                and line.split("|")[1].strip() not in mine
            ]
            lines = text.splitlines(keepends=True)
            stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            mode = "--quick" if q else "full run"
            if args.runtime != "batch":
                mode += f" --runtime {args.runtime}"
            if only != set(FAULTS):  # say which rows are new; the others keep their runs
                mode += f" of {', '.join(f for f in FAULTS if f in only)} (other rows earlier)"
            doc.write_text(
                f"{head}{START}\n_last written by a {mode}, {stamp}, seed {args.seed}_\n\n"
                f"{''.join(lines[:2] + kept + lines[2:])}{END}{tail}"
            )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
