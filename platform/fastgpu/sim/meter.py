"""Time-weighted accounting of one simulation: what the metrics are made from.

Between two events the cluster is constant, so every figure is a product of what is held (or
waiting) and the time that passed: busy GPU-seconds (all of it, and inside the trace's
window), each tenant's GPU-seconds and decayed usage (:mod:`fastgpu.domain.usage`), guarantee
violations (GPU-seconds a tenant waited for demand its idle nominal covered), and GPU-seconds
per time bucket (utilisation and per-tenant share series).

The meter owns these sums and nothing else; the simulation owns who holds and waits for what
and hands it over at each :meth:`UsageMeter.advance`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fastgpu.domain.usage import decay_step


class UsageMeter:
    def __init__(
        self,
        tenants: Iterable[str],
        nominal: Mapping[str, int],
        half_life_s: float,
        bucket_s: float,
        window_end: float,
    ) -> None:
        tenants = list(tenants)
        self.nominal = dict(nominal)
        self.half_life_s = half_life_s
        self.bucket_s = bucket_s
        self.window_end = window_end
        self.busy = 0.0
        self.busy_window = 0.0
        self.decayed = dict.fromkeys(tenants, 0.0)
        self.tenant_gpu_s = dict.fromkeys(tenants, 0.0)
        self.violation = dict.fromkeys(tenants, 0.0)
        self.util_buckets: list[float] = []
        self.share_buckets: dict[str, list[float]] = {t: [] for t in tenants}

    def advance(
        self,
        now: float,
        t: float,
        held: int,
        used: Mapping[str, int],
        demand: Mapping[str, int],
        pending_sizes: Mapping[str, Mapping[int, int]],
    ) -> None:
        """Account for ``[now, t)`` with ``held`` GPUs in use, ``used`` per tenant, ``demand``
        (GPUs waiting) and the sizes of the waiting jobs per tenant."""
        dt = t - now
        self.busy += held * dt
        if now < self.window_end:
            self.busy_window += held * (min(t, self.window_end) - now)
        # Decayed usage: the step's factors once for every tenant.
        keep, gain = decay_step(dt, self.half_life_s)
        for tenant, u in used.items():
            self.decayed[tenant] = self.decayed[tenant] * keep + u * gain
            if u:
                self.tenant_gpu_s[tenant] += u * dt
            d = demand[tenant]
            if d:
                # Only demand the guarantee covers: a pending job that fits in what is left
                # of the tenant's nominal (a job wider than that would be borrowing).
                room = self.nominal[tenant] - u
                sizes = pending_sizes[tenant]
                if room > 0 and sizes and min(sizes) <= room:
                    self.violation[tenant] += min(room, d) * dt
        # Buckets: allocated GPU-seconds per bucket (utilisation and per-tenant share).
        b0 = int(now // self.bucket_s)
        b1 = int(t // self.bucket_s)
        need = b1 + 1
        if len(self.util_buckets) < need:
            extra = need - len(self.util_buckets)
            self.util_buckets.extend([0.0] * extra)
            for series in self.share_buckets.values():
                series.extend([0.0] * extra)
        for b in range(b0, b1 + 1):
            lo = max(now, b * self.bucket_s)
            hi = min(t, (b + 1) * self.bucket_s)
            if hi > lo and held:
                self.util_buckets[b] += held * (hi - lo)
                for tenant, u in used.items():
                    if u:
                        self.share_buckets[tenant][b] += u * (hi - lo)

    def series(self, buckets: list[float], capacity: int) -> list[float]:
        """A bucket series as a fraction of the cluster."""
        return [b / (self.bucket_s * capacity) for b in buckets]
