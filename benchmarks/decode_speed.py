"""Decode speed: ways to turn one wire message into a contract event, per event, beside
``orjson.loads`` of the same lines (the parser alone: the limit of any of them).

The inputs are realistic lines, as our writers encode them (``schemas.encode``): the simulator's
step events (every metric a producer sets), bare step events (the required fields only), step
events with the optional fields a producer adds (``attempt``, ``phase``, the LR schedule, GPU
utilization), and log events (the simulator's chatter, and lifecycle records). Candidates:

- ``decode_validated``: today's pydantic path (``model_validate_json`` for step lines, else
  ``orjson.loads`` + ``model_validate``), the contract's verdict;
- ``model_validate_json`` alone, and ``model_validate(orjson.loads(..))``;
- the checks of ``schemas._fast`` + ``model_construct``, and the fast path as a decoder
  would chain it (msgspec over the bytes, else over the dict, + its direct ``build``);
- msgspec: a strict ``Struct`` of the step event decoded from the bytes (validation in C; no
  pydantic event), and the same + building the ``StepEvent``; ``msgspec.convert`` of the
  orjson dict + ``build``;
- ``schemas.columns.decode_batch`` (no event per message: columns for per-step frames), over
  batches of 1,000 simulator step lines, per event (the batch's time / 1,000), beside
  ``orjson.loads`` and ``decode`` of each line of the same batches; and over batches where one
  line in 100 is a log line (the route that tries each message alone, then ``decode``).

Each event is timed alone (``perf_counter_ns``), the candidates interleaved in rounds over all
lines, so machine load falls on all alike; median and p99 per event per input kind.

    .venv/bin/python benchmarks/decode_speed.py [--rounds 5] [--events 4000]

Writes ``benchmarks/results/decode_speed.json``. Figures: ``RESULTS.md``, "Decode speed".
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

import _bench
import msgspec
import orjson

from rankwatch.schemas import LogEvent, StepEvent, decode, encode
from rankwatch.schemas._fast import Checked, build, check_log, check_step, decode_known
from rankwatch.schemas.columns import decode_batch

decode_validated = decode  # decode is pydantic's path (the fast path was measured, not chosen)

# -- inputs --------------------------------------------------------------------------------------


def inputs(n: int) -> dict[str, list[bytes]]:
    from rankwatch.simulate import JobSpec, simulate

    sim = [encode(e) for e in simulate(JobSpec(job_id="bench", ranks=64, steps=n // 64 + 2))]
    steps = [line for line in sim if b'"kind":"step"' in line][:n]
    logs = [line for line in sim if b'"kind":"log"' in line]
    t0 = _bench.START
    bare = [
        encode(StepEvent(job_id="bench", rank=i % 512, step=i // 512, timestamp=t0 + i * 1e-3))
        for i in range(n)
    ]
    full = [
        encode(
            StepEvent(
                job_id="bench",
                rank=i % 512,
                world_size=512,
                host=f"node-{i % 512 // 8}",
                attempt=1,
                phase="train",
                step=i // 512,
                timestamp=t0 + i * 1e-3,
                loss=2.0 + (i % 97) / 97,
                learning_rate=3e-4,
                gradient_norm=1.0 + (i % 13) / 13,
                gpu_memory_usage=64.5,
                gpu_utilization=97.0,
                step_time_s=1.0,
                lr_schedule="cosine",
                lr_warmup_steps=100,
                lr_total_steps=10_000,
            )
        )
        for i in range(n)
    ]
    lifecycle = [
        encode(
            LogEvent(
                job_id="bench",
                rank=i % 512,
                host="node-0",
                attempt=0,
                timestamp=t0 + i * 1e-3,
                level="ERROR",
                message="Traceback (most recent call last):\n  ...\nRuntimeError: boom",
                logger="rankwatch",
                step=i,
                lifecycle="exception",
            )
        )
        for i in range(n // 4)
    ]
    return {
        "step (simulator)": steps,
        "step (required only)": bare,
        "step (+attempt, phase, LR schedule)": full,
        "log (simulator)": (logs * (n // max(1, len(logs)) + 1))[:n],
        "log (lifecycle)": lifecycle,
    }


# -- candidates ----------------------------------------------------------------------------------

_MODELS: dict[str, type[StepEvent] | type[LogEvent]] = {"step": StepEvent, "log": LogEvent}


def validate_json(line: bytes) -> Any:
    model = StepEvent if b'"kind":"step"' in line else LogEvent
    return model.model_validate_json(line)


def validate_dict(line: bytes) -> Any:
    obj = orjson.loads(line)
    return _MODELS[obj["kind"]].model_validate(obj)


def fast_path(line: bytes) -> Any:
    """schemas._fast as decode would chain it: msgspec on the bytes (kind said, no unknown
    fields), else the parsed dict's check + build."""
    event = decode_known(line)
    if event is not None:
        return event
    obj = msgspec.json.decode(line)
    model = _MODELS[obj["kind"]]
    checked = (check_step if model is StepEvent else check_log)(obj)
    assert checked is not None
    return build(model, checked)


def hand_construct(line: bytes) -> Any:
    obj = orjson.loads(line)
    model = _MODELS[obj["kind"]]
    checked = (check_step if model is StepEvent else check_log)(obj)
    assert checked is not None
    return model.model_construct(checked.fields_set, **checked.values, **(checked.extra or {}))


_MAX = sys.float_info.max
_M = Annotated[float, msgspec.Meta(ge=0, le=_MAX)]
_P = Annotated[float, msgspec.Meta(ge=0, le=100)]
_F = Annotated[float, msgspec.Meta(ge=-_MAX, le=_MAX)]
_NF = Literal["nan", "inf", "-inf"]
_I0 = Annotated[int, msgspec.Meta(ge=0)]
_I1 = Annotated[int, msgspec.Meta(ge=1)]


class StepStruct(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The step event as a msgspec Struct, fields in the model's order (a prototype: what
    msgspec would cost; unknown fields refused, timestamps left to Python)."""

    schema_version: _I1 = 1
    job_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:-]{1,128}\Z")]
    rank: _I0
    host: str | msgspec.UnsetType | None = msgspec.UNSET
    timestamp: str | int | float
    attempt: _I0 | msgspec.UnsetType | None = msgspec.UNSET
    phase: Literal["train", "eval", "checkpoint"] | msgspec.UnsetType | None = msgspec.UNSET
    kind: Literal["step"] | msgspec.UnsetType = msgspec.UNSET
    world_size: _I1 | msgspec.UnsetType | None = msgspec.UNSET
    step: _I0
    loss: _F | _NF | msgspec.UnsetType | None = msgspec.UNSET
    learning_rate: _F | msgspec.UnsetType | None = msgspec.UNSET
    gradient_norm: _F | _NF | msgspec.UnsetType | None = msgspec.UNSET
    gpu_memory_usage: _P | msgspec.UnsetType | None = msgspec.UNSET
    gpu_memory_allocated_mb: _M | msgspec.UnsetType | None = msgspec.UNSET
    gpu_memory_reserved_mb: _M | msgspec.UnsetType | None = msgspec.UNSET
    throughput_tokens_per_sec: _M | msgspec.UnsetType | None = msgspec.UNSET
    step_time_s: _M | msgspec.UnsetType | None = msgspec.UNSET
    data_time_s: _M | msgspec.UnsetType | None = msgspec.UNSET
    compute_time_s: _M | msgspec.UnsetType | None = msgspec.UNSET
    gpu_utilization: _P | msgspec.UnsetType | None = msgspec.UNSET
    lr_schedule: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | msgspec.UnsetType | None
    ) = msgspec.UNSET
    lr_warmup_steps: _I0 | msgspec.UnsetType | None = msgspec.UNSET
    lr_total_steps: _I1 | msgspec.UnsetType | None = msgspec.UNSET


_struct_decoder = msgspec.json.Decoder(StepStruct)
_UNSET = msgspec.UNSET
_asdict = msgspec.structs.asdict
_fromiso = datetime.fromisoformat


def msgspec_struct(line: bytes) -> Any:
    return _struct_decoder.decode(line)


def msgspec_build(line: bytes) -> Any:
    values = _asdict(_struct_decoder.decode(line))
    fields_set = set()
    for key, value in values.items():
        if value is _UNSET:
            values[key] = 1 if key == "schema_version" else "step" if key == "kind" else None
        else:
            fields_set.add(key)
    values["timestamp"] = _fromiso(values["timestamp"])  # str in these inputs
    return build(StepEvent, Checked(values, fields_set, None))


class _LooseStepStruct(StepStruct, kw_only=True, forbid_unknown_fields=False):
    pass


def msgspec_convert(line: bytes) -> Any:
    obj = orjson.loads(line)
    values = _asdict(msgspec.convert(obj, _LooseStepStruct))
    for key, value in values.items():
        if value is _UNSET:
            values[key] = 1 if key == "schema_version" else "step" if key == "kind" else None
    values["timestamp"] = _fromiso(values["timestamp"])
    fields_set = obj.keys() & values.keys()
    return build(StepEvent, Checked(values, fields_set, None))


CANDIDATES: dict[str, Callable[[bytes], Any]] = {
    "orjson.loads (reference)": orjson.loads,
    "decode (pydantic; unchanged)": decode_validated,
    "model_validate_json": validate_json,
    "model_validate(orjson.loads)": validate_dict,
    "hand check + model_construct": hand_construct,
    "schemas._fast (msgspec check + build)": fast_path,
    "msgspec Struct only (no StepEvent)": msgspec_struct,
    "msgspec Struct + StepEvent": msgspec_build,
    "orjson + msgspec.convert + StepEvent": msgspec_convert,
}
_STEP_ONLY = {"msgspec Struct only (no StepEvent)", "msgspec Struct + StepEvent"}
_STEP_ONLY |= {"orjson + msgspec.convert + StepEvent"}


BATCH = 1000


def batches(lines: list[bytes], logs: list[bytes]) -> dict[str, list[list[bytes]]]:
    """Batches of ``BATCH`` step lines at ~11 offsets; the same with every 100th line a log."""
    size = min(BATCH, len(lines))
    stride = max(1, (len(lines) - size) // 10)
    steps = [lines[start : start + size] for start in range(0, len(lines) - size + 1, stride)]
    mixed = []
    for batch in steps:
        batch = list(batch)
        for k in range(0, size, 100):
            batch[k] = logs[k // 100 % len(logs)]
        mixed.append(batch)
    return {"steps": steps, "mixed": mixed}


def _each(fn: Callable[[bytes], Any]) -> Callable[[list[bytes]], Any]:
    return lambda batch: [fn(line) for line in batch]


BATCH_CANDIDATES: dict[str, tuple[str, Callable[[list[bytes]], Any]]] = {
    "orjson.loads (reference)": ("steps", _each(orjson.loads)),
    "decode (pydantic; unchanged)": ("steps", _each(decode_validated)),
    "decode_batch (columns)": ("steps", decode_batch),
    "decode_batch, 1 line in 100 a log": ("mixed", decode_batch),
}


def time_batches(
    fn: Callable[[list[bytes]], Any], batch_list: list[list[bytes]], out: list[float]
) -> None:
    clock = time.perf_counter_ns
    for batch in batch_list:
        started = clock()
        fn(batch)
        out.append((clock() - started) / len(batch))


def time_each(fn: Callable[[bytes], Any], lines: list[bytes], out: list[int]) -> None:
    clock = time.perf_counter_ns
    for line in lines:
        started = clock()
        fn(line)
        out.append(clock() - started)


def _table(by_candidate: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Print one table of samples (ns per event) per candidate, beside the reference; return
    its rows."""
    ref = statistics.median(by_candidate["orjson.loads (reference)"]) / 1000
    print("| candidate | median us | p99 us | median / orjson |")
    print("|---|---|---|---|")
    rows = {}
    for candidate, ns in by_candidate.items():
        median = statistics.median(ns) / 1000
        p99 = _bench.percentile(ns, 99) / 1000
        rows[candidate] = {"median_us": median, "p99_us": p99, "ratio": median / ref}
        print(f"| {candidate} | {median:.2f} | {p99:.2f} | {median / ref:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=4000, help="lines per input kind")
    args = parser.parse_args()
    data = inputs(args.events)
    for name, lines in data.items():  # every candidate gives the contract's answer here
        for line in lines[:200]:
            expected = decode_validated(line)
            assert fast_path(line) == expected and hand_construct(line) == expected, name
            if name.startswith("step"):
                assert msgspec_build(line) == expected == msgspec_convert(line), name
    by_batch = batches(data["step (simulator)"], data["log (simulator)"])
    for batch in by_batch["steps"][:2]:  # the columns hold what decode makes (tests: all of it)
        columns = decode_batch(batch)
        assert len(columns.steps) == len(batch) and not columns.steps.rare
        assert columns.steps.event(7) == decode_validated(batch[7])
        assert columns.steps.times[7] == decode_validated(batch[7]).epoch
    batch_samples: dict[str, list[float]] = {c: [] for c in BATCH_CANDIDATES}
    samples: dict[str, dict[str, list[int]]] = {
        kind: {c: [] for c in CANDIDATES if kind.startswith("step") or c not in _STEP_ONLY}
        for kind in data
    }
    gc.disable()  # a collection inside one timed call is noise of this process, not of decode
    with _bench.LoadSampler() as load:
        for _ in range(args.rounds):
            for kind, lines in data.items():
                for candidate, out in samples[kind].items():
                    time_each(CANDIDATES[candidate], lines, out)
                    gc.collect()
            for candidate, batch_out in batch_samples.items():
                which, batch_fn = BATCH_CANDIDATES[candidate]
                time_batches(batch_fn, by_batch[which], batch_out)
                gc.collect()
    gc.enable()
    results: dict[str, Any] = {"machine": _bench.machine(), "load_1min": load.summary()}
    results["msgspec"] = msgspec.__version__
    results["per_event_us"] = {}
    print(f"load average (1 min) during the run: {load.summary()}; msgspec {msgspec.__version__}")
    for kind, by_candidate in samples.items():
        print(f"\n{kind}: {len(data[kind])} lines x {args.rounds} rounds")
        results["per_event_us"][kind] = _table(by_candidate)
    kind = f"step (simulator), batches of {len(by_batch['steps'][0])}"
    print(f"\n{kind}: {len(by_batch['steps'])} batches x {args.rounds} rounds, per event")
    results["per_event_us"][kind] = _table(batch_samples)
    _bench.write_results("decode_speed", results)


if __name__ == "__main__":
    sys.exit(main())
