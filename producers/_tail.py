"""Read a growing log file like ``tail -F``: new lines as they come, across rotation.

Rotation is noticed by the path's inode changing (``mv log log.1; new log``: the rest of the
old file is read first) and by the file shrinking (``truncate``/copytruncate: read from the
start again).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

# Yielded when nothing new arrived for ``idle_s``: the caller may close open records.
IDLE = ""


def follow(
    path: Path,
    *,
    from_start: bool = True,
    poll_s: float = 0.2,
    idle_s: float = 2.0,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[str]:
    """Lines of ``path`` (with their newline), then new ones as they are written; ``IDLE``
    when the file has been quiet for ``idle_s``. Ends when ``stop()`` is true."""
    handle: IO[str] | None = None
    inode = -1
    partial = ""
    quiet_since = time.monotonic()
    idle_sent = False
    while not stop():
        if handle is None:
            try:
                handle = path.open(encoding="utf-8", errors="replace", newline="")
            except FileNotFoundError:
                time.sleep(poll_s)
                continue
            inode = os.fstat(handle.fileno()).st_ino
            if not from_start:
                handle.seek(0, os.SEEK_END)
            from_start = True  # a rotated-in file is read from its start
        chunk = handle.readline()
        if chunk:
            partial += chunk
            if partial.endswith("\n"):
                yield partial
                partial = ""
                quiet_since, idle_sent = time.monotonic(), False
            continue
        # At the end of what exists: has the file been rotated or truncated?
        try:
            current = path.stat()
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino != inode:
            handle.close()
            handle = None
            continue
        if current is not None and current.st_size < handle.tell():
            handle.seek(0)
            partial = ""
            continue
        if not idle_sent and time.monotonic() - quiet_since >= idle_s:
            if partial:  # a last line without its newline, quiet for a while: take it
                yield partial
                partial = ""
            yield IDLE
            idle_sent = True
        time.sleep(poll_s)
    if handle is not None:
        handle.close()
