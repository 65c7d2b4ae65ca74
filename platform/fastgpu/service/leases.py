"""Leases as callers see them: request, read, wait, list, release, bind, report a checkpoint.

Rules:
* a tenant sees and changes only its own leases; another tenant's lease answers 404;
* the admin requests a lease for a named tenant;
* a request is resolved once, here: the GPU type (named, chosen by ``perf``, or the only one),
  the duration (parsed, at least ``controller.min_duration_s``), the size limits;
* a request id makes a request idempotent: the retry returns the same lease;
* waits are async (:meth:`LeaseService.wait` awaits an event, holds no thread) and a tenant may
  hold at most ``api.max_waits_per_tenant`` of them at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio.to_thread
import pydantic_core
from pydantic import ValidationError

from fastgpu.auth import Principal
from fastgpu.domain.gpu_choice import choose_gpu_type
from fastgpu.domain.lease import LIVE_STATES, Lease, LeaseRequest, LeaseSpec, LeaseState
from fastgpu.errors import InvalidRequest, NotFound
from fastgpu.service.models import (
    LEASE_COLUMNS,
    LeaseCreate,
    LeaseOut,
    Page,
    decode_cursor,
    encode_cursor,
    lease_items,
    page_limit,
)
from fastgpu.store import TenantRecord
from fastgpu.validation import invalid_from, parse_duration

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller


class WaitLimiter(Protocol):
    """Caps open waits per key (``fastgpu.api.limits.WaitSlots`` is the server's)."""

    def hold(self, key: str) -> AbstractAsyncContextManager[None]: ...


T = TypeVar("T")
_HELD = (LeaseState.RESERVED, LeaseState.BOUND)
#: A long-poll re-reads the lease at least this often, whatever notifications it got.
_RECHECK_S = 1.0


class LeaseService:
    def __init__(self, ctl: Controller, wait_slots: WaitLimiter | None = None) -> None:
        self._ctl = ctl
        self._store = ctl.store
        self._slots = wait_slots

    # -- resolving a request ---------------------------------------------------------------
    def owner(self, p: Principal, tenant: str | None) -> TenantRecord:
        """The tenant a request acts for."""
        if p.is_admin:
            if tenant is None:
                raise InvalidRequest("tenant: the admin must name the tenant the lease is for")
            rec = self._ctl.tenant(tenant)
        else:
            if tenant is not None and tenant != p.name:
                raise NotFound(f"tenant {tenant!r} not found")
            rec = self._ctl.tenant(p.name)
        if rec is None:
            raise NotFound(f"tenant {tenant or p.name!r} not found")
        return rec

    def resolve(self, spec: LeaseSpec, owner: TenantRecord) -> LeaseRequest:
        cfg = self._ctl.config
        if spec.duration is None:
            duration_s = cfg.controller.default_duration_s
        else:
            duration_s = parse_duration(spec.duration)
        if duration_s < cfg.controller.min_duration_s:
            raise InvalidRequest(
                f"duration: got {spec.duration!r}; expected at least "
                f"{cfg.controller.min_duration_s:g} s"
            )
        gpu_type = spec.gpu_type
        # The types the tenant has a guarantee for.
        mine = [g for g, q in owner.spec.quotas.items() if q.nominal > 0]
        if gpu_type is None and spec.perf is None:
            # Unambiguous defaults only: the cluster's one type, or the tenant's one quota.
            if len(cfg.gpu_types) == 1:
                gpu_type = next(iter(cfg.gpu_types))
            elif len(mine) == 1:
                gpu_type = mine[0]
            else:
                raise InvalidRequest(
                    f"gpu_type: missing; expected one of {', '.join(sorted(cfg.gpu_types))} "
                    "(or a minimum perf)"
                )
        elif spec.perf is not None or gpu_type not in cfg.gpu_types:
            gpu_type = choose_gpu_type(
                cfg.gpu_types, gpu_type=gpu_type, perf=spec.perf, allowed=mine or None
            )
        limit = cfg.controller.max_gpus_per_lease
        if spec.gpus > limit:
            raise InvalidRequest(f"gpus: got {spec.gpus}; expected at most {limit} per lease")
        try:
            return LeaseRequest(
                gpus=spec.gpus,
                min_gpus=spec.min_gpus,
                gpu_type=gpu_type,
                duration_s=duration_s,
                preemptible=spec.preemptible,
                priority=spec.priority,
                strategy=spec.strategy,
                request_id=spec.request_id,
            )
        except ValidationError as exc:
            raise invalid_from(exc) from None

    # -- calls ------------------------------------------------------------------------------
    def visible(self, p: Principal, lease_id: str) -> Lease:
        if not isinstance(lease_id, str) or not lease_id or len(lease_id) > 64:
            raise NotFound(f"lease {lease_id!r} not found")
        lease = self._store.get_lease(lease_id)
        if lease is None or (not p.is_admin and lease.tenant_id != p.tenant_id):
            raise NotFound(f"lease {lease_id!r} not found")
        return lease

    def request(self, p: Principal, body: LeaseCreate) -> LeaseOut:
        """Store the request and schedule (no waiting; see :meth:`wait`)."""
        return LeaseOut.of(self.submit(p, body))

    def submit(self, p: Principal, body: LeaseCreate) -> Lease:
        """:meth:`request`, answering the stored lease itself (for :meth:`wait_on`)."""
        owner = self.owner(p, body.tenant)
        req = self.resolve(body, owner)
        cfg = self._ctl.config
        from fastgpu.controller.loop import new_lease_id

        lease = Lease(
            id=new_lease_id(),
            tenant=owner.name,
            tenant_id=owner.id,
            state=LeaseState.PENDING,
            gpus=req.gpus,
            min_gpus=req.min_gpus or req.gpus,
            gpu_type=req.gpu_type,
            strategy=req.strategy,
            duration_s=req.duration_s,
            preemptible=req.preemptible,
            priority=req.priority,
            price_per_hour=cfg.gpu_types[req.gpu_type].price_per_hour,
            created_at=self._ctl.clock(),
            request_id=req.request_id,
        )
        # One transaction checks the request id and the live-lease limit and inserts; the
        # controller then runs (or joins) a scheduling pass that includes this lease.
        stored, _ = self._ctl.submit(lease, max_live=cfg.controller.max_live_leases_per_tenant)
        return stored

    def get(self, p: Principal, lease_id: str) -> LeaseOut:
        return LeaseOut.of(self.visible(p, lease_id))

    async def wait(self, p: Principal, lease_id: str, wait_s: float) -> LeaseOut:
        """The lease once it holds its GPUs or ended, or as it is when ``wait_s`` ran out."""
        lease = await self.read(self.visible, p, lease_id)
        return await self.wait_on(p, lease, wait_s)

    async def wait_on(self, p: Principal, lease: Lease, wait_s: float) -> LeaseOut:
        """:meth:`wait` for a lease the caller already read and may see."""
        if wait_s <= 0 or _settled(lease):
            return LeaseOut.of(lease)
        if self._slots is None:
            return await self._wait(lease, wait_s)
        async with self._slots.hold(p.tenant_id or p.name):
            return await self._wait(lease, wait_s)

    async def _wait(self, lease: Lease, wait_s: float) -> LeaseOut:
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            if _settled(lease) or left <= 0:
                return LeaseOut.of(lease)
            ready = self._ready_future(lease)
            ok: bool | None = None
            if ready is not None:
                try:
                    ok = bool(
                        await asyncio.wait_for(asyncio.wrap_future(ready), min(left, _RECHECK_S))
                    )
                except (asyncio.TimeoutError, Exception):  # not ready yet, or the group went
                    ok = None
                if ok:
                    marked = await anyio.to_thread.run_sync(self._ctl.mark_ready, lease.id)
                    if marked is not None:
                        lease = marked
                        continue
            if ready is None or ok is False:
                # No readiness to await, or the reservation failed (the controller ends the
                # lease, with the reason): wait for the lease to change.
                async with self._ctl.watch.subscription(lease.id) as changed:
                    fresh = await self.read(self._store.get_lease, lease.id)
                    if fresh is not None and fresh.state == lease.state:
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(changed.wait(), min(left, _RECHECK_S))
            fresh = await self.read(self._store.get_lease, lease.id)
            if fresh is None:
                return LeaseOut.of(lease)
            lease = fresh

    def _ready_future(self, lease: Lease) -> concurrent.futures.Future[Any] | None:
        """Ray's readiness of an admitted lease's group, as a future (no thread held)."""
        if lease.state != LeaseState.ADMITTED or not lease.placement_group:
            return None
        get = getattr(self._ctl.backend, "ready_future", None)
        return None if get is None else get(lease.placement_group)

    def list(
        self,
        p: Principal,
        tenant: str | None = None,
        live: bool = False,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[LeaseOut]:
        return Page[LeaseOut].model_validate_json(self.list_json(p, tenant, live, limit, cursor))

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, a store read, from the event loop: in place where the store reads
        inline (:attr:`Store.reads_inline`), else in a worker thread."""
        if self._store.reads_inline:
            return fn(*args)
        return await anyio.to_thread.run_sync(fn, *args)

    def list_json(
        self,
        p: Principal,
        tenant: str | None = None,
        live: bool = False,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> bytes:
        """:meth:`list`'s page as the API's JSON, from stored rows (:func:`lease_items`)."""
        n = page_limit(limit)
        tenant_id = None
        if tenant is not None or not p.is_admin:
            tenant_id = self.owner(p, tenant).id
        after = decode_cursor(cursor)
        if after is not None:
            if not (isinstance(after, list) and len(after) == 2):
                raise InvalidRequest("cursor: expected the next_cursor of a previous page")
            after = (float(after[0]), str(after[1]))
        states = LIVE_STATES if live else None
        # The key (stored created_at, id) first: the cursor is the last row's.
        columns = ("created_at", "id", *LEASE_COLUMNS)
        rows = self._store.lease_rows(columns, tenant_id, states, limit=n + 1, after=after)
        more = len(rows) > n
        rows = rows[:n]
        next_cursor = encode_cursor(list(rows[-1][:2])) if more else None
        page = {"items": lease_items(row[2:] for row in rows), "next_cursor": next_cursor}
        return pydantic_core.to_json(page)

    def release(self, p: Principal, lease_id: str) -> LeaseOut:
        """Release (idempotent: releasing an ended lease returns it unchanged)."""
        self.visible(p, lease_id)
        return LeaseOut.of(self._ctl.release(lease_id))

    def bind(self, p: Principal, lease_id: str, workload: str) -> LeaseOut:
        self.visible(p, lease_id)
        return LeaseOut.of(self._ctl.bind(lease_id, workload))

    def checkpoint(self, p: Principal, lease_id: str) -> LeaseOut:
        self.visible(p, lease_id)
        return LeaseOut.of(self._ctl.checkpoint(lease_id))


def _settled(lease: Lease) -> bool:
    return lease.state.is_terminal or lease.state in _HELD
