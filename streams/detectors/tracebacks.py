"""Reading a Python traceback out of a log record: what was raised, and where in the user's code.

A rank that crashes prints one traceback; a log shipper makes it one record, often with a
logger prefix before ``Traceback`` (``2023-04-29 ... ERROR [__main__] main failed``) or with
torchrun's ``[rank3]:`` before every line. :func:`parse_traceback` takes such a record and
returns the exception that was raised last (a chained traceback prints the cause first), the
type of the first cause, the frames, and the *user frame*: the innermost frame that is the
user's own code rather than an installed package, the standard library or a launcher script.

Pure and small: regular expressions over the text, no ``traceback`` module objects (the
exception was raised in another process, often on another machine).

>>> tb = parse_traceback('''[rank3]: Traceback (most recent call last):
... [rank3]:   File "/job/train.py", line 42, in forward
... [rank3]:     return x @ w
... [rank3]:   File "/usr/lib/python3.11/site-packages/torch/nn/functional.py", line 9, in f
... [rank3]:     pass
... [rank3]: RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x8 and 16x4)''')
>>> tb.exc_type, tb.user_frame
('RuntimeError', 'train.py:42 in forward')
>>> tb.error
'RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x8 and 16x4)'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "RANK_PREFIX",
    "TRACEBACK_HEADER",
    "Frame",
    "Traceback",
    "fault_user_frame",
    "is_user_path",
    "parse_traceback",
]

TRACEBACK_HEADER: Final = "Traceback (most recent call last):"

# The two sentences CPython prints between the sections of a chained traceback.
_CHAIN_MARKERS: Final = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
RANK_PREFIX: Final = re.compile(r"^\[(?:rank|Rank )\d+\]:[ ]?", re.MULTILINE)
_DIGIT: Final = re.compile(r"\d")
_FRAME: Final = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+)(?:, in (?P<func>.+))?$')
# "RuntimeError: text", "torch.OutOfMemoryError: text", a bare "MemoryError", "c10::Error: x".
_EXC_LINE: Final = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:::[\w.]+)*)(?::(?: (?P<msg>.*))?)?$")

# Frames that are not the user's code: installed packages, the standard library, frozen
# modules, and console-script launchers (bin/torchrun, bin/accelerate have no ".py").
_NOT_USER: Final = re.compile(
    r"(?:site-packages|dist-packages)[/\\]"
    r"|^<"  # <frozen runpy>, <string> (a dataclass's generated __init__), <stdin>
    r"|[/\\]lib[/\\]python\d+(?:\.\d+)?[/\\]"
    r"|[/\\]lib64[/\\]python\d+(?:\.\d+)?[/\\]"
    r"|[/\\]bin[/\\][^/\\.]+$"
)


def is_user_path(path: str) -> bool:
    """Whether a frame's file is the user's own code.

    >>> is_user_path("/job/train.py"), is_user_path("/opt/conda/lib/python3.10/runpy.py")
    (True, False)
    >>> is_user_path("/venv/lib/python3.11/site-packages/torch/nn/modules/module.py")
    False
    """
    return _NOT_USER.search(path) is None


@dataclass(frozen=True, slots=True)
class Frame:
    """One ``File "...", line N, in func`` entry, as printed."""

    file: str
    line: int
    func: str

    @property
    def where(self) -> str:
        """``train.py:42 in forward``: an absolute path is cut to its file name."""
        name = self.file
        if name.startswith(("/", "\\")) or (len(name) > 2 and name[1] == ":"):
            name = re.split(r"[/\\]", name)[-1]
        return f"{name}:{self.line} in {self.func}"


@dataclass(frozen=True, slots=True)
class Traceback:
    """The last raised exception of a record's traceback, and where it came from."""

    exc_type: str | None  # as printed, qualified: "torch.OutOfMemoryError"; None if unreadable
    exc_message: str  # first line of the exception's text, clipped ("" for a bare MemoryError)
    frames: tuple[Frame, ...]  # of the last section, outermost first
    user_frame: str | None  # innermost user frame of the last section (else of any section)
    cause_type: str | None = None  # type of the first exception of a chain, if chained
    exc_line: str = ""  # the exception line as printed (prefix stripped)

    @property
    def error(self) -> str:
        """One line a person reads: ``IndexError: index 8 is out of bounds ...``."""
        if self.exc_type is None:
            return self.exc_message
        return f"{self.exc_type}: {self.exc_message}" if self.exc_message else self.exc_type


@dataclass(slots=True)
class _Section:
    frames: list[Frame]
    exc_type: str | None
    exc_message: str
    exc_line: str


def strip_prefixes(message: str) -> str:
    """``message`` without ``[rankN]:`` line prefixes and without the prefix (a logger's, a
    shipper's) that stands before ``Traceback`` and is repeated on the lines after it.

    The repeated prefix may differ in its digits (a timestamp that ticks between lines):
    a line whose start equals the prefix once digits are ignored loses it too.
    """
    if "]:" in message:
        message = RANK_PREFIX.sub("", message)
    prefix = ""
    shape = ""
    out: list[str] = []
    for line in message.split("\n"):
        i = line.find(TRACEBACK_HEADER)
        if i >= 0:
            # A one-off logger prefix ("ERROR main failed: ") just goes; a per-line shipper
            # prefix is taken off the lines after it too.
            prefix = line[:i] if line[:i].strip() else ""
            shape = _DIGIT.sub("0", prefix)
            out.append(line[i:])
            continue
        if prefix:
            n = len(prefix)
            if line.startswith(prefix) or _DIGIT.sub("0", line[:n]) == shape:
                line = line[n:]
            elif line.startswith(prefix.rstrip()):
                line = line[len(prefix.rstrip()) :]
        out.append(line)
    return "\n".join(out)


def parse_traceback(message: str, *, max_message: int = 300) -> Traceback | None:
    """The traceback in ``message``, or ``None`` when it has none."""
    if TRACEBACK_HEADER not in message:
        return None
    lines = strip_prefixes(message).split("\n")
    sections: list[_Section] = []
    i, n = 0, len(lines)
    while i < n:
        if not lines[i].startswith(TRACEBACK_HEADER):
            i += 1
            continue
        section, i = _read_section(lines, i + 1, max_message)
        sections.append(section)
    if not sections:
        return None
    last = sections[-1]
    user = _innermost_user(last.frames)
    if user is None:  # e.g. the last raise was inside a library called from a library hook
        for section in reversed(sections[:-1]):
            user = _innermost_user(section.frames)
            if user is not None:
                break
    cause = sections[0].exc_type if len(sections) > 1 else None
    return Traceback(
        exc_type=last.exc_type,
        exc_message=last.exc_message,
        frames=tuple(last.frames),
        user_frame=user,
        cause_type=cause,
        exc_line=last.exc_line,
    )


def _read_section(lines: list[str], i: int, max_message: int) -> tuple[_Section, int]:
    frames: list[Frame] = []
    n = len(lines)
    # Frames: "  File ..." lines, each followed by indented source and caret lines.
    while i < n:
        line = lines[i]
        m = _FRAME.match(line)
        if m is not None:
            func = (m.group("func") or "?").strip()
            frames.append(Frame(m.group("file"), int(m.group("line")), func))
            i += 1
            continue
        if line.startswith((" ", "\t")) or not line.strip():
            i += 1
            continue
        break
    # The exception line: the first flush-left line after the frames.
    exc_type: str | None = None
    exc_message = ""
    exc_line = ""
    if i < n and not lines[i].startswith(TRACEBACK_HEADER):
        exc_line = lines[i].rstrip()
        m = _EXC_LINE.match(exc_line)
        if m is not None:
            exc_type = m.group("type")
            exc_message = (m.group("msg") or "").strip()
        else:
            exc_message = exc_line.strip()
        i += 1
        # A message that ends in ":" (or is empty) says what follows: take the first detail
        # line ("Error(s) in loading state_dict for Net:" -> "size mismatch for ...").
        if not exc_message or exc_message.endswith(":"):
            j = i
            while j < n and j < i + 4:
                detail = lines[j].strip()
                if detail and not detail.startswith(TRACEBACK_HEADER) and set(detail) != {"="}:
                    if detail not in _CHAIN_MARKERS:
                        exc_message = f"{exc_message} {detail}".strip()
                    break
                j += 1
    # Skip the rest of the exception's text, up to the next section.
    while i < n and not lines[i].startswith(TRACEBACK_HEADER):
        i += 1
    return _Section(frames, exc_type, _clip(exc_message, max_message), exc_line), i


# faulthandler's dump ("Fatal Python error: Segmentation fault"): each thread's frames, most
# recent first, as 'File "x.py", line 12 in func' (no comma before "in").
_FAULT_THREAD: Final = re.compile(
    r"^(?:Current thread|Thread) 0x[0-9a-fA-F]+ (?:\[[^\]\n]*\] )?\(most recent call first\):\n"
    r"(?P<body>(?:[ \t]+[^\n]*(?:\n|$))+)",
    re.MULTILINE,
)
_FAULT_FRAME: Final = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')


def fault_user_frame(message: str) -> str | None:
    """The user's innermost frame in a faulthandler dump (the current thread's first, then
    the other threads'), or ``None``.

    >>> fault_user_frame('''Fatal Python error: Segmentation fault
    ...
    ... Current thread 0x00007fd9b8151600 (most recent call first):
    ...   File "/venv/lib/python3.8/site-packages/x/gen.py", line 362 in rate_conv
    ...   File "main.py", line 86 in build''')
    'main.py:86 in build'
    """
    blocks = sorted(
        _FAULT_THREAD.finditer(message), key=lambda m: not m.group(0).startswith("Current")
    )
    for block in blocks:
        for line in block.group("body").splitlines():
            m = _FAULT_FRAME.match(line)
            if m is not None and is_user_path(m.group("file")):
                return Frame(m.group("file"), int(m.group("line")), m.group("func")).where
    return None


def _innermost_user(frames: list[Frame]) -> str | None:
    for frame in reversed(frames):
        if is_user_path(frame.file):
            return frame.where
    return None


def _clip(text: str, max_len: int) -> str:
    text = text.strip()
    return text if len(text) <= max_len else text[: max_len - 3] + "..."
