"""Lease watches: long-polls wait on an asyncio event, not a thread.

The controller (any thread) calls :meth:`LeaseWatch.notify` after a lease changed; a waiter
(on the API's event loop) is woken through ``call_soon_threadsafe`` and re-reads the lease. A
wait holds no worker thread, so many open long-polls cost memory, not throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterable


class LeaseWatch:
    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    def notify(self, lease_ids: Iterable[str]) -> None:
        with self._mu:
            woken = [w for lid in lease_ids for w in self._waiters.pop(lid, [])]
        for loop, ev in woken:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # the loop closed (server stopping): nobody to wake
                pass

    @contextlib.asynccontextmanager
    async def subscription(self, lease_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set at the next notification of ``lease_id``. Subscribe, *then* re-read
        the lease, then wait: a change between the read and the wait is never missed."""
        ev = asyncio.Event()
        entry = (asyncio.get_running_loop(), ev)
        with self._mu:
            self._waiters.setdefault(lease_id, []).append(entry)
        try:
            yield ev
        finally:
            with self._mu:
                waiters = self._waiters.get(lease_id)
                if waiters and entry in waiters:
                    waiters.remove(entry)
                    if not waiters:
                        del self._waiters[lease_id]

    async def changed(self, lease_id: str, timeout_s: float) -> bool:
        """Wait until ``lease_id`` is notified or ``timeout_s`` passes; True if notified."""
        async with self.subscription(lease_id) as ev:
            try:
                await asyncio.wait_for(ev.wait(), timeout_s)
                return True
            except asyncio.TimeoutError:
                return False
