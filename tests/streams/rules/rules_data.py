"""Events and rules files shared by the rules tests (imported as ``import rules_data``)."""

from __future__ import annotations

from pathlib import Path

from rankwatch.schemas import LogEvent, StepEvent, encode

T0 = 1_743_848_595.0
DISK = "OSError: [Errno 28] No space left on device: '/ckpt/step_40'"

RULES = """\
# tuned built-ins, a no-code rule of each kind, a Python rule, a per-job override
[builtin.straggler]
enabled = false

[builtin.loss_explosion]
sustain_steps = 3

[[rule]]
name = "disk_full"
kind = "log_pattern"
pattern = "No space left on device"
severity = "critical"
min_ranks = 2
window_s = 30

[[rule]]
name = "low_mfu"
kind = "threshold"
field = "mfu"
op = "<"
value = 0.3
for_steps = 5
summary = "MFU {value:.2f} on rank {rank} since step {step}"

[[rule]]
name = "retry_storm"
kind = "frequency"
pattern = "retrying"
ignore_case = true
count = 3
window_s = 10

[[rule]]
name = "loss_plateau"
kind = "python"
class = "rankwatch.streams.rules.examples:LossPlateau"
options = { window = 20 }

[[jobs]]
match = ["bench-*", "smoke-*"]
rule.low_mfu.enabled = false
builtin.loss_explosion.enabled = false
"""


def job_events(job: str, steps: int = 60, ranks: int = 4) -> list[StepEvent | LogEvent]:
    """A healthy job except: rank 1's MFU drops at step 30, rank 2's loss is NaN from step 50,
    three ranks run out of disk at step 40, rank 0 retries three times at step 20."""
    out: list[StepEvent | LogEvent] = []
    for step in range(steps):
        for rank in range(ranks):
            out.append(
                StepEvent(
                    job_id=job,
                    rank=rank,
                    world_size=ranks,
                    step=step,
                    timestamp=T0 + step,
                    loss=float("nan") if rank == 2 and step >= 50 else 2.0,
                    mfu=0.2 if rank == 1 and step >= 30 else 0.45,  # an extra field
                )
            )
        if step == 20:
            out += [
                LogEvent(job_id=job, rank=0, timestamp=T0 + step + 0.1 * i, level="WARNING",
                         step=step, message=f"Retrying upload of shard {i}")
                for i in range(3)
            ]  # fmt: skip
        if step == 40:
            out += [
                LogEvent(job_id=job, rank=r, timestamp=T0 + step + 0.3, level="ERROR",
                         step=step, message=DISK)
                for r in (0, 2, 3)
            ]  # fmt: skip
    return out


def write_events(path: Path, events: list[StepEvent | LogEvent]) -> Path:
    path.write_bytes(b"".join(encode(e) + b"\n" for e in events))
    return path
