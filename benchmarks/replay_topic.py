"""``replay --topic`` speed over a recorded topic of several hundred thousand events.

Produces a synthetic job (``rankwatch.simulate``: steps and logs of N ranks, with faults) to
fresh steps/logs topics (3 partitions each) of a real broker, commits offsets for a stand-in
"live" consumer group, then measures, in the same run:

1. reading the topics alone (``topic_records``, no engine): the Kafka side's ceiling;
2. replay with the built-in rules;
3. replay with a rules file (tuned built-ins, three no-code rules, the example Python rule);
4. replay with ``--diff`` (both rule sets, one pass);

and checks the live group's committed offsets did not move. Prints events/s of each.

    .venv/bin/python benchmarks/replay_topic.py [--ranks 256] [--steps 1200] [--bootstrap H:P]

Default: 256 ranks x 1200 steps = ~310k step events plus logs; a broker is started on free
ports unless ``--bootstrap`` is given. About 2-3 minutes on 2 cores, most of it producing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

RULES = """
[builtin.loss_explosion]
sustain_steps = 3
[[rule]]
name = "disk_full"
kind = "log_pattern"
pattern = "No space left on device"
[[rule]]
name = "low_throughput"
kind = "threshold"
field = "throughput_tokens_per_sec"
op = "<"
value = 1000
for_steps = 5
[[rule]]
name = "nccl_warn_storm"
kind = "frequency"
pattern = "NCCL WARN"
count = 20
window_s = 30
[[rule]]
name = "loss_plateau"
kind = "python"
class = "rankwatch.streams.rules.examples:LossPlateau"
options = { window = 200 }
"""


@contextlib.contextmanager
def _broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    from rankwatch.infra.testing import session_broker

    with tempfile.TemporaryDirectory() as home, session_broker(Path(home)) as started:
        yield started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--bootstrap")
    args = parser.parse_args()

    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    from rankwatch.infra.testing import create_unique_topic
    from rankwatch.schemas import StepEvent, encode
    from rankwatch.simulate import SCENARIOS, JobSpec, simulate
    from rankwatch.streams.engine import Engine
    from rankwatch.streams.replay import replay, topic_records
    from rankwatch.streams.rules import parse_rules
    from rankwatch.streams.rules.history import replay_diff

    with _broker(args.bootstrap) as bootstrap:
        steps, logs = create_unique_topic(bootstrap, 3), create_unique_topic(bootstrap, 3)
        producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000,
             "compression.type": "lz4", "queue.buffering.max.messages": 2_000_000}
        )  # fmt: skip
        spec = JobSpec(job_id="bench-replay", ranks=args.ranks, steps=args.steps)
        faults = [SCENARIOS[name]() for name in ("nan_loss", "straggler", "memory_leak")]
        started = time.perf_counter()
        count = 0
        for event in simulate(spec, faults):
            topic = steps if isinstance(event, StepEvent) else logs
            while True:
                try:
                    producer.produce(topic, encode(event), key=event.job_id.encode())
                    break
                except BufferError:
                    producer.poll(0.1)
            count += 1
            if count % 10_000 == 0:
                producer.poll(0)
        producer.flush(120)
        print(f"produced {count:,} events in {time.perf_counter() - started:.1f} s", flush=True)

        # A stand-in live group: it has consumed and committed everything.
        config = {"bootstrap.servers": bootstrap}
        live = Consumer({**config, "group.id": "bench-live-worker", "enable.auto.commit": False})
        tps = [TopicPartition(t, p) for t in (steps, logs) for p in range(3)]
        ends = [live.get_watermark_offsets(tp, 10)[1] for tp in tps]
        done = [TopicPartition(tp.topic, tp.partition, e) for tp, e in zip(tps, ends, strict=True)]
        for _ in range(60):  # a fresh broker loads its group coordinator lazily
            try:
                live.commit(offsets=done, asynchronous=False)
                before = [c.offset for c in live.committed(tps, 10)]
                break
            except KafkaException:
                time.sleep(0.5)

        def measure(name: str, run: object) -> None:
            t = time.perf_counter()
            n = run()  # type: ignore[operator]
            dt = time.perf_counter() - t
            print(f"{name:<34} {n:>9,} events  {dt:6.1f} s  {n / dt:>9,.0f} events/s", flush=True)

        def read_only() -> int:
            return sum(1 for _ in topic_records(config, [steps, logs]))

        def builtin_rules() -> int:
            return replay(topic_records(config, [steps, logs]), io.BytesIO()).events

        rules = parse_rules(RULES)

        def with_rules() -> int:
            return replay(topic_records(config, [steps, logs]), io.BytesIO(),
                          engine=rules.engine()).events  # fmt: skip

        def with_diff() -> int:
            diff = replay_diff(topic_records(config, [steps, logs]), io.BytesIO(),
                               rules.engine(), Engine.with_builtin_detectors())  # fmt: skip
            print(f"  diff: {len(diff.added)} added, {len(diff.removed)} removed")
            return diff.stats.events

        measure("read topics only (no engine)", read_only)
        measure("replay, built-in rules", builtin_rules)
        measure("replay --rules (5 user rules)", with_rules)
        measure("replay --rules --diff (2 engines)", with_diff)
        after = [c.offset for c in live.committed(tps, 10)]
        live.close()
        print(f"live group offsets untouched: {before == after} ({sum(after):,} committed)")
        return 0 if before == after else 1


if __name__ == "__main__":
    sys.exit(main())
