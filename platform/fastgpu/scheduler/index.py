"""Pending and running leases indexed for a scheduling cycle: per-tenant queues kept in queue
order, and running leases summed per tenant and GPU type.

Responsibility: hold, per tenant, its pending leases sorted by the queue order of the policy
(lease priority descending, then submit time, then id) and grouped by *shape* (GPU type,
minimum GPUs, strategy, priority, preemptible: everything a cycle's "known to be blocked" test
looks at), so that a cycle never sorts nor scans a long queue.

A caller that keeps its pending set between cycles (the simulator) maintains one
:class:`PendingIndex` with :meth:`PendingIndex.add` / :meth:`PendingIndex.remove` and passes it
as ``Snapshot.pending_index``; the live controller builds a fresh snapshot per cycle and passes
none, and the policy builds one with :meth:`PendingIndex.build` (same content, same decisions).

Invariant: ``queues[t]`` holds exactly the pending leases of tenant ``t`` in queue order, with
``tenant_keys(t)`` the matching sort keys (``keys[t]`` once built; a built index fills
``keys`` lazily), and ``shape_keys(t)[shape]`` the sorted keys of those of
one shape. The policy only reads an index (a built one fills its shape cache lazily).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from operator import attrgetter

from fastgpu.scheduler.snapshot import LeaseView

QueueKey = tuple[int, float, str]
#: (GPU type, minimum GPUs, strategy, priority, preemptible).
Shape = tuple[str, int, str, int, bool]


_SUBMIT_ORDER = attrgetter("submitted_at", "id")
_PRIORITY = attrgetter("priority")
#: The same tuple as :func:`shape_of`, computed in C.
_SHAPE = attrgetter("gpu_type", "min_gpus", "strategy", "priority", "preemptible")


def queue_key(lease: LeaseView) -> QueueKey:
    """Within a tenant: higher lease priority first, then submit order, then id."""
    return (-lease.priority, lease.submitted_at, lease.id)


def shape_of(lease: LeaseView) -> Shape:
    return (lease.gpu_type, lease.min_gpus, lease.strategy, lease.priority, lease.preemptible)


class PendingIndex:
    __slots__ = ("keys", "queues", "representative", "shapes")

    def __init__(self) -> None:
        self.queues: dict[str, list[LeaseView]] = {}
        self.keys: dict[str, list[QueueKey]] = {}
        #: Tenant -> shape -> sorted queue keys of its leases of that shape.
        self.shapes: dict[str, dict[Shape, list[QueueKey]]] = {}
        #: Tenant -> shape -> one lease of that shape (any: the policy reads only its shape);
        #: per tenant either complete or absent (built by :meth:`representatives`).
        self.representative: dict[str, dict[Shape, LeaseView]] = {}

    @classmethod
    def build(cls, pending: Iterable[LeaseView]) -> PendingIndex:
        """A fresh index (the policy's, per cycle, when the caller passes none). Key lists
        (per tenant and per shape) and representatives are left to :meth:`tenant_keys`,
        :meth:`shape_keys` and :meth:`representatives`, which build them if a cycle needs
        them (with reasons on, none does)."""
        idx = cls()
        by_tenant = idx.queues
        for lease in pending:
            q = by_tenant.get(lease.tenant)
            if q is None:
                q = by_tenant[lease.tenant] = []
            q.append(lease)
        for q in by_tenant.values():
            # Queue order, (-priority, submitted_at, id), by two stable sorts with C-level
            # keys (ids are unique, so the order is total and the same as one tuple sort).
            if len(q) > 1:
                q.sort(key=_SUBMIT_ORDER)
                q.sort(key=_PRIORITY, reverse=True)
        return idx

    def representatives(self, tenant: str) -> dict[Shape, LeaseView]:
        """Shape -> one pending lease of that shape, for the tenant's queue (``{}`` if none)."""
        reps = self.representative.get(tenant)
        if reps is None:
            q = self.queues.get(tenant)
            if q is None:
                return {}
            reps = self.representative[tenant] = dict(zip(map(_SHAPE, q), q, strict=True))
        return reps

    def tenant_keys(self, tenant: str) -> list[QueueKey]:
        """The queue keys of the tenant's leases, in queue order (``[]`` if none)."""
        keys = self.keys.get(tenant)
        if keys is None:
            q = self.queues.get(tenant)
            if q is None:
                return []
            keys = self.keys[tenant] = [(-lv.priority, lv.submitted_at, lv.id) for lv in q]
        return keys

    def shape_keys(self, tenant: str) -> dict[Shape, list[QueueKey]]:
        """Shape -> sorted queue keys of the tenant's leases of that shape."""
        shapes = self.shapes.get(tenant)
        if shapes is None:
            shapes = self.shapes[tenant] = {}
            pairs = zip(self.tenant_keys(tenant), self.queues.get(tenant, []), strict=True)
            for key, lease in pairs:
                shapes.setdefault(shape_of(lease), []).append(key)
        return shapes

    def add(self, lease: LeaseView) -> None:
        tenant = lease.tenant
        key = queue_key(lease)
        skeys = self.shape_keys(tenant).setdefault(shape_of(lease), [])
        skeys.insert(bisect_left(skeys, key), key)
        keys = self.tenant_keys(tenant)
        self.keys.setdefault(tenant, keys)
        pos = bisect_left(keys, key)
        keys.insert(pos, key)
        self.queues.setdefault(tenant, []).insert(pos, lease)
        reps = self.representative.get(tenant)
        if reps is not None:
            reps.setdefault(shape_of(lease), lease)

    def remove(self, lease: LeaseView) -> None:
        tenant = lease.tenant
        key = queue_key(lease)
        keys = self.tenant_keys(tenant)
        pos = bisect_left(keys, key)
        if pos >= len(keys) or keys[pos] != key:
            raise KeyError(f"lease {lease.id} is not in the pending index")
        shapes = self.shape_keys(tenant)
        del keys[pos]
        del self.queues[tenant][pos]
        shape = shape_of(lease)
        skeys = shapes[shape]
        del skeys[bisect_left(skeys, key)]
        reps = self.representative.get(tenant)
        if not skeys:
            del shapes[shape]
            if reps is not None:
                del reps[shape]
        if not keys:
            del self.keys[tenant], self.queues[tenant], self.shapes[tenant]
            self.representative.pop(tenant, None)

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())


class RunningIndex:
    """Running leases summed per tenant and GPU type, kept by the caller between cycles (or
    built per cycle by the policy with :meth:`build`); what step 1 of a cycle needs without a
    pass over every running lease.

    Invariant: ``by_type[t]`` holds the running leases of GPU type ``t`` in the order of
    ``Snapshot.running``; ``held``, ``used``, ``preemptible``, ``fixed_min``, ``fixed_held``
    and ``elastic_over_min`` are the sums over them (zero entries dropped). Replacing a lease's
    view keeps its position.
    """

    __slots__ = (
        "by_type",
        "elastic_over_min",
        "fixed_held",
        "fixed_min",
        "held",
        "incoming",
        "preemptible",
        "used",
    )

    def __init__(self) -> None:
        self.by_type: dict[str, dict[str, LeaseView]] = {}
        #: Tenant -> GPUs held, all types.
        self.held: dict[str, int] = {}
        #: GPU type -> tenant -> GPUs held.
        self.used: dict[str, dict[str, int]] = {}
        #: GPU type -> leases announced for preemption (``preempt_at`` set).
        self.incoming: dict[str, int] = {}
        #: GPU type -> tenant -> priority -> count of preemptible leases not yet announced.
        self.preemptible: dict[str, dict[str, dict[int, int]]] = {}
        #: GPU type -> count of leases not announced that hold more than their minimum.
        self.elastic_over_min: dict[str, int] = {}
        #: GPU type -> tenant -> GPUs of non-preemptible leases not announced: their minimum
        #: (what reclaim cannot shrink) and all they hold (nothing shrinks with elastic off).
        self.fixed_min: dict[str, dict[str, int]] = {}
        self.fixed_held: dict[str, dict[str, int]] = {}

    @classmethod
    def build(cls, running: Iterable[LeaseView]) -> RunningIndex:
        idx = cls()
        for lease in running:
            idx.add(lease)
        return idx

    def _count(self, lease: LeaseView, sign: int) -> None:
        g = sum(lease.placement.values())
        tenant = lease.tenant
        gpu_type = lease.gpu_type
        held = self.held.get(tenant, 0) + sign * g
        if held:
            self.held[tenant] = held
        else:
            self.held.pop(tenant, None)
        used = self.used.setdefault(gpu_type, {})
        u = used.get(tenant, 0) + sign * g
        if u:
            used[tenant] = u
        else:
            used.pop(tenant, None)
        if lease.preempt_at is not None:
            self.incoming[gpu_type] = self.incoming.get(gpu_type, 0) + sign
            return
        if lease.preemptible:
            prios = self.preemptible.setdefault(gpu_type, {}).setdefault(tenant, {})
            n = prios.get(lease.priority, 0) + sign
            if n:
                prios[lease.priority] = n
            else:
                del prios[lease.priority]
                if not prios:
                    owners = self.preemptible[gpu_type]
                    del owners[tenant]
                    if not owners:
                        del self.preemptible[gpu_type]
        else:
            _bump(self.fixed_min, gpu_type, tenant, sign * min(g, lease.min_gpus))
            _bump(self.fixed_held, gpu_type, tenant, sign * g)
        if g > lease.min_gpus:
            self.elastic_over_min[gpu_type] = self.elastic_over_min.get(gpu_type, 0) + sign

    def add(self, lease: LeaseView) -> None:
        self.by_type.setdefault(lease.gpu_type, {})[lease.id] = lease
        self._count(lease, +1)

    def replace(self, old: LeaseView, new: LeaseView) -> None:
        """``new`` (same id and GPU type) takes ``old``'s place."""
        self._count(old, -1)
        self.by_type[new.gpu_type][new.id] = new
        self._count(new, +1)

    def remove(self, lease: LeaseView) -> None:
        leases = self.by_type[lease.gpu_type]
        del leases[lease.id]
        self._count(lease, -1)
        if not leases:
            del self.by_type[lease.gpu_type]
            self.used.pop(lease.gpu_type, None)
            self.incoming.pop(lease.gpu_type, None)
            self.preemptible.pop(lease.gpu_type, None)
            self.elastic_over_min.pop(lease.gpu_type, None)
            self.fixed_min.pop(lease.gpu_type, None)
            self.fixed_held.pop(lease.gpu_type, None)


def _bump(table: dict[str, dict[str, int]], gpu_type: str, tenant: str, delta: int) -> None:
    """``table[gpu_type][tenant] += delta``, dropping zero entries."""
    if not delta:
        return
    per = table.setdefault(gpu_type, {})
    n = per.get(tenant, 0) + delta
    if n:
        per[tenant] = n
    else:
        del per[tenant]
        if not per:
            del table[gpu_type]
