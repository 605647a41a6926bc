"""Snapshot plans computed in a forked process, so that encoding a big job's state does not
stop the worker's loop.

Encoding every chunk of a 16,384-rank job takes about half a second of one core; done in the
loop, every event behind it (an OOM record among them) waits that long. ``os.fork`` gives a
child process the engine exactly as it is at the moment of the fork (copy-on-write: nothing is
copied up front), so the child can plan the snapshot (:meth:`SnapshotStore.plan`) on the other
core while the worker goes on with the next batch. The plans come back through an anonymous
in-memory file; the worker writes them (:meth:`SnapshotStore.apply`) and commits the offsets
it read at the fork: the state and the offsets describe the same moment.

The child touches no Kafka client (it inherits none of their threads) and leaves with
``os._exit``, running no finalizer of the parent's objects. It dies with the worker
(``PR_SET_PDEATHSIG``): a worker killed with ``kill -9`` leaves nothing running.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import pickle
import signal
from collections.abc import Callable
from typing import Any

from rankwatch.streams.exceptions import StreamsError
from rankwatch.streams.snapshots import SnapshotPlan, StateTooLarge

log = logging.getLogger("rankwatch.worker")

_PR_SET_PDEATHSIG = 1
_NICE = 10  # CFS gives a nice-10 process about a tenth of a core against a busy nice-0 one

#: What the child runs: the plans of every job the snapshot saves.
Planner = Callable[[], list[SnapshotPlan]]


class ForkFailed(StreamsError):
    """The forked planner did not hand back its plans (killed, out of memory, a bug)."""


def can_fork() -> bool:
    """Whether this platform forks (Linux and macOS do; the worker falls back otherwise)."""
    return hasattr(os, "fork") and hasattr(os, "memfd_create")


class ForkedPlans:
    """One child process planning a snapshot; see the module docstring.

    ``planner`` runs in the child, on the parent's memory as it was at the fork. :meth:`ready`
    says, without waiting, whether the child has finished; :meth:`plans` waits for it and
    returns its plans, or raises what it raised (:class:`StateTooLarge`), or
    :class:`ForkFailed`.
    """

    def __init__(self, planner: Planner) -> None:
        self._fd = os.memfd_create("rankwatch-snapshot", os.MFD_CLOEXEC)
        self._status: int | None = None
        try:
            pid = os.fork()
        except BaseException:
            os.close(self._fd)
            raise
        if pid == 0:  # the child: plan, write, leave
            _child(planner, self._fd)
        self.pid = pid

    def ready(self) -> bool:
        if self._status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == 0:
                return False
            self._status = status
        return True

    def plans(self) -> list[SnapshotPlan]:
        if self._status is None:
            self._status = os.waitpid(self.pid, 0)[1]
        if self._fd < 0:
            raise ForkFailed(f"snapshot planner (pid {self.pid}): its plans were read already")
        try:
            code = os.waitstatus_to_exitcode(self._status)
            size = os.lseek(self._fd, 0, os.SEEK_END)
            if code != 0 or size == 0:
                raise ForkFailed(f"snapshot planner (pid {self.pid}) ended with status {code}")
            os.lseek(self._fd, 0, os.SEEK_SET)
            with os.fdopen(os.dup(self._fd), "rb") as f:
                kind, value = pickle.loads(f.read())
        finally:
            self._close()
        if kind == "plans":
            return value  # type: ignore[no-any-return]
        if kind == "too large":
            raise StateTooLarge(*value)
        raise ForkFailed(f"snapshot planner (pid {self.pid}) failed: {value}")

    def abandon(self) -> None:
        """Stop the child and forget its plans (the worker is going down)."""
        if self._status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                self._status = os.waitpid(self.pid, 0)[1]
            except ChildProcessError:
                self._status = 0
        self._close()

    def _close(self) -> None:
        # Once only: a number closed twice may by then be another file's.
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _child(planner: Planner, fd: int) -> None:
    code = 1
    try:
        gc.disable()  # a collection would touch (and copy) every page of the parent's heap
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent()
        # Below the worker's priority: on a busy machine the loop's events come first, and
        # the plans take the idle time (a snapshot every few seconds has seconds to spare).
        with contextlib.suppress(OSError):
            os.nice(_NICE)
        result: tuple[str, Any]
        try:
            result = ("plans", planner())
        except StateTooLarge as exc:
            result = ("too large", (exc.job_id, exc.key, exc.size, exc.limit))
        except Exception as exc:  # handed to the parent, which raises it
            result = ("error", repr(exc))
        data = pickle.dumps(result, pickle.HIGHEST_PROTOCOL)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        code = 0
    finally:
        os._exit(code)


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the child ends by itself within seconds
        pass
