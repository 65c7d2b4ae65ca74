"""Typed inputs and results of the services: one definition per shape, shared by the HTTP API
(request bodies and response models, hence the OpenAPI schema), the SDK and the CLI.

Inputs forbid unknown fields and use strict types (``true`` is not a count, ``"2"`` is not a
number). Results are what the API returns as JSON; times are ISO 8601 strings (UTC).
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from fastgpu.config import BudgetSpec, QuotaSpec, TenantSpec
from fastgpu.domain.lease import Lease, LeaseSpec
from fastgpu.domain.sweep import SweepSpec
from fastgpu.errors import InvalidRequest
from fastgpu.timeutil import iso
from fastgpu.validation import NAME_PATTERN, REQUEST_ID_PATTERN

T = TypeVar("T")
MAX_PAGE = 500
DEFAULT_PAGE = 100


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


RequestId = Field(
    default=None,
    min_length=1,
    max_length=128,
    pattern=REQUEST_ID_PATTERN,
    description="Idempotency key: a retry with the same key has the effect of one call.",
)


# ==== inputs ====================================================================================
class TenantCreate(_In):
    name: StrictStr = Field(pattern=NAME_PATTERN, description="Tenant name (unique, reusable).")
    quotas: dict[str, QuotaSpec] = Field(default_factory=dict, description="Quota per GPU type.")
    weight: StrictFloat | StrictInt = Field(
        default=1.0, gt=0, le=1000, description="Fair-share weight."
    )
    priority: StrictInt = Field(default=0, ge=-1000, le=1000, description="Tenant priority.")
    budget: BudgetSpec | None = Field(default=None, description="Spending cap per period.")
    queueing: Literal["strict_fifo", "best_effort_fifo"] = Field(
        default="best_effort_fifo", description="Queueing discipline within the tenant."
    )
    token_expires_in: StrictStr | StrictFloat | StrictInt | None = Field(
        default=None, description="The tenant token stops working after this ('90d'); unset: never."
    )
    request_id: StrictStr | None = RequestId

    def spec(self) -> TenantSpec:
        return TenantSpec.model_validate(
            self.model_dump(
                mode="json", include={"quotas", "weight", "priority", "budget", "queueing"}
            )
        )


class QuotaPatch(_In):
    """A partial quota change: only the fields given change (null: no limit)."""

    nominal: StrictInt | None = Field(default=None, ge=0, description="Guaranteed GPUs.")
    borrowing_limit: StrictInt | None = Field(
        default=None, ge=0, description="Most GPUs borrowed beyond nominal; null: no limit."
    )
    lending_limit: StrictInt | None = Field(
        default=None, ge=0, description="Most idle nominal GPUs lent; null: all of them."
    )


class TenantUpdate(_In):
    quotas: dict[str, QuotaPatch | None] | None = Field(
        default=None,
        description="Quota changes per GPU type, merged field by field (null removes one).",
    )
    weight: StrictFloat | StrictInt | None = Field(
        default=None, gt=0, le=1000, description="Fair-share weight."
    )
    priority: StrictInt | None = Field(default=None, ge=-1000, le=1000, description="Priority.")
    budget: BudgetSpec | None = Field(default=None, description="Spending cap per period.")
    queueing: Literal["strict_fifo", "best_effort_fifo"] | None = Field(
        default=None, description="Queueing discipline."
    )


class LeaseCreate(LeaseSpec):
    """A lease request over HTTP: the lease, and for whom and how long to wait."""

    tenant: StrictStr | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="The tenant the lease is for (admin only; tenants omit it).",
    )
    wait: StrictFloat | StrictInt = Field(
        default=0, ge=0, le=3600, description="Seconds to wait for the GPUs before answering."
    )


class TokenCreate(_In):
    label: StrictStr | None = Field(default=None, max_length=64, description="What it is for.")
    expires_in: StrictStr | StrictFloat | StrictInt | None = Field(
        default=None, description="The token stops working after this ('30d'); unset: never."
    )
    grace: StrictStr | StrictFloat | StrictInt | None = Field(
        default=None,
        description=(
            "Rotation only: how long the old tokens keep working ('1h'; 0 revokes them now); "
            "unset: the server's api.token_grace_s."
        ),
    )
    request_id: StrictStr | None = RequestId


class BindBody(_In):
    workload: StrictStr = Field(min_length=1, max_length=256, description="What runs on it.")


class JobCreate(_In):
    entrypoint: StrictStr = Field(min_length=1, max_length=4096, description="Command to run.")
    env: dict[str, StrictStr] = Field(
        default_factory=dict, max_length=64, description="Extra environment variables."
    )
    upload: StrictStr | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="The working directory: the sha256 an earlier POST /uploads answered.",
    )
    lease: LeaseSpec | None = Field(default=None, description="The lease the job runs on.")
    sweep: SweepSpec | None = Field(
        default=None, description="This job is a Ray Tune sweep on its lease (fastgpu.tune)."
    )
    request_id: StrictStr | None = RequestId


# ==== results ===================================================================================
class Page(_Out, Generic[T]):
    items: list[T] = Field(description="This page, oldest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null: this was the last."
    )


class LeaseOut(_Out):
    id: str
    tenant: str
    state: str
    gpus: int
    min_gpus: int
    held_gpus: int
    gpu_type: str
    strategy: str
    duration_s: float
    preemptible: bool
    priority: int
    placement_group: str | None
    placement_group_id: str | None
    nodes: list[str]
    reason: str | None
    reason_detail: str | None
    request_id: str | None
    created_at: str | None
    admitted_at: str | None
    reserved_at: str | None
    expires_at: str | None
    ended_at: str | None
    preempt_at: str | None
    workload: str | None
    last_checkpoint_at: str | None
    restarts: int

    @classmethod
    def of(cls, lease: Lease) -> LeaseOut:
        # Built from a stored lease, whose fields the domain already checked.
        return cls.model_construct(**lease.to_dict())


#: The stored columns :func:`lease_items` reads, in order: LeaseOut's fields but the derived
#: ``held_gpus`` (the length of ``nodes``).
_LEASE_FIELDS = tuple(LeaseOut.model_fields)
LEASE_COLUMNS = tuple(name for name in _LEASE_FIELDS if name != "held_gpus")
_HELD = _LEASE_FIELDS.index("held_gpus")
_TIMES = tuple(i for i, name in enumerate(LEASE_COLUMNS) if name.endswith("_at"))
_NODES = LEASE_COLUMNS.index("nodes")
_PREEMPTIBLE = LEASE_COLUMNS.index("preemptible")


@functools.lru_cache(maxsize=4096)
def _nodes(stored: str | None) -> tuple[str, ...]:
    return tuple(json.loads(stored or "[]"))


def lease_items(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """LeaseOut objects as plain dicts, straight from stored rows of :data:`LEASE_COLUMNS`:
    the list's read path, without a domain object or a model per row (100 rows: 0.2 ms, 2.6 ms
    through ``Lease`` and :meth:`LeaseOut.of`). Serialised as they are (``nodes`` is a tuple, a
    JSON array); a unit test holds them equal to ``LeaseOut.of(lease).model_dump()``."""
    out = []
    for row in rows:
        values = list(row)
        for i in _TIMES:
            values[i] = iso(values[i])
        nodes = values[_NODES] = _nodes(values[_NODES])
        values[_PREEMPTIBLE] = bool(values[_PREEMPTIBLE])
        values.insert(_HELD, len(nodes))
        out.append(dict(zip(_LEASE_FIELDS, values, strict=True)))
    return out


class TenantOut(_Out):
    id: str
    name: str
    quotas: dict[str, QuotaSpec]
    weight: float
    priority: int
    budget: BudgetSpec | None
    queueing: str
    created_at: str | None


class TokenOut(_Out):
    id: str
    principal: str
    is_admin: bool
    created_at: str | None
    expires_at: str | None
    label: str | None


class TokenIssued(TokenOut):
    token: str | None = Field(
        description="The token itself: shown this once, stored hashed (null on a retry)."
    )
    note: str | None = None


class TenantCreated(TenantOut):
    token: str | None = Field(description="The tenant's token, shown this once.")
    note: str | None = None


class WhoAmI(_Out):
    principal: str
    is_admin: bool
    tenant: str | None
    tenant_id: str | None
    token_id: str | None
    token_expires_at: str | None
    storage_root: str | None = None
    #: The tenant's folder under storage_root, named by its id (a re-created name never
    #: inherits files).
    storage_key: str | None = None
    runs_dir: str | None = None
    #: Always true: each tenant's work runs in its own Ray cluster (workloads select a lease's
    #: raylets by the label fastgpu.io/lease). Kept since the shared cluster was removed: an
    #: older SDK's ``run_on_lease`` selects the raylets only when it reads true.
    tenant_clusters: bool = True


class ClusterOut(_Out):
    """How a tenant reaches its own Ray cluster (``fastgpu connect``)."""

    tenant: str
    address: str = Field(description="The cluster's GCS address, for RAY_ADDRESS.")
    dashboard_url: str = Field(description="Its dashboard and Jobs API (`ray job submit`).")
    ray_token: str = Field(
        description="Its Ray token (valid on this cluster only); keep it in a 0600 file."
    )
    isolation: str = Field(description="os_users, or single_user (tenants not isolated).")


class UsageOut(_Out):
    tenant: str
    gpu_type: str
    gpu_seconds: float
    gpu_hours: float
    cost: float


class UsageReportRow(_Out):
    """One group of a usage report; a field the report does not group by is null."""

    tenant: str | None = Field(default=None, description="Tenant name (grouped by tenant).")
    gpu_type: str | None = Field(default=None, description="GPU type (grouped by gpu_type).")
    workload: str | None = Field(
        default=None,
        description="What held the GPUs: 'train:<run>', 'job:<id>', 'lease' for a plain lease; "
        "null for records written before the ledger named workloads.",
    )
    period: str | None = Field(default=None, description="Bucket start, ISO 8601 UTC.")
    gpu_seconds: float = Field(description="GPU-seconds held in the group, clipped to range.")
    gpu_hours: float = Field(description="gpu_seconds / 3600.")
    cost: float = Field(description="Sum of GPU-hours x each record's price_per_hour.")


class UsageReportOut(_Out):
    since: str = Field(description="Start of the range (inclusive), ISO 8601 UTC.")
    until: str = Field(description="End of the range (exclusive; at most now).")
    by: list[str] = Field(description="Group columns, of tenant, gpu_type, workload.")
    period: str | None = Field(description="hour, day, week (ISO, Monday) or month; UTC.")
    rows: list[UsageReportRow]
    gpu_hours: float = Field(description="Total GPU-hours of the rows.")
    cost: float = Field(description="Total cost of the rows.")


class StatementLine(_Out):
    gpu_type: str
    workload: str | None
    gpu_hours: float
    cost: float


class TenantStatement(_Out):
    tenant: str
    lines: list[StatementLine] = Field(description="One line per GPU type and workload.")
    gpu_hours: float = Field(description="Total GPU-hours of the period.")
    cost: float = Field(description="Total cost of the period.")


class StatementOut(_Out):
    period: str = Field(description="day, week or month.")
    at: str = Field(description="The period asked for, as given (2026-11 for a month).")
    since: str
    until: str
    tenants: list[TenantStatement]


class GpuTypeStatus(_Out):
    gpu_type: str
    price_per_hour: float
    perf: float | None = None
    total: int = 0
    allocated: int = 0
    pending: int = 0
    free: int = 0
    nodes: int = 0


class TenantStatus(_Out):
    tenant: str
    gpu_type: str
    nominal: int
    borrowing_limit: int | None
    lending_limit: int | None
    allocated: int = 0
    pending: int = 0
    leases: int = 0


class StatusOut(_Out):
    time: str | None
    gpu_types: list[GpuTypeStatus]
    tenants: list[TenantStatus]


class JobOut(_Out):
    id: str
    tenant: str | None
    status: str
    entrypoint: str | None
    message: str | None
    start_time: int | float | None
    end_time: int | float | None
    lease: LeaseOut | None = None
    sweep: str | None = Field(default=None, description="The sweep's name, if it is one.")


class JobLogs(_Out):
    id: str
    logs: str


class UploadOut(_Out):
    sha256: str
    bytes: int
    files: int


class Deleted(_Out):
    name: str
    deleted: bool


class Health(_Out):
    ok: bool
    leader: bool
    version: str


# ==== helpers ===================================================================================
def page_limit(limit: Any) -> int:
    if limit is None:
        return DEFAULT_PAGE
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit: got {limit!r}; expected an integer from 1 to {MAX_PAGE}")
    return limit


def encode_cursor(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Any:
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, TypeError):
        raise InvalidRequest(
            f"cursor: got {cursor[:40]!r}; expected the next_cursor of a previous page"
        ) from None


def paginate(
    items: list[T], key: Callable[[T], list[Any]], limit: int | None, cursor: str | None
) -> Page[T]:
    """A page of an in-memory list sorted by ``key`` (a JSON-able list), after ``cursor``."""
    n = page_limit(limit)
    after = decode_cursor(cursor)
    if after is not None and not isinstance(after, list):
        raise InvalidRequest("cursor: expected the next_cursor of a previous page")
    ordered = sorted(items, key=key)
    if after is not None:
        ordered = [x for x in ordered if key(x) > after]
    page = ordered[: n + 1]
    more = len(page) > n
    page = page[:n]
    return Page[T](items=page, next_cursor=encode_cursor(key(page[-1])) if more else None)
