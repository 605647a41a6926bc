"""loss_scale_collapse and log-reported NaN/Inf, through the engine, on the trainers' own wording.

The samples are real log text (the issue thread or source file is named above each); where a
sequence is generated, each line is formatted exactly as the trainer's source formats it.
"""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Iterator

import pytest
from synth import T0
from test_log_patterns import BENIGN

from rankwatch.schemas import Alert, LogEvent, StepEvent
from rankwatch.streams import DetectorConfigError, Engine
from rankwatch.streams.detectors import loss_scale
from rankwatch.streams.detectors.gradient import GradientExplosion, GradientExplosionConfig
from rankwatch.streams.detectors.loss import LossExplosion, LossExplosionConfig
from rankwatch.streams.detectors.loss_scale import LossScaleConfig, LossScaleDetector
from rankwatch.streams.registry import builtin_detectors
from rankwatch.streams.rules.builtin import build_detectors, check_config

# ymcui/Chinese-LLaMA-Alpaca issue #534 (DeepSpeed fp16, 132 s per step): the scale halves
# skip after skip down to its floor, then DeepSpeed raises.
LLAMA_534 = [
    "[2023-06-07 22:16:00,018] [INFO] [loss_scaler.py:181:update_scale] [deepspeed] OVERFLOW! "
    "Rank 0 Skipping step. Attempted loss scale: 64, reducing to 32",
    "[2023-06-07 22:18:11,762] [INFO] [loss_scaler.py:181:update_scale] [deepspeed] OVERFLOW! "
    "Rank 0 Skipping step. Attempted loss scale: 32, reducing to 16",
    "[2023-06-07 22:20:23,340] [INFO] [loss_scaler.py:181:update_scale] [deepspeed] OVERFLOW! "
    "Rank 0 Skipping step. Attempted loss scale: 16, reducing to 8",
    "[2023-06-07 22:22:34,914] [INFO] [loss_scaler.py:181:update_scale] [deepspeed] OVERFLOW! "
    "Rank 0 Skipping step. Attempted loss scale: 8, reducing to 4",
    "[2023-06-07 22:24:46,260] [INFO] [loss_scaler.py:181:update_scale] [deepspeed] OVERFLOW! "
    "Rank 0 Skipping step. Attempted loss scale: 4, reducing to 2",
]
# The title: deepspeed/runtime/fp16/loss_scaler.py raises it at the floor.
AT_MINIMUM = (
    "Exception: Current loss scale already at minimum - cannot decrease scale anymore. Exiting run."
)
# huggingface/transformers issue #14531 (ZeRO-2, T5-11B): a reduction that no longer reduces.
T5_14531 = (
    "[2021-11-27 00:36:54,800] [INFO] [stage2.py:1628:step] [deepscale] OVERFLOW! Rank 0 "
    "Skipping step. Attempted loss scale: 1, reducing to 1"
)
# ymcui/Chinese-LLaMA-Alpaca-2 issue #97: below 1, int() prints the scale as 0.
LLAMA2_97 = (
    "[2023-08-07 18:35:18,432] [INFO] [loss_scaler.py:183:update_scale] [deepspeed] OVERFLOW! "
    "Rank 0 Skipping step. Attempted loss scale: 0, reducing to 0"
)
# deepspeedai/DeepSpeed issue #931: a healthy start, hysteresis first, then calibration.
DS_931 = [
    "[2023-04-28 06:51:29,903] [INFO] [loss_scaler.py:188:update_scale] [deepspeed] OVERFLOW! "
    "Rank 0 Skipping step. Attempted loss scale: 65536, but hysteresis is 2. Reducing "
    "hysteresis to 1",
    "[2023-04-28 06:51:30,648] [INFO] [loss_scaler.py:181:update_scale] [deepspeed] OVERFLOW! "
    "Rank 0 Skipping step. Attempted loss scale: 65536, reducing to 32768",
    "[2023-04-28 06:51:31,392] [INFO] [loss_scaler.py:181:update_scale] [deepspeed] OVERFLOW! "
    "Rank 0 Skipping step. Attempted loss scale: 32768, reducing to 16384",
    "[2023-04-28 06:51:32,150] [INFO] [loss_scaler.py:181:update_scale] [deepspeed] OVERFLOW! "
    "Rank 0 Skipping step. Attempted loss scale: 16384, reducing to 8192",
]
# fairseq/optim/fp16_optimizer.py (the value is the trainer's --min-loss-scale).
FAIRSEQ_MIN = (
    "FloatingPointError: Minimum loss scale reached (0.0001). Your loss is probably exploding. "
    "Try lowering the learning rate, using gradient clipping or increasing the batch size."
)
# Megatron-LM megatron/core/distributed/param_and_grad_buffer.py (assertion of 0.7-0.8), as
# quoted in Ascend/MindSpeed-Core-MS docs/faq (a NaN grad norm after a padding bug).
MEGATRON_GRAD = (
    "AssertionError: Rank 13: found NaN in local grad norm in backward pass before "
    "data-parallel communication collective. Device: 5, node: node-15-11"
)
# Megatron-LM megatron/core/rerun_state_machine.py (reruns disabled): its RuntimeError around
# the message of the loss check in pretrain_gpt.py / training.py.
MEGATRON_LOSS = (
    "RuntimeError: Rank 3, node dgx-a07, device 3, iteration 2: Unexpected result nan "
    "(message='found NaN in local forward loss calculation')"
)
# The same, for the bucket check of newer param_and_grad_buffer.py.
MEGATRON_BUCKET = (
    "RuntimeError: Rank 5, node dgx-a07, device 5, iteration 12: Unexpected result inf "
    "(message='found Inf in local grad norm for bucket #0 in backward pass before "
    "data-parallel communication collective')"
)
# torch/csrc/autograd/engine.cpp under torch.autograd.detect_anomaly().
ANOMALY = "RuntimeError: Function 'LogBackward0' returned nan values in its 0th output."


def log(
    rank: int, t: float, message: str, level: str = "INFO", step: int | None = None
) -> LogEvent:
    return LogEvent(
        job_id="job-1", rank=rank, timestamp=T0 + t, level=level, message=message,
        host=f"node{rank // 8}", step=step,
    )  # fmt: skip


def engine() -> Engine:
    return Engine(loss_scale.detectors())


def run(e: Engine, events: list[LogEvent | StepEvent]) -> list[Alert]:
    alerts = e.process_many(events)
    return alerts + e.flush()


def firing(alerts: list[Alert], rule: str | None = None) -> list[Alert]:
    return [a for a in alerts if a.status == "firing" and (rule is None or a.rule == rule)]


def ds_line(attempted: float, new: float | None) -> str:
    """A DeepSpeed overflow record, formatted as deepspeed/runtime/fp16/loss_scaler.py does."""
    head = "[deepspeed] OVERFLOW! Rank 0 Skipping step."
    if new is None:
        return (
            f"{head} Attempted loss scale: {int(attempted)}, but hysteresis is 2. Reducing "
            f"hysteresis to 1"
        )
    return f"{head} Attempted loss scale: {int(attempted)}, reducing to {int(new)}"


def apex_line(new: float) -> str:
    """An apex amp overflow record, formatted as apex/amp/scaler.py does."""
    return f"Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to {new}"


# -- loss_scale_collapse ---------------------------------------------------------------------
def test_a_scale_driven_to_its_floor_fires() -> None:
    # Issue #534's records, 132 s apart, then the floor: "2, reducing to 1", formatted as
    # loss_scaler.py formats it.
    # The thread's progress bar puts the skips at steps 378-382, one step after another.
    records = [*LLAMA_534, ds_line(2, 1)]
    alerts = run(engine(), [log(0, 132.0 * i, m, step=378 + i) for i, m in enumerate(records)])
    [a] = firing(alerts)
    assert (a.rule, a.severity, a.scope, a.ranks) == (
        "loss_scale_collapse",
        "critical",
        "rank",
        [0],
    )
    assert a.evidence["loss_scale"] == 1.0 and a.evidence["source"] == "log"
    assert a.evidence["skips_in_window"] == 6
    assert "lower the learning rate" in a.summary and "bf16" in a.summary
    assert a.evidence["line"].startswith("[deepspeed] OVERFLOW!")


def test_the_descent_alone_does_not_fire() -> None:
    # The same records without the last halving: the scale is at 2, not yet at its floor.
    events = [log(0, 132.0 * i, m, step=378 + i) for i, m in enumerate(LLAMA_534)]
    assert firing(run(engine(), events)) == []


def test_a_scale_that_drifted_to_its_floor_and_overflows_now_and_then_is_silent() -> None:
    # At its floor, a skip every ~100 steps (some two in a row, DeepSpeed's hysteresis): most
    # steps still update the weights. Only a run of skips is a collapse.
    rng = random.Random(3)
    events, step = [], 0
    for _ in range(300):
        step += rng.randint(20, 200)
        for k in range(rng.choice((1, 1, 1, 2))):
            events.append(log(0, 6.0 * (step + k), T5_14531, step=step + k))
    assert firing(run(engine(), events)) == []
    # Five skips in a row at the floor are.
    events += [log(0, 6.0 * (step + 300 + k), T5_14531, step=step + 300 + k) for k in range(5)]
    assert len(firing(run(engine(), events))) == 1


def test_already_at_minimum_fires_at_once() -> None:
    e = engine()
    out = e.process(log(0, 5.0, AT_MINIMUM, level="ERROR"))
    out += e.flush()
    [a] = firing(out)
    assert a.rule == "loss_scale_collapse" and a.evidence["pattern"] == "scale_at_minimum"
    assert "DeepSpeed is stopping the run" in a.summary
    assert a.evidence["line"] == AT_MINIMUM


def test_fairseq_minimum_reached_fires_with_its_own_floor() -> None:
    [a] = firing(run(engine(), [log(2, 5.0, FAIRSEQ_MIN, level="ERROR")]))
    assert (a.rule, a.ranks, a.evidence["min_scale"]) == ("loss_scale_collapse", [2], 0.0001)


@pytest.mark.parametrize("record", [T5_14531, LLAMA2_97])
def test_a_reduction_that_does_not_reduce_is_the_floor(record: str) -> None:
    # A trainer whose floor is not 1 says so by reducing to the same scale.
    e = Engine([LossScaleDetector(LossScaleConfig(min_scale=0.5))])
    events = [log(0, 0.4 * i, record, step=98 + i) for i in range(6)]
    alerts = run(e, events)
    [a] = firing(alerts)
    assert a.step == 102  # the fifth skip: min_skips
    assert a.evidence["loss_scale"] == float(record.rsplit(" ", 1)[1])


def test_apex_collapse_fires() -> None:
    # apex halves without a floor of its own: 65536 -> 1.0 in 16 consecutive skips.
    events = [log(0, 0.5 * i, apex_line(2.0 ** (15 - i))) for i in range(16)]
    # With amp.initialize(min_loss_scale=1.0) it stays there: the same scale again is not a
    # recovery at the floor.
    events += [log(0, 10.0 + i, apex_line(1.0)) for i in range(3)]
    alerts = run(engine(), events)
    assert [(a.rule, a.status) for a in alerts] == [("loss_scale_collapse", "firing")]
    assert alerts[0].evidence["loss_scale"] == 1.0
    assert alerts[0].evidence["attempted_loss_scale"] is None


def test_collapse_resolves_when_the_scale_grows_back() -> None:
    records = [*LLAMA_534, ds_line(2, 1)]
    events = [log(0, 132.0 * i, m, step=378 + i) for i, m in enumerate(records)]
    for k in range(3):  # stuck at the floor: re-reported, still one alert
        events.append(log(0, 800.0 + 100 * k, T5_14531, step=384 + k))
    # 1,000 clean steps doubled the scale; the next overflow tries 2.
    events.append(log(0, 140_000.0, ds_line(2, 1), step=1400))
    alerts = run(engine(), events)
    assert [(a.rule, a.status) for a in alerts] == [
        ("loss_scale_collapse", "firing"),
        ("loss_scale_collapse", "resolved"),
    ]
    assert "grew back to 2" in alerts[1].summary


def test_startup_calibration_and_hysteresis_are_silent() -> None:
    # DeepSpeed issue #931, then a calibration from 2**32 as in zai-org/CogVideo issue #233.
    events = [log(0, float(i), m) for i, m in enumerate(DS_931)]
    scale = 2.0**32
    for i in range(12):
        events.append(log(0, 10.0 + i, ds_line(scale, scale / 2)))
        scale /= 2
    assert run(engine(), events) == []


def deepspeed_run(
    steps: int, seed: int, *, apex: bool = False, collapse_at: int | None = None
) -> Iterator[LogEvent]:
    """Logs of fp16 training: the trainer's dynamic loss scaler (DeepSpeed's: hysteresis 2,
    window 1,000, floor 1; or apex's: window 2,000, no floor) over gradients whose overflow
    threshold wanders, as real ones do; every 10 steps a progress line per rank, as DeepSpeed
    logs them. From ``collapse_at`` the gradients blow up: every step overflows."""
    rng = random.Random(seed)
    scale, hysteresis, last_overflow = 2.0**16, 2, -1
    window = 2000 if apex else 1000
    skipped = 0
    for step in range(steps):
        t = 0.3 * step
        # The largest scale the gradients tolerate: mostly far above, now and then just below.
        limit = 2.0 ** rng.gauss(17.5, 0.6)
        if collapse_at is not None and step >= collapse_at:
            limit = 0.0
        overflow = scale > limit
        if overflow:
            skipped += 1
            if apex:
                scale /= 2
                yield log(0, t, apex_line(scale), step=step)
            elif hysteresis > 1:
                yield log(0, t, ds_line(scale, None), step=step)
                hysteresis -= 1
            elif scale <= 1:
                yield log(0, t, AT_MINIMUM, level="ERROR", step=step)
                return
            else:
                yield log(0, t, ds_line(scale, max(scale / 2, 1)), step=step)
                scale = max(scale / 2, 1)
            last_overflow = step
        elif (step - last_overflow) % window == 0:
            scale *= 2
            hysteresis = 2
        if step % 10 == 0:
            for r in range(4):
                yield log(
                    r, t + 0.001 * r,
                    f"[Rank {r}] step={step}, skipped={skipped}, lr=[0.0001], mom=[(0.9, 0.95)]",
                    step=step,
                )  # fmt: skip


@pytest.mark.parametrize("apex", [False, True])
def test_healthy_fp16_runs_are_silent(apex: bool) -> None:
    events = list(deepspeed_run(30_000, seed=7, apex=apex))
    skips = [e for e in events if "loss scale" in e.message]
    # The run does overflow (DeepSpeed's scaler a few times per thousand steps, apex's about
    # once per 2,000-step window) ...
    assert len(skips) >= (10 if apex else 30)
    assert firing(run(engine(), events)) == []  # ... and recovers each time
    # The same scaler, once the gradients blow up, is caught.
    broken = list(deepspeed_run(30_000, seed=7, apex=apex, collapse_at=20_000))
    [a] = firing(run(engine(), broken))
    assert a.rule == "loss_scale_collapse" and a.step is not None and a.step > 20_000


@pytest.mark.parametrize(("level", "message"), BENIGN)
def test_benign_look_alikes_are_silent(level: str, message: str) -> None:
    e = engine()
    events = [log(0, float(i), message, level=level) for i in range(5)]
    assert run(e, events) == []


# -- NaN/Inf checks: loss_explosion and gradient_explosion -----------------------------------
@pytest.mark.parametrize(
    ("message", "rule", "figures"),
    [
        (MEGATRON_LOSS, "loss_explosion", {"value": "nan", "node": "dgx-a07", "device": 3}),
        (MEGATRON_GRAD, "gradient_explosion", {"value": "nan", "node": "node-15-11", "device": 5}),
        (MEGATRON_BUCKET, "gradient_explosion", {"value": "inf", "bucket": 0, "device": 5}),
        (ANOMALY, "gradient_explosion", {"value": "nan", "function": "LogBackward0"}),
    ],
)
def test_trainer_nan_checks_fire_the_metric_rules(
    message: str, rule: str, figures: dict[str, object]
) -> None:
    [a] = firing(run(engine(), [log(3, 5.0, message, level="ERROR", step=812)]))
    assert (a.rule, a.scope, a.ranks, a.step) == (rule, "rank", [3], 812)
    assert a.evidence["source"] == "log" and a.evidence["line"] == message
    assert figures.items() <= a.evidence.items()
    expected = LossExplosionConfig() if rule == "loss_explosion" else GradientExplosionConfig()
    assert (a.severity, a.action) == (expected.severity, expected.action)


def test_log_and_metric_findings_of_one_rank_are_one_incident() -> None:
    e = Engine([LossExplosion(), GradientExplosion(), *loss_scale.detectors()])
    events: list[LogEvent | StepEvent] = [
        StepEvent(job_id="job-1", rank=3, step=s, timestamp=T0 + s, loss=2.0, gradient_norm=1.0)
        for s in range(30)
    ]
    events.append(log(3, 30.2, MEGATRON_LOSS, level="ERROR", step=30))
    events.append(
        StepEvent(job_id="job-1", rank=3, step=30, timestamp=T0 + 30.5, loss=math.nan,
                  gradient_norm=math.nan)
    )  # fmt: skip
    alerts = firing(run(e, events))
    assert sorted(a.rule for a in alerts) == ["gradient_explosion", "loss_explosion"]
    [loss] = [a for a in alerts if a.rule == "loss_explosion"]
    assert loss.evidence["source"] == "log"  # the first evidence opened it


def test_every_rank_reporting_is_one_job_alert() -> None:
    # A job of 8 ranks (its steps say so) whose every rank fails the check at once.
    events: list[LogEvent | StepEvent] = [
        StepEvent(job_id="job-1", rank=r, step=s, timestamp=T0 + s + 0.001 * r, world_size=8)
        for s in range(5)
        for r in range(8)
    ]
    events += [
        log(r, 5.0 + 0.01 * r, MEGATRON_GRAD.replace("Rank 13", f"Rank {r}")) for r in range(8)
    ]
    [a] = firing(run(engine(), events))
    assert (a.rule, a.scope, a.ranks) == ("gradient_explosion", "job", list(range(8)))


def test_nan_wording_that_is_not_a_check_is_silent() -> None:
    quiet = [
        "found 1,024 files in /data/shard-00017",
        "Setting torch.autograd.set_detect_anomaly(True): Function outputs are checked for nan",
        "iteration      824/20000 | lm loss: 7.281394 | loss scale: 65536.0 | grad norm: 48.337",
        "fp16 enabled: initial loss scale 65536, loss scale window 1000, min loss scale 1",
    ]
    assert run(engine(), [log(0, float(i), m) for i, m in enumerate(quiet)]) == []


# -- wiring, settings, state -----------------------------------------------------------------
def test_registered_in_the_builtin_set() -> None:
    assert LossScaleDetector.name in {d.name for d in builtin_detectors()}
    [a] = firing(run(Engine.with_builtin_detectors(), [log(0, 5.0, AT_MINIMUM, "ERROR")]))
    assert a.rule == "loss_scale_collapse"


def test_rules_file_settings_reach_the_detector() -> None:
    [d] = [x for x in build_detectors({"loss_scale_collapse": {"min_skips": 5}})
           if isinstance(x, LossScaleDetector)]  # fmt: skip
    assert d.config is not None and d.config.min_skips == 5 and d.loss is not None
    off = build_detectors({"loss_scale_collapse": {"enabled": False}, "loss_explosion": {}})
    [d] = [x for x in off if isinstance(x, LossScaleDetector)]
    assert d.config is None and d.loss is not None
    e = Engine(off)
    assert run(e, [log(0, 5.0, AT_MINIMUM, "ERROR")]) == []
    assert check_config("loss_scale_collapse", {"window_s": 0.0})[0][0] == "window_s"


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_scale", 0.0), ("min_skips", 0), ("min_skips", 11), ("window_s", -1.0),
     ("window_steps", 0), ("refresh_s", math.inf), ("severity", "loud")],
)  # fmt: skip
def test_bad_settings_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(DetectorConfigError, match=field):
        LossScaleConfig(**{field: value})  # type: ignore[arg-type]


def test_state_is_plain_data_that_pickles() -> None:
    e = engine()
    e.process_many([log(0, float(i), m) for i, m in enumerate(LLAMA_534)])
    slot = e.job_state("job-1").slots[LossScaleDetector.name]
    copy = pickle.loads(pickle.dumps(slot))
    assert copy == slot and copy[0]["scale"] == 2.0 and len(copy[0]["t"]) == 5
