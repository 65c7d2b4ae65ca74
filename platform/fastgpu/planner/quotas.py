"""Guaranteed quotas against the planned reserved capacity.

A tenant's nominal quota is a guarantee: the platform must be able to give those GPUs whenever
the tenant has demand. Capacity bought per step (on demand, spot) may not be there when the
guarantee is called, so the check compares, per GPU type, the sum of the tenants' nominal
quotas with the reserved GPUs of the plan's leanest term window. A type the plan does not buy
counts as 0 reserved.
"""

from __future__ import annotations

from fastgpu.config import PlatformConfig
from fastgpu.planner.model import Plan, QuotaFinding


def reserved_gpus(plan: Plan, gpu_type: str) -> float:
    """Reserved GPUs of ``gpu_type`` in the plan's leanest window (0 if none)."""
    line = plan.line(gpu_type, "reserved")
    if line is None or not line.reserved_windows:
        return 0.0
    return min(line.reserved_windows) * line.gpus_per_node


def check_quotas(plan: Plan, config: PlatformConfig) -> list[QuotaFinding]:
    """One finding per GPU type whose guaranteed quotas exceed the planned reservation."""
    found = []
    for gpu_type in sorted(config.gpu_types):
        tenants = {
            name: tenant.quota(gpu_type).nominal
            for name, tenant in sorted(config.tenants.items())
            if tenant.quota(gpu_type).nominal > 0
        }
        guaranteed = sum(tenants.values())
        reserved = reserved_gpus(plan, gpu_type)
        if guaranteed <= reserved + 1e-9:
            continue
        who = ", ".join(f"{t} {n}" for t, n in tenants.items())
        bought = any(line.gpu_type == gpu_type for line in plan.lines)
        where = "reserves" if bought else "does not buy the type, so reserves"
        found.append(
            QuotaFinding(
                gpu_type=gpu_type,
                guaranteed_gpus=guaranteed,
                reserved_gpus=reserved,
                tenants=tenants,
                message=(
                    f"{gpu_type}: tenants are guaranteed {guaranteed} GPUs ({who}) but the plan "
                    f"{where} {reserved:g} in its leanest window; {guaranteed - reserved:g} "
                    "guaranteed GPUs would rest on on-demand or spot capacity. Reserve at least "
                    "the guarantees (a larger reserved max_nodes, a cheaper reserved price) or "
                    "lower the tenants' nominal quotas"
                ),
            )
        )
    return found


__all__ = ["check_quotas", "reserved_gpus"]
