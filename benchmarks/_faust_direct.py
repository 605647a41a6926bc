"""An experiment, not a fix: ``rankwatch worker`` with Faust's fetcher awaiting each message's
callback directly instead of through ``Service.wait_first(callback, suspend_flow.wait())``
(four asyncio tasks and an ``asyncio.wait`` per message). What trimming Faust would buy,
measured by ``worker_throughput.py --faust-direct``. It drops the fetcher's reaction to a flow
suspension in the middle of a callback (a rebalance), so it is not for production.

    python benchmarks/_faust_direct.py worker --bootstrap ... (the rankwatch arguments)
"""

from __future__ import annotations

import inspect
import re
import runpy
import sys
import textwrap

import faust.transport.consumer as fc

_SOURCE = textwrap.dedent(inspect.getsource(fc.Consumer._drain_messages))
_PATCHED, n = re.subn(
    r"await self\.wait_first\(\s*callback\(message\), self\.suspend_flow\.wait\(\)\s*\)",
    "await callback(message)",
    _SOURCE,
)
if n != 1:
    raise SystemExit("faust's Consumer._drain_messages changed: the experiment needs updating")
_ns: dict[str, object] = {}
exec(compile(_PATCHED, fc.__file__, "exec"), fc.__dict__, _ns)
fc.Consumer._drain_messages = _ns["_drain_messages"]  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv = ["rankwatch", *sys.argv[1:]]
    runpy.run_module("rankwatch.cli", run_name="__main__", alter_sys=True)
