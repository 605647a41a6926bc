"""Reading the stack a stuck rank sent: where its main thread is, and whether it waits on peers.

The producer's watchdog (``lifecycle="stuck"`` records) sends the main thread's Python stack
as ``traceback.format_stack`` prints it, outermost frame first. In a hang of synchronous
training every rank is stuck, but not in the same place: the peers wait inside a collective
(``torch.distributed``, or DDP's all-reduce, which runs inside ``backward()``), while the rank
that caused it is somewhere else: in its own code, its data loader, a file system call. That
rank is the culprit.

>>> s = parse_stack('''rankwatch: rank 3 stuck in step 41 for 9 s; main thread stack:
...   File "/job/train.py", line 80, in <module>
...     main()
...   File "/job/train.py", line 55, in main
...     time.sleep(3600)''')
>>> s.where, s.waits_on_peers
('train.py:55 in main', False)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from rankwatch.streams.detectors.tracebacks import Frame, is_user_path

_FRAME: Final = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>.+)$')
# Where a rank waits for its peers: the collectives and their Python callers (DDP syncs
# buffers in forward and reduces gradients from autograd hooks inside backward); functions
# named like a collective, for wrappers of other libraries. Not "wait": threading's and
# queue's waits are how a rank blocks on its own data or lock.
_PEER_WAIT_FILES: Final = re.compile(
    r"torch[/\\](?:distributed[/\\]|autograd[/\\]|_tensor\.py|nn[/\\]parallel[/\\]distributed\.py)"
    r"|deepspeed[/\\](?:comm|runtime[/\\]comm)[/\\]|megatron[/\\]core[/\\]"
    r"(?:distributed|parallel_state)"
)
_PEER_WAIT_FUNCS: Final = frozenset(
    {
        "all_reduce",
        "all_gather",
        "all_gather_into_tensor",
        "reduce_scatter",
        "reduce_scatter_tensor",
        "broadcast",
        "barrier",
        "monitored_barrier",
        "all_to_all",
    }
)
_STACK_LINES = 24  # lines of a stack kept in evidence (the innermost ones)


@dataclass(frozen=True, slots=True)
class Stack:
    """Where a stuck rank's main thread is."""

    frames: tuple[Frame, ...]  # outermost first
    where: str | None  # innermost frame, "train.py:55 in main"
    user_frame: str | None  # innermost frame in the user's own code
    waits_on_peers: bool  # inside a collective (or a backward that runs one)
    text: str  # the innermost lines of the stack, for evidence


def parse_stack(message: str) -> Stack:
    """The frames of a stack printed by ``traceback.format_stack`` inside ``message``."""
    lines = message.split("\n")
    frames: list[Frame] = []
    first = -1
    for i, line in enumerate(lines):
        m = _FRAME.match(line)
        if m is not None:
            if first < 0:
                first = i
            frames.append(Frame(m.group("file"), int(m.group("line")), m.group("func").strip()))
    user = next((f.where for f in reversed(frames) if is_user_path(f.file)), None)
    # The innermost few frames decide: a wait in a collective is at most a few calls deep
    # below the torch function the user called.
    waits = any(
        _PEER_WAIT_FILES.search(f.file) is not None or f.func in _PEER_WAIT_FUNCS
        for f in frames[-4:]
    )
    body = lines[first:] if first >= 0 else []
    text = "\n".join(body[-_STACK_LINES:])
    return Stack(tuple(frames), frames[-1].where if frames else None, user, waits, text)
