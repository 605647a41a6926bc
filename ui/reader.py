"""Read-only access to the store from async request handlers.

The store's connections are blocking DB-API objects, so every query runs on a small pool of
threads, each with a store of its own (a connection is never shared between two threads at once).
The dashboard never migrates or writes: it opens the store with ``migrate=False``, and a store
that has no tables yet (a sink that has not started) reads as empty rather than failing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from rankwatch.sinks.storage import SqlStore, open_store

T = TypeVar("T")


class StoreReader:
    """Runs ``fn(store, *args)`` on a pool thread that owns its own store connection.

    >>> import os, tempfile
    >>> reader = StoreReader("sqlite:///" + os.path.join(tempfile.mkdtemp(), "empty.db"))
    >>> reader.call_sync(lambda store: store.schema_version())
    0
    >>> reader.close()
    """

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self._local = threading.local()
        self._stores: list[SqlStore] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rankwatch-ui-db")

    def _store(self) -> SqlStore:
        store: SqlStore | None = getattr(self._local, "store", None)
        if store is None:
            store = open_store(self.url, migrate=False)
            self._local.store = store
            with self._lock:
                self._stores.append(store)
        return store

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(store, *args)`` on a pool thread, waited for here (tests, doctests)."""
        return self._pool.submit(lambda: fn(self._store(), *args)).result()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(store, *args)`` on a pool thread, awaited without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._store(), *args))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for store in self._stores:
                store.close()
            self._stores.clear()
