"""Quota ledger of one cycle: Kueue's nominal / borrowing_limit / lending_limit, per GPU type.

Responsibility: answer "may tenant t hold k more GPUs of this type" in O(1), and keep the
answer consistent while the cycle admits, shrinks and preempts (simulate, then commit).

Vocabulary (per GPU type):

* ``used[t]``: GPUs tenant t holds (running leases, including ones announced for preemption).
* borrowed ``B = sum_t max(0, used[t] - nominal[t])``.
* lendable supply ``S = unowned + sum_t min(lending_limit[t], max(0, nominal[t] - used[t]))``
  where ``unowned = max(0, capacity - sum_t nominal[t])`` and an unset lending limit means
  "all of its idle nominal".

Invariants kept by every admission that :meth:`QuotaLedger.fits` allows:

* ``used[t] <= nominal[t] + borrowing_limit[t]`` (unset limit: unbounded; with borrowing
  disabled, ``used[t] <= nominal[t]``: static partitioning);
* ``B <= S``: others never consume more of a tenant's idle nominal than its lending limit. This is
  the same as "the non-lendable part of every tenant's idle nominal stays physically free", so
  a tenant can always get its non-lendable part back without preempting anyone.

A ledger can also be *short* (``B > S``): from the start of a cycle when a node was lost, or an
operator lowered a lending limit or raised a nominal, while borrowers held GPUs; within a cycle
once a make-room search holds room for a requester whose victims still count as used. Then a
test must not make it shorter: ``B - S`` after is at most ``max(0, B - S)`` now. Per tenant
``B - S`` counts ``max(used - nominal, -lend)`` (less the unowned GPUs), so what passes beyond
the plain ``B <= S`` is a tenant taking its own non-lendable idle nominal, which leaves the
shortfall as it is (the free GPUs cannot cover every tenant's non-lendable idle nominal then,
and go to the first to ask rather than to nobody), and a make-room what-if whose victims cover
its own requester, not the shortfall that earlier searches of the cycle left
(docs/design/scheduler.md, "A short ledger still gives a tenant its own non-lendable GPUs").

*Fixed* GPUs are those reclaim cannot take back: ``fixed[t]`` sums the minimum of tenant t's
non-preemptible leases. Fixed borrowing ``F = sum_t max(0, fixed[t] - nominal[t])`` is kept
within the unowned capacity (:meth:`QuotaLedger.fixed_fits`), so every tenant can always get
its nominal back by preempting or shrinking borrowers (docs/design/scheduler.md, "Only
preemptible leases borrow guaranteed GPUs").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fastgpu.config import QuotaSpec

_UNBOUNDED = 1 << 60


@dataclass
class _Limits:
    nominal: int
    borrow: int  # GPUs it may use beyond nominal (_UNBOUNDED when unset)
    lend: int  # of its idle nominal, how much others may use (nominal when unset)


class _LimitsTable(dict[str, _Limits]):
    """Tenant -> limits; a tenant without a quota for this type gets nominal 0 and may borrow
    without limit (inserted on first lookup, in C for the tenants present: the ledger's tests
    run tens of thousands of times a cycle)."""

    def __missing__(self, tenant: str) -> _Limits:
        lim = self[tenant] = _Limits(nominal=0, borrow=_UNBOUNDED, lend=0)
        return lim


def _balance_ok(borrowed: int, supply: int, nom: int, lend: int, old: int, new: int) -> bool:
    """``B - S <= max(0, B - S before)`` after a tenant (nominal ``nom``, lending limit
    ``lend``) goes from ``old`` to ``new`` GPUs, given B and S before: ``B <= S``, and a short
    ledger gets no shorter; conditionals instead of min/max calls (hot path)."""
    short = borrowed - supply if borrowed > supply else 0
    # Borrowed term max(0, used - nom), lent term min(lend, max(0, nom - used)).
    # Both written relative to a lent term of ``lend`` (idle nominal of at least ``lend``).
    if new > nom:
        borrowed += new - nom
        supply -= lend
    elif nom - new < lend:
        supply += nom - new - lend
    if old > nom:
        borrowed -= old - nom
        supply += lend
    elif nom - old < lend:
        supply -= nom - old - lend
    return borrowed - supply <= short


class QuotaLedger:
    """Used GPUs, B and S of one GPU type; mutable, private to one cycle."""

    def __init__(
        self,
        capacity: int,
        quotas: Mapping[str, QuotaSpec],
        used: Mapping[str, int],
        *,
        borrowing: bool = True,
        fixed: Mapping[str, int] | None = None,
    ) -> None:
        self.borrowing = borrowing
        self._limits = _LimitsTable()
        for tenant, q in quotas.items():
            self._limits[tenant] = _Limits(
                nominal=q.nominal,
                borrow=_UNBOUNDED if q.borrowing_limit is None else q.borrowing_limit,
                lend=q.nominal if q.lending_limit is None else min(q.lending_limit, q.nominal),
            )
        self.used: dict[str, int] = dict(used)
        self.unowned = max(0, capacity - sum(lim.nominal for lim in self._limits.values()))
        self.borrowed = 0
        self.supply = self.unowned
        for tenant in set(self._limits) | set(self.used):
            u = self.used.get(tenant, 0)
            self.borrowed += self._borrowed_term(tenant, u)
            self.supply += self._lent_term(tenant, u)
        self._start = (dict(self.used), self.borrowed, self.supply)
        #: Tenant -> GPUs of its non-preemptible leases (their minimum), and F (see above).
        self.fixed: dict[str, int] = dict(fixed or {})
        self.fixed_borrowed = sum(
            max(0, f - self._limits[t].nominal) for t, f in self.fixed.items()
        )

    def limits(self, tenant: str) -> _Limits:
        return self._limits[tenant]

    def nominal(self, tenant: str) -> int:
        return self._limits[tenant].nominal

    def ceiling(self, tenant: str) -> int:
        """Most GPUs the tenant may ever hold: nominal + borrowing limit (or nominal)."""
        lim = self._limits[tenant]
        if not self.borrowing:
            return lim.nominal
        return min(_UNBOUNDED, lim.nominal + lim.borrow)

    def _borrowed_term(self, tenant: str, used: int) -> int:
        return max(0, used - self._limits[tenant].nominal)

    def _lent_term(self, tenant: str, used: int) -> int:
        lim = self._limits[tenant]
        return min(lim.lend, max(0, lim.nominal - used))

    def within_nominal(self, tenant: str, extra: int) -> bool:
        return self.used.get(tenant, 0) + extra <= self._limits[tenant].nominal

    def fits(self, tenant: str, extra: int, release: Mapping[str, int] | None = None) -> bool:
        """Whether ``tenant`` may hold ``extra`` more GPUs once ``release`` (tenant -> GPUs)
        has been given back; nothing changes."""
        if release:
            trial = QuotaTrial(self, tenant, extra)
            for t, n in release.items():
                trial.release(t, n)
            return trial.ok()
        return self._fits_in(self.used, self.borrowed, self.supply, tenant, extra)

    def fitted_at_start(self, tenant: str, extra: int) -> bool:
        """Whether :meth:`fits` held before this cycle admitted anything (tells "others took
        the room first" apart from "never had the room")."""
        return self._fits_in(*self._start, tenant, extra)

    def _fits_in(
        self, used: Mapping[str, int], borrowed: int, supply: int, tenant: str, extra: int
    ) -> bool:
        """The quota test against given used GPUs, B and S (the hot path of a cycle: the
        ceiling inlined)."""
        lim = self._limits[tenant]
        old = used.get(tenant, 0)
        new = old + extra
        nom = lim.nominal
        if new > (nom + lim.borrow if self.borrowing else nom):  # ceiling
            return False
        return _balance_ok(borrowed, supply, nom, lim.lend, old, new)

    def room(self, tenant: str, upto: int) -> int:
        """The largest ``d <= upto`` with ``fits(tenant, d)`` (0 if none).

        ``fits`` is monotone in ``d`` (B - S never falls as a tenant takes more), so bisect."""
        if self.fits(tenant, upto):
            return max(upto, 0)  # the common answer, in one test
        lo, hi = 0, upto
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.fits(tenant, mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def fixed_ceiling(self, tenant: str) -> int:
        """Most GPUs the tenant may ever hold through non-preemptible leases: its nominal plus
        the unowned capacity (within :meth:`ceiling`)."""
        return min(self.ceiling(tenant), self._limits[tenant].nominal + self.unowned)

    def fixed_fits(self, tenant: str, extra: int) -> bool:
        """Whether a non-preemptible lease of ``extra`` GPUs keeps fixed borrowing within the
        unowned capacity."""
        nom = self._limits[tenant].nominal
        old = self.fixed.get(tenant, 0)
        grow = max(0, old + extra - nom) - max(0, old - nom)
        # Within nominal always fits, even if a lost node left F above the unowned capacity.
        return grow <= 0 or self.fixed_borrowed + grow <= self.unowned

    def add_fixed(self, tenant: str, delta: int) -> None:
        nom = self._limits[tenant].nominal
        old = self.fixed.get(tenant, 0)
        self.fixed_borrowed += max(0, old + delta - nom) - max(0, old - nom)
        self.fixed[tenant] = old + delta

    def add(self, tenant: str, delta: int) -> None:
        old = self.used.get(tenant, 0)
        new = old + delta
        self.borrowed += self._borrowed_term(tenant, new) - self._borrowed_term(tenant, old)
        self.supply += self._lent_term(tenant, new) - self._lent_term(tenant, old)
        self.used[tenant] = new


class QuotaTrial:
    """``QuotaLedger.fits(tenant, extra, released)`` kept up to date while ``released`` grows
    and shrinks one victim at a time (the preemption what-if): O(1) per step instead of a pass
    over every released tenant. Integer sums, so the answer equals ``fits`` exactly."""

    __slots__ = ("_delta", "borrowed", "ledger", "supply", "tenant")

    def __init__(self, ledger: QuotaLedger, tenant: str, extra: int) -> None:
        self.ledger = ledger
        self.tenant = tenant
        self._delta: dict[str, int] = {}
        self.borrowed = ledger.borrowed
        self.supply = ledger.supply
        self._shift(tenant, extra)

    def _shift(self, t: str, d: int) -> None:
        ledger = self.ledger
        base = ledger.used.get(t, 0)
        before = base + self._delta.get(t, 0)
        after = before + d
        self._delta[t] = after - base
        self.borrowed += ledger._borrowed_term(t, after) - ledger._borrowed_term(t, before)
        self.supply += ledger._lent_term(t, after) - ledger._lent_term(t, before)

    def release(self, t: str, gpus: int) -> None:
        self._shift(t, -gpus)

    def restore(self, t: str, gpus: int) -> None:
        self._shift(t, gpus)

    def ok(self) -> bool:
        t = self.tenant
        ledger = self.ledger
        new_used = ledger.used.get(t, 0) + self._delta.get(t, 0)
        short = max(0, ledger.borrowed - ledger.supply)  # a short ledger: no shorter
        return new_used <= ledger.ceiling(t) and self.borrowed - self.supply <= short
