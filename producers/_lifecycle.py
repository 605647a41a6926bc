"""What the producer says of its rank's life by itself: crashes, signals, stuck steps.

:func:`install` (called by :func:`rankwatch.producers.configure`) sets up, once per process:

* chained ``sys.excepthook`` and ``threading.excepthook``: an uncaught exception becomes an
  ERROR record (``lifecycle="exception"``) with the traceback as Python prints it;
* SIGTERM and SIGINT handlers (main thread only; a signal that is ignored stays ignored): a
  WARNING record (``lifecycle="terminated"``), a bounded flush, then what the signal did before;
* a daemon watchdog thread: a step that overruns its typical time by far becomes a WARNING record
  (``lifecycle="stuck"``) with the main thread's stack.

Every hook reports on the producer that is current when it fires, flushes within
``flush_on_signal_s`` and never raises into the trainer. The clean end (``lifecycle="ended"``)
is the producer's own: :meth:`RankwatchProducer.close` sends it.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rankwatch.config.settings import ProducerSettings
    from rankwatch.producers._producer import RankwatchProducer

#: The ``logger`` field of every record written here.
LIFECYCLE_LOGGER = "rankwatch.lifecycle"
#: The signals that stop a rank: torchrun sends SIGTERM to the survivors, a person SIGINT.
SIGNALS = (signal.SIGTERM, signal.SIGINT)

Current = Callable[[], "RankwatchProducer | None"]
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def exception_message(
    exc_type: type[BaseException],
    exc: BaseException | None,
    tb: TracebackType | None,
    thread_name: str | None = None,
) -> str:
    """The traceback as Python prints it (chained exceptions included); for a thread other than
    the main one, a first line names it, as ``threading.excepthook`` does.

    >>> try:
    ...     [][1]
    ... except IndexError as error:
    ...     text = exception_message(type(error), error, error.__traceback__, "loader")
    >>> print(text.splitlines()[0]); print(text.splitlines()[-1])
    Exception in thread loader:
    IndexError: list index out of range
    """
    text = "".join(traceback.format_exception(exc_type, exc, tb)).rstrip("\n")
    return f"Exception in thread {thread_name}:\n{text}" if thread_name is not None else text


def main_thread_stack() -> str:
    """The main thread's current Python stack, innermost last, as a traceback shows it."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    if frame is None:
        return "  (main thread not found)"
    return "".join(traceback.format_stack(frame)).rstrip("\n")


@dataclass(frozen=True, slots=True)
class Stuck:
    """A step overrunning: ``elapsed`` since the last step, the ``typical`` interval (None
    before the second step) and the ``bound`` it passed."""

    elapsed: float
    typical: float | None
    bound: float


class StepWatch:
    """Judges from snapshots of the step clock whether the step in progress is stuck.

    Pure (the watchdog thread feeds it): ``steps`` counts ``log_step`` calls, ``last`` is the
    monotonic time of the latest, ``resets`` changes where a phase ended (the time spent in it is
    no step interval), ``first`` the time of the first step. Typical = EWMA of the intervals
    between steps. Stuck when the time since
    the last step exceeds ``max(stuck_after_s, factor x typical)``; reported again each time it
    passes another multiple of that bound.

    >>> watch = StepWatch()
    >>> [watch.observe(n, float(n), 0, now=float(n), stuck_after_s=2, factor=10) for n in (1, 2)]
    [None, None]
    >>> watch.typical, watch.observe(2, 2.0, 0, now=30.0, stuck_after_s=2, factor=10)
    (1.0, Stuck(elapsed=28.0, typical=1.0, bound=10.0))
    >>> watch.observe(2, 2.0, 0, now=31.0, stuck_after_s=2, factor=10) is None  # told already
    True
    """

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha = alpha
        self.typical: float | None = None
        self._steps: int | None = None
        self._last = 0.0
        self._resets = 0
        self._reported = 0  # multiples of the bound already reported for this step

    def observe(
        self,
        steps: int,
        last: float | None,
        resets: int,
        *,
        now: float,
        stuck_after_s: float,
        factor: float,
        paused: bool = False,
        first: float | None = None,
    ) -> Stuck | None:
        if steps == 0 or last is None:
            return None  # armed by the first step: loading a model is not a step
        if self._steps is None or resets != self._resets:
            if self._steps is None and resets == 0 and first is not None and steps > 1:
                # Steps seen before the first look: their mean interval, from the first one.
                self.typical = max(0.0, last - first) / (steps - 1)
            self._steps, self._last, self._resets, self._reported = steps, last, resets, 0
        elif steps != self._steps:
            count = steps - self._steps
            mean = max(0.0, last - self._last) / count
            if self.typical is None:
                self.typical = mean
            else:  # ``count`` EWMA updates with the same interval, in one go
                keep = (1.0 - self.alpha) ** count
                self.typical = keep * self.typical + (1.0 - keep) * mean
            self._steps, self._last, self._reported = steps, last, 0
        if paused:
            return None
        bound = max(stuck_after_s, factor * (self.typical or 0.0))
        elapsed = now - self._last
        multiple = math.floor(elapsed / bound)
        if multiple <= self._reported:
            return None
        self._reported = multiple
        return Stuck(elapsed, self.typical, bound)


class Watchdog(threading.Thread):
    """Looks at the current producer's step clock a few times per stuck bound (at most once a
    second); the training thread only stores a timestamp per step."""

    def __init__(self, current: Current) -> None:
        super().__init__(name="rankwatch-watchdog", daemon=True)
        self._current = current
        self._stop_event = threading.Event()
        self._watched: RankwatchProducer | None = None
        self._watch = StepWatch()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        period = 1.0
        while not self._stop_event.is_set():
            with contextlib.suppress(Exception):  # a watchdog that dies watches nothing
                period = self.tick()
            self._stop_event.wait(period)

    def tick(self, now: float | None = None) -> float:
        """Look once; return how long to wait before the next look."""
        producer = self._current()
        if producer is None or producer.closed:
            self._watched = None
            return 1.0
        settings = producer.settings.producer
        if producer is not self._watched:
            self._watched, self._watch = producer, StepWatch()
        steps = producer.steps_seen  # read before the time: log_step writes the time first
        stuck = self._watch.observe(
            steps,
            producer.step_started,
            producer.clock_resets,
            now=time.monotonic() if now is None else now,
            stuck_after_s=settings.stuck_after_s,
            factor=settings.stuck_factor,
            paused=producer.current_phase not in (None, "train"),
            first=producer.first_step_started,
        )
        if stuck is not None and settings.report_stuck:
            report_stuck(producer, stuck, main_thread_stack())
        return min(1.0, max(0.05, settings.stuck_after_s / 4))


def report_stuck(producer: RankwatchProducer, stuck: Stuck, stack: str) -> None:
    step = producer.last_step + 1 if producer.last_step is not None else None
    typical = f"{stuck.typical:.3g} s" if stuck.typical is not None else "n/a: one step so far"
    producer.lifecycle_record(
        "stuck",
        "WARNING",
        f"rankwatch: rank {producer.identity.rank} stuck in step {step} for "
        f"{stuck.elapsed:.1f} s (typical {typical}); main thread stack:\n{stack}",
        step=step,
    )
    producer.flush(producer.settings.producer.flush_on_signal_s)


class _Hooks:
    """What :func:`install` put in place, and what was there before."""

    def __init__(self, current: Current) -> None:
        self.current = current
        self.pid = os.getpid()  # a forked child (a data loader worker) is not the rank
        self.excepthook: Callable[..., Any] | None = None
        self.threading_excepthook: Callable[..., Any] | None = None
        self.signals: dict[int, _Handler] = {}
        self.handling: set[int] = set()
        self.watchdog: Watchdog | None = None

    def producer(self) -> RankwatchProducer | None:
        return self.current() if os.getpid() == self.pid else None

    # ----- uncaught exceptions -----------------------------------------------------------------

    def on_exception(
        self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        try:
            self.report_exception(exc_type, exc, tb, None)
        finally:
            previous = self.excepthook or sys.__excepthook__
            previous(exc_type, exc, tb)

    def on_thread_exception(self, args: threading.ExceptHookArgs) -> None:
        try:
            if not issubclass(args.exc_type, SystemExit):  # Python ignores it in threads too
                name = args.thread.name if args.thread is not None else "(unknown)"
                self.report_exception(args.exc_type, args.exc_value, args.exc_traceback, name)
        finally:
            previous = self.threading_excepthook or threading.__excepthook__
            previous(args)

    def report_exception(
        self,
        exc_type: type[BaseException],
        exc: BaseException | None,
        tb: TracebackType | None,
        thread_name: str | None,
    ) -> None:
        with contextlib.suppress(Exception):
            producer = self.producer()
            if producer is None or producer.closed:
                return
            producer.exception_seen = True
            if issubclass(exc_type, KeyboardInterrupt) and producer.terminated_by == "SIGINT":
                return  # the terminated record said it already
            producer.lifecycle_record(
                "exception", "ERROR", exception_message(exc_type, exc, tb, thread_name)
            )
            producer.flush(producer.settings.producer.flush_on_signal_s)

    # ----- signals -----------------------------------------------------------------------------

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        interrupted: BaseException | None = None
        if signum not in self.handling:  # a second SIGTERM while flushing: act at once
            self.handling.add(signum)
            try:
                self.report_signal(signum)
            except BaseException as error:  # a nested signal's KeyboardInterrupt: raised later
                interrupted = error
            finally:
                self.handling.discard(signum)
        previous = self.signals.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)  # may raise (KeyboardInterrupt, SystemExit): as before
        elif previous == signal.SIG_DFL:
            # Die of the signal itself, so the exit status still says "killed by SIGTERM".
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        if interrupted is not None:
            raise interrupted

    def report_signal(self, signum: int) -> None:
        with contextlib.suppress(Exception):
            producer = self.producer()
            if producer is None or producer.closed:
                return
            name = signal.Signals(signum).name
            producer.terminated_by = name
            step = producer.last_step
            where = f"at step {step}" if step is not None else "before its first step"
            producer.lifecycle_record(
                "terminated",
                "WARNING",
                f"rankwatch: rank {producer.identity.rank} got {name} {where}",
            )
            producer.flush(producer.settings.producer.flush_on_signal_s)


_lock = threading.Lock()
_hooks: _Hooks | None = None


def installed() -> dict[str, bool]:
    """Which hooks are in place: ``{"exceptions": ..., "signals": ..., "stuck": ...}``."""
    hooks = _hooks
    return {
        "exceptions": hooks is not None and hooks.excepthook is not None,
        "signals": hooks is not None and bool(hooks.signals),
        "stuck": hooks is not None and hooks.watchdog is not None,
    }


def install(current: Current, settings: ProducerSettings, enabled: bool = True) -> None:
    """Put in place the hooks ``settings`` asks for (``enabled=False``: none), each at most once
    per process; remove those it no longer asks for. They report on ``current()``."""
    global _hooks
    with _lock:
        hooks = _hooks = _hooks or _Hooks(current)
        hooks.current = current
        _set_exception_hooks(hooks, enabled and settings.report_exceptions)
        _set_signal_handlers(hooks, enabled and settings.report_signals)
        _set_watchdog(hooks, enabled and settings.report_stuck)


def uninstall() -> None:
    """Put back what was there before :func:`install` (a hook someone set over ours stays)."""
    with _lock:
        hooks = _hooks
        if hooks is not None:
            _set_exception_hooks(hooks, False)
            _set_signal_handlers(hooks, False)
            _set_watchdog(hooks, False)


def _set_exception_hooks(hooks: _Hooks, on: bool) -> None:
    if on and hooks.excepthook is None:
        hooks.excepthook, sys.excepthook = sys.excepthook, hooks.on_exception
        hooks.threading_excepthook = threading.excepthook
        threading.excepthook = hooks.on_thread_exception
    elif not on and hooks.excepthook is not None:
        if sys.excepthook == hooks.on_exception:
            sys.excepthook = hooks.excepthook
        if threading.excepthook == hooks.on_thread_exception:
            threading.excepthook = hooks.threading_excepthook or threading.__excepthook__
        hooks.excepthook = hooks.threading_excepthook = None


def _set_signal_handlers(hooks: _Hooks, on: bool) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers; ours stay, and pass through when idle
    if on:
        for signum in SIGNALS:
            previous = signal.getsignal(signum)
            # SIG_IGN stays ignored; None is a handler set outside Python, which we cannot call.
            if signum in hooks.signals or previous in (signal.SIG_IGN, None):
                continue
            if previous == signal.SIG_DFL or callable(previous):
                signal.signal(signum, hooks.on_signal)
                hooks.signals[signum] = previous
    else:
        for number, previous in list(hooks.signals.items()):
            # A handler set over ours may chain to ours: then ours stays, passing through.
            if signal.getsignal(number) == hooks.on_signal:
                signal.signal(number, previous)
                del hooks.signals[number]


def _set_watchdog(hooks: _Hooks, on: bool) -> None:
    if on and hooks.watchdog is None:
        hooks.watchdog = Watchdog(lambda: hooks.producer())
        hooks.watchdog.start()
    elif not on and hooks.watchdog is not None:
        hooks.watchdog.stop()
        hooks.watchdog = None
