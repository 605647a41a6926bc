"""Per-step metric lines that common trainers print, as StepEvent fields.

Each parser returns ``(step or None, fields)`` for a line it recognises, or None. Field names
are the contract's (``gradient_norm``, not ``grad_norm``).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# Hugging Face Trainer: {'loss': 2.1, 'grad_norm': 0.5, 'learning_rate': 1e-05, 'epoch': 0.1}
_HF_DICT = re.compile(r"\{'[A-Za-z_]+': [^{}]*\}")
_HF_PAIR = re.compile(r"'([A-Za-z_]+)':\s*([^,}]+)")
# Values may be wrapped: np.float64(2.1), tensor(2.1, device='cuda:0').
_WRAPPED = re.compile(r"^[\w.]+\(\s*([^,)]+)")
_HF_FIELDS = {"loss": "loss", "grad_norm": "gradient_norm", "learning_rate": "learning_rate"}
_HF_STEP_KEYS = ("step", "global_step")
# tqdm's progress bar, which the Trainer prints beside its dicts: ` 12%|█▏   | 120/1000 [`
_TQDM = re.compile(r"\|\s*(\d+)/(\d+)\s*\[")
# A whole tqdm bar at the start of a frame: `desc:  12%|█▏  | 120/1000 [00:42<05:08, 2.85it/s]`
# (tqdm's default `{l_bar}{bar}{r_bar}`), or without a total: `desc: 120it [00:42, 2.85it/s]`.
_UNIT = r"[\d.]+[kMGTPEZY]?"
_BAR = re.compile(
    rf"^\s*(?:[^|\[\]]{{0,80}}?:\s*)?(?:\d{{1,3}}%\|[^|]*\|\s*({_UNIT})/{_UNIT}\s*|"
    rf"({_UNIT})\s?[A-Za-z]{{0,12}}\s)\[[\d:]+(?:<[\d:?]+)?,[^\]]*\]"
)

# Megatron-LM: iteration      100/  500000 | consumed samples: ... | lm loss: 2.345678E+00 | ...
_MEGATRON = re.compile(r"\biteration\s+(\d+)\s*/\s*\d+\s*\|(.*)")
_MEGATRON_FIELDS = {
    "lm loss": ("loss", 1.0),
    "learning rate": ("learning_rate", 1.0),
    "grad norm": ("gradient_norm", 1.0),
    "elapsed time per iteration (ms)": ("step_time_s", 0.001),
    "tokens per second": ("throughput_tokens_per_sec", 1.0),
    "tokens per sec": ("throughput_tokens_per_sec", 1.0),
}

Parsed = tuple[int | None, dict[str, Any]]


def _number(text: str) -> float | None:
    text = text.strip().strip("'\"")
    wrapped = _WRAPPED.match(text)
    if wrapped is not None:
        text = wrapped.group(1).strip()
    try:
        return float(text)  # float() reads nan, inf, -inf and 1.000E-04
    except ValueError:
        return None


def tqdm_position(line: str) -> int | None:
    """The step a tqdm bar shows.

    >>> tqdm_position(" 12%|█▏        | 120/1000 [00:42<05:08,  2.85it/s]")
    120
    """
    found = _TQDM.findall(line)
    return int(found[-1][0]) if found else None


def split_progress(frame: str) -> tuple[int | None, str] | None:
    """A tqdm bar at the start of ``frame``: the step it shows (None where tqdm scaled it, as
    ``1.2k``) and the text after it ('' for a frame that is only a bar); None: no bar.

    >>> split_progress(" 50%|█████     | 5/10 [00:01<00:01,  4.00it/s]")
    (5, '')
    >>> split_progress("Map: 120it [00:42,  2.85it/s]{'loss': 1.5}")
    (120, "{'loss': 1.5}")
    >>> split_progress("step 5/10 [ok]") is None
    True
    """
    match = _BAR.match(frame)
    if match is None:
        return None
    shown = match.group(1) or match.group(2)
    try:
        position: int | None = int(float(shown))
    except ValueError:  # `1.2k`: tqdm's unit_scale; the step is not exact
        position = None
    return position, frame[match.end() :]


def parse_hf(line: str) -> Parsed | None:
    """A Hugging Face Trainer log dict with a loss or a gradient norm.

    >>> parse_hf("{'loss': nan, 'grad_norm': 0.5, 'learning_rate': 1e-05, 'epoch': 0.1}")
    (None, {'loss': nan, 'gradient_norm': 0.5, 'learning_rate': 1e-05})
    >>> parse_hf("{'train_runtime': 12.5, 'train_loss': 2.0}") is None
    True
    """
    match = _HF_DICT.search(line)
    if match is None:
        return None
    raw = {key: value for key, value in _HF_PAIR.findall(match.group(0))}
    fields: dict[str, Any] = {}
    for key, name in _HF_FIELDS.items():
        if key in raw:
            value = _number(raw[key])
            if value is not None:
                fields[name] = value
    if "loss" not in fields and "gradient_norm" not in fields:
        return None
    step = None
    for key in _HF_STEP_KEYS:
        value = _number(raw.get(key, ""))
        if value is not None and value >= 0:
            step = int(value)
    return step, fields


def parse_megatron(line: str) -> Parsed | None:
    """A Megatron-LM training log line.

    >>> parse_megatron("iteration      100/  500000 | consumed samples: 51200 | elapsed time "
    ...     "per iteration (ms): 1234.5 | learning rate: 1.000E-04 | global batch size:   512 | "
    ...     "lm loss: 2.345678E+00 | loss scale: 1.0 | grad norm: 0.567 |")[1]["loss"]
    2.345678
    """
    match = _MEGATRON.search(line)
    if match is None:
        return None
    fields: dict[str, Any] = {}
    for part in match.group(2).split("|"):
        name, sep, value = part.rpartition(":")
        spec = _MEGATRON_FIELDS.get(name.strip().lower()) if sep else None
        if spec is not None:
            number = _number(value)
            if number is not None:
                fields[spec[0]] = number * spec[1] if spec[1] != 1.0 else number
    return int(match.group(1)), fields


def parse_json(line: str) -> dict[str, Any] | None:
    """A structured per-step JSON line (the contract's StepEvent fields, ``kind`` optional).

    >>> parse_json('{"step": 3, "loss": 2.5, "timestamp": "2025-04-05T10:23:15Z"}')["loss"]
    2.5
    """
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")) or text.startswith("{'"):
        return None
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or "step" not in obj or obj.get("kind", "step") != "step":
        return None
    if "level" in obj or "message" in obj:
        return None
    return obj
