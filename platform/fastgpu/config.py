"""Platform configuration: GPU types and prices, tenants and quotas, where state lives.

Loaded from YAML into pydantic v2 models with ``extra="forbid"`` and a description on every
field, so the JSON schema (``fastgpu config schema``) documents the file. Quota fields keep
Kueue's meanings (see :class:`QuotaSpec`). An invalid file raises :class:`ConfigError` naming the
field, the value and what is expected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fastgpu.errors import ConfigError
from fastgpu.validation import (
    GPU_TYPE_PATTERN,
    MAX_DURATION_S,
    MAX_GPUS_PER_LEASE,
    MIN_DURATION_S,
    NAME_PATTERN,
    describe_validation_error,
)

DEFAULT_API_PORT = 8470
#: Why a config of the shared cluster (v1: one Ray cluster for every tenant, which did not
#: isolate them) is refused, and what to do instead.
SHARED_CLUSTER_REMOVED = (
    "the shared cluster of v1 was removed: every tenant's leases run in its own Ray cluster, "
    "carved from `pool` (set pool.hosts, or let `fastgpu up --gpus N` describe this machine's "
    "GPUs)"
)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuTypeSpec(_Spec):
    """One GPU type ("flavor" in Kueue's words) offered by the cluster."""

    price_per_hour: float = Field(
        ge=0,
        le=10_000,
        description="Price of one GPU of this type for one hour, in currency units.",
    )
    cpus_per_gpu: float = Field(
        default=0.0,
        ge=0,
        le=256,
        description="CPUs reserved next to each GPU of a lease (0: reserve GPUs only).",
    )
    memory_per_gpu_gb: float = Field(
        default=0.0,
        ge=0,
        le=4096,
        description="Host memory (GiB) reserved next to each GPU of a lease (0: none).",
    )
    perf: float = Field(
        default=0.0,
        ge=0,
        le=1e9,
        description=(
            "Relative per-GPU performance, e.g. a TFLOPS-like figure (dense BF16 TFLOPS: A100 "
            "312, H100 989); any scale works if every type uses the same one. A lease asking for "
            "`perf` gets the cheapest type whose figure is at least that. Unset (0): unrated, so "
            "a perf request never lands on a GPU whose speed nobody stated (it is still leased "
            "by name), and configs written before this field stay valid."
        ),
    )


class QuotaSpec(_Spec):
    """A tenant's quota for one GPU type, with Kueue's meanings."""

    nominal: int = Field(
        ge=0,
        le=1_000_000,
        description="GPUs guaranteed to the tenant whenever it has demand for them.",
    )
    borrowing_limit: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description=(
            "How many idle GPUs beyond nominal the tenant may borrow from others. "
            "Unset: no limit; 0: never borrows."
        ),
    )
    lending_limit: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description=(
            "How many of the tenant's idle nominal GPUs others may borrow. "
            "Unset: all of them; 0: lends nothing."
        ),
    )


class BudgetSpec(_Spec):
    """A cap on what a tenant may spend per period; at least one limit must be set."""

    period: Literal["day", "week", "month"] = Field(
        default="month", description="Length of the budget period (calendar, UTC)."
    )
    gpu_hours: float | None = Field(
        default=None, gt=0, le=1e9, description="GPU-hours the tenant may use per period."
    )
    money: float | None = Field(
        default=None, gt=0, le=1e12, description="Money the tenant may spend per period."
    )
    warn_at: tuple[float, ...] = Field(
        default=(50.0, 80.0, 100.0),
        max_length=10,
        description=(
            "Warning thresholds, in percent of the budget spent (each > 0 and <= 100, no "
            "repeats); a warning event is recorded once per period per threshold when spend "
            "first reaches it. Empty: no warnings."
        ),
    )
    action: Literal["queue", "stop"] = Field(
        default="queue",
        description=(
            "What happens at the cap (100 %). queue: new requests wait (budget_exhausted) and "
            "running leases run on; stop: the same, and the tenant's running preemptible leases "
            "are preempted with the scheduler's grace_s (non-preemptible leases run to their "
            "end and are reported in the budget's events)."
        ),
    )

    @model_validator(mode="after")
    def _one_limit(self) -> BudgetSpec:
        if self.gpu_hours is None and self.money is None:
            raise ValueError("a budget with gpu_hours, money or both set")
        return self

    @field_validator("warn_at")
    @classmethod
    def _thresholds(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        for pct in value:
            if not 0 < pct <= 100:
                raise ValueError(f"got {pct:g}; expected percentages > 0 and <= 100, e.g. [50, 80]")
        if len(set(value)) != len(value):
            raise ValueError(f"got {list(value)}; expected no repeated threshold")
        return tuple(sorted(value))


class TenantSpec(_Spec):
    """What a tenant (team, customer) is entitled to."""

    quotas: dict[str, QuotaSpec] = Field(
        default_factory=dict,
        description="Quota per GPU type name; a GPU type not listed has nominal 0.",
    )
    weight: float = Field(
        default=1.0, gt=0, le=1000, description="Share weight in fair sharing across tenants."
    )
    priority: int = Field(
        default=0, ge=-1000, le=1000, description="Tenant priority; higher is more important."
    )
    budget: BudgetSpec | None = Field(default=None, description="Spending cap; unset: none.")
    queueing: Literal["strict_fifo", "best_effort_fifo"] = Field(
        default="best_effort_fifo",
        description=(
            "strict_fifo: a blocked head blocks the tenant's queue; best_effort_fifo: smaller "
            "requests behind a blocked head may start."
        ),
    )

    def quota(self, gpu_type: str) -> QuotaSpec:
        return self.quotas.get(gpu_type, QuotaSpec(nominal=0))


class ControllerSettings(_Spec):
    """Timing and limits of the controller loop in the server."""

    tick_interval_s: float = Field(
        default=0.25,
        gt=0,
        le=60,
        description="How often the controller schedules, expires and reconciles (seconds).",
    )
    reconcile_interval_s: float = Field(
        default=2.0, gt=0, le=600, description="How often the store is compared with Ray."
    )
    default_duration_s: float = Field(
        default=3600, gt=0, le=MAX_DURATION_S, description="Lease duration when none is given."
    )
    max_gpus_per_lease: int = Field(
        default=MAX_GPUS_PER_LEASE, ge=1, le=MAX_GPUS_PER_LEASE, description="Largest lease."
    )
    min_duration_s: float = Field(
        default=MIN_DURATION_S,
        ge=MIN_DURATION_S,
        le=MAX_DURATION_S,
        description="Shortest lease duration anyone may ask for (seconds).",
    )
    max_live_leases_per_tenant: int = Field(
        default=1000, ge=1, le=1_000_000, description="Most leases a tenant may have not ended."
    )
    lease_retention_s: float = Field(
        default=30 * 24 * 3600,
        ge=60,
        description=(
            "How long an ended lease stays listed before it is purged (usage records, which "
            "bills are made from, are kept)."
        ),
    )
    purge_interval_s: float = Field(
        default=600, gt=0, description="How often ended leases past retention are purged (s)."
    )
    pass_share: float = Field(
        default=1 / 3,
        gt=0,
        le=1,
        description=(
            "Under a stream of writes, the largest share of the server's time scheduling "
            "passes may take: after a pass of t seconds, the next one starts no sooner than "
            "t / pass_share after it started (and at most 50 ms after it ended), and every "
            "write arriving meanwhile joins it. A lone write never waits. 1 runs passes back "
            "to back."
        ),
    )


class SchedulerSettings(_Spec):
    """Which policy admits leases, and its knobs (see docs/design/scheduler.md)."""

    policy: Literal["fair_share", "quota"] = Field(
        default="fair_share",
        description=(
            "fair_share: weighted fair sharing with borrowing, preemption, backfill, budgets and "
            "elastic leases; quota: nominal quota and capacity only, first come first served."
        ),
    )
    usage_half_life_s: float = Field(
        default=7 * 24 * 3600,
        gt=0,
        le=365 * 24 * 3600,
        description="Half-life of the decayed usage that ranks tenants in fair sharing (s).",
    )
    min_runtime_s: float = Field(
        default=300, ge=0, le=7 * 24 * 3600, description="No preemption before this runtime (s)."
    )
    min_runtime_backoff: int = Field(
        default=5,
        ge=0,
        le=20,
        description=(
            "A lease whose workload was preempted k times in the last day is protected for "
            "min_runtime_s * 2**min(k, this), so a workload chosen again and again still reaches "
            "a checkpoint; 0 turns it off."
        ),
    )
    grace_s: float = Field(
        default=30,
        ge=0,
        le=3600,
        description="Seconds between announcing a preemption and taking the GPUs back.",
    )
    backfill: bool = Field(default=True, description="Let small requests start around a big one.")
    borrowing: bool = Field(default=True, description="Let tenants borrow idle GPUs.")
    preemption: bool = Field(default=True, description="Preempt for reclaim and priority.")
    elastic: bool = Field(default=True, description="Grow and shrink elastic leases.")
    borrow_non_preemptible: bool = Field(
        default=False,
        description=(
            "Let non-preemptible leases borrow GPUs behind other tenants' nominal quota. Reclaim "
            "cannot take those back, so a tenant below nominal may wait until such a lease ends. "
            "Off: non-preemptible leases hold at most nominal plus unowned capacity."
        ),
    )
    reject_over_budget: bool = Field(
        default=False,
        description="A tenant over budget: reject new requests (true) or queue them (false).",
    )
    usage_refresh_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="How often decayed usage and budget spend are recomputed from the store (s).",
    )


class ApiSettings(_Spec):
    """Where the HTTP control API listens."""

    host: str = Field(
        default="127.0.0.1",
        description="Listen address; anything but loopback exposes the API beyond this machine.",
    )
    port: int = Field(default=DEFAULT_API_PORT, ge=1, le=65535, description="Listen port.")
    max_body_bytes: int = Field(
        default=64 * 1024, ge=1024, le=16 * 1024 * 1024, description="Largest JSON request body."
    )
    max_upload_bytes: int = Field(
        default=20 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest zipped working directory a job may upload.",
    )
    upload_retention_s: float = Field(
        default=24 * 3600,
        ge=60,
        le=365 * 24 * 3600,
        description=(
            "How long an unpacked upload is kept after it was last uploaded (s). A job needs it "
            "only while it is submitted (Ray copies the folder into the job's cluster); the SDK "
            "uploads again before every submission."
        ),
    )
    rate_per_s: float = Field(
        default=50.0, gt=0, description="Requests per second each token may make, on average."
    )
    burst: int = Field(default=200, ge=1, description="Requests a token may make at once.")
    max_waits_per_tenant: int = Field(
        default=32, ge=1, description="Open long-polls (waits) one tenant may hold at once."
    )
    write_threads: int = Field(
        default=8,
        ge=1,
        le=256,
        description=(
            "Threads for calls that change state (they queue for the controller); reads have "
            "their own, so they never wait behind writes."
        ),
    )
    token_grace_s: float = Field(
        default=3600,
        ge=0,
        le=30 * 24 * 3600,
        description=(
            "After a token rotation, how long the old tokens keep working (running jobs hold "
            "them); 0 revokes them at once."
        ),
    )
    metrics_public: bool = Field(
        default=False,
        description=(
            "Serve GET /metrics (Prometheus text format) without a token. Allowed only while "
            "`host` is a loopback address, so only this machine can read it; otherwise (the "
            "default) a scrape needs the admin token."
        ),
    )

    @model_validator(mode="after")
    def _metrics_public_on_loopback(self) -> ApiSettings:
        import ipaddress

        if not self.metrics_public:
            return self
        try:
            loopback = ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:  # a host name: only 'localhost' is known to be this machine
            loopback = self.host == "localhost"
        if not loopback:
            raise ValueError(
                f"host on loopback (127.0.0.1, ::1 or localhost) when metrics_public is true, "
                f"not {self.host!r}: set metrics_public to false and scrape /metrics with the "
                "admin token, or listen on loopback"
            )
        return self


class HostSpec(_Spec):
    """One GPU host of the pool: its GPU type and the device ids it lends to tenants."""

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,30}$",
        description="Host name, unique in the pool; the raylets' `fastgpu.io/host` label.",
    )
    gpu_type: str = Field(description="The GPU type of every device on this host.")
    devices: list[int] = Field(
        min_length=1,
        max_length=64,
        description=(
            "Device ids lent to tenants (CUDA ids on a GPU host; logical ids otherwise); "
            "disjoint between hosts of this machine."
        ),
    )

    @model_validator(mode="after")
    def _distinct(self) -> HostSpec:
        if len(set(self.devices)) != len(self.devices) or min(self.devices) < 0:
            raise ValueError(f"host {self.name}: device ids must be distinct and >= 0")
        return self


class AgentPoolSettings(_Spec):
    """Hosts run by agents (`fastgpu agent`, issue 14): how often they report, when they are
    lost."""

    heartbeat_s: float = Field(
        default=2.0, gt=0, le=300, description="How often each agent heartbeats (seconds)."
    )
    lost_after_s: float = Field(
        default=6.0,
        gt=0,
        le=3600,
        description=(
            "A host whose agent was silent this long is LOST: its leases shrink or fail by "
            "policy. At least 2 heartbeats, so one late heartbeat never loses a host."
        ),
    )

    @model_validator(mode="after")
    def _two_beats(self) -> AgentPoolSettings:
        if self.lost_after_s < 2 * self.heartbeat_s:
            raise ValueError(
                f"pool.agents.lost_after_s {self.lost_after_s:g} must be >= 2 x heartbeat_s "
                f"({2 * self.heartbeat_s:g})"
            )
        return self


class PoolSpec(_Spec):
    """The GPU hosts tenants' clusters are carved from (issue 9). Unset: the hosts that
    `fastgpu up --gpus N --nodes M --gpu-type T` describes."""

    hosts: list[HostSpec] = Field(min_length=1, description="The hosts of this machine's pool.")
    agents: AgentPoolSettings | None = Field(
        default=None,
        description=(
            "Set: every host is run by an agent (`fastgpu agent` on it; `fastgpu host add` "
            "issues its token); unset: the hosts are this machine's devices."
        ),
    )

    @model_validator(mode="after")
    def _disjoint(self) -> PoolSpec:
        names = [h.name for h in self.hosts]
        if len(set(names)) != len(names):
            raise ValueError("pool.hosts: host names must be unique")
        seen: set[int] = set()
        for host in self.hosts if self.agents is None else ():  # agents: a machine each
            if seen & set(host.devices):
                raise ValueError(
                    f"pool.hosts: host {host.name} reuses device ids "
                    f"{sorted(seen & set(host.devices))}; each device belongs to one host"
                )
            seen |= set(host.devices)
        return self


class TenantClusterSettings(_Spec):
    """How tenants' own Ray clusters are run: each tenant's leases are raylets of its own
    cluster, carved from ``pool``.

    ``enabled`` is what is left of the switch to the shared cluster of v1 (one Ray cluster for
    every tenant, which did not isolate them), removed since. It stays a field, so configs that
    say ``enabled: true`` (every config ``fastgpu up`` saved did) keep loading; ``false`` is
    refused, saying what to do instead, rather than starting a platform other than the one
    written down.
    """

    enabled: bool = Field(
        default=True,
        description=(
            "Always true (each tenant's leases run in its own Ray cluster carved from `pool`); "
            "`false`, the shared cluster of v1, was removed and is refused."
        ),
    )
    isolation: Literal["auto", "os_users", "single_user"] = Field(
        default="auto",
        description=(
            "os_users: each tenant's processes run as its own system user (needs root); "
            "single_user: as the server's user, which isolates far less (said at start-up); "
            "auto: os_users when the server runs as root."
        ),
    )
    idle_timeout_s: float = Field(
        default=600.0, ge=0, description="Stop a tenant's cluster after it held no lease this long."
    )
    head_cpus: int = Field(
        default=1, ge=0, le=64, description="Logical CPUs of a tenant's head (job drivers)."
    )
    root: str | None = Field(
        default=None,
        description=(
            "Where tenants' cluster dirs (Ray token, temp dir) live; short, as Ray's socket "
            "paths are length-limited. Unset: $RAY_TMPDIR or /tmp, then fg<platform id>."
        ),
    )
    python: str | None = Field(
        default=None,
        description=(
            "An interpreter tenants' users can execute (same minor version as the server's); "
            "unset: the server's own in single_user mode, /usr/bin/python3.<minor> otherwise."
        ),
    )

    @field_validator("enabled")
    @classmethod
    def _no_shared_cluster(cls, enabled: bool) -> bool:
        if not enabled:
            raise ValueError(f"true (or delete the line): {SHARED_CLUSTER_REMOVED}")
        return enabled


class EndpointSettings(_Spec):
    """How model endpoints scale (issue 11)."""

    idle_s: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description=(
            "Release an endpoint's lease (scale to zero) after Serve wanted no replica this "
            "long; the next request then waits for a lease, a raylet and a replica."
        ),
    )
    downscale_delay_s: float = Field(
        default=30.0,
        ge=0,
        le=3_600,
        description="Serve's autoscaler waits this long at lower demand before removing replicas.",
    )
    reconcile_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often the server compares each endpoint's lease with what Serve wants.",
    )


class PlatformConfig(_Spec):
    """The whole platform configuration file."""

    gpu_types: dict[str, GpuTypeSpec] = Field(
        min_length=1, description="GPU types offered, by name (e.g. A100, H100)."
    )
    tenants: dict[str, TenantSpec] = Field(
        default_factory=dict,
        description="Tenants created on `fastgpu up` if missing (more can be created later).",
    )
    state_dir: str | None = Field(
        default=None,
        description="Where the store, tokens and logs live; unset: $FASTGPU_HOME or ~/.fastgpu.",
    )
    storage_root: str | None = Field(
        default=None,
        description="Root of tenants' checkpoints and artifacts; unset: <state_dir>/storage.",
    )
    store_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the durable store; unset: a SQLite file in state_dir. "
            "Use postgresql+psycopg://... for production."
        ),
    )
    controller: ControllerSettings = Field(
        default_factory=ControllerSettings, description="Controller timing and limits."
    )
    api: ApiSettings = Field(default_factory=ApiSettings, description="HTTP control API.")
    scheduler: SchedulerSettings = Field(
        default_factory=SchedulerSettings, description="Admission policy and its settings."
    )
    pool: PoolSpec | None = Field(
        default=None, description="GPU hosts tenants' clusters use; unset: from `fastgpu up`."
    )
    tenant_clusters: TenantClusterSettings = Field(
        default_factory=TenantClusterSettings, description="Tenants' own Ray clusters."
    )
    endpoints: EndpointSettings = Field(
        default_factory=EndpointSettings, description="Model endpoints' scaling (fastgpu deploy)."
    )

    @model_validator(mode="after")
    def _names(self) -> PlatformConfig:
        import re

        for name in self.gpu_types:
            if not re.fullmatch(GPU_TYPE_PATTERN, name):
                raise ValueError(
                    f"GPU type names made of letters, digits, '.', '_', '-' (got {name!r})"
                )
        for tname, tenant in self.tenants.items():
            if not re.fullmatch(NAME_PATTERN, tname):
                raise ValueError(
                    f"tenant names of lower-case letters, digits and '-' (got {tname!r})"
                )
            for gname in tenant.quotas:
                if gname not in self.gpu_types:
                    raise ValueError(
                        f"tenant {tname!r} quota for GPU type {gname!r}, which is not in "
                        f"gpu_types ({', '.join(sorted(self.gpu_types))})"
                    )
        for host in self.pool.hosts if self.pool else []:
            if host.gpu_type not in self.gpu_types:
                raise ValueError(
                    f"pool host {host.name!r} has GPU type {host.gpu_type!r}, which is not in "
                    f"gpu_types ({', '.join(sorted(self.gpu_types))})"
                )
        return self

    # -- derived paths -------------------------------------------------------------------
    def resolved_state_dir(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        return default_state_dir()

    def resolved_storage_root(self) -> Path:
        if self.storage_root:
            return Path(self.storage_root).expanduser()
        return self.resolved_state_dir() / "storage"

    def resolved_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return f"sqlite:///{self.resolved_state_dir() / 'fastgpu.db'}"


def tenant_storage_key(tenant_id: str) -> str:
    """A tenant's folder under the storage root: named by its immutable id (a re-created name
    never inherits files), shaped like a tenant name."""
    return f"t-{tenant_id}"


def default_state_dir() -> Path:
    home = os.environ.get("FASTGPU_HOME")
    return Path(home).expanduser() if home else Path.home() / ".fastgpu"


def parse_config(data: Any, source: str = "config") -> PlatformConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    problems = []
    if "ray" in data:  # the shared cluster's ports: every old config `fastgpu up` saved has them
        problems.append(
            f"ray: got a `ray` section (the shared cluster's ports); expected none, delete it: "
            f"{SHARED_CLUSTER_REMOVED}"
        )
        data = {k: v for k, v in data.items() if k != "ray"}
    try:
        config = PlatformConfig.model_validate(data)
    except ValidationError as exc:
        problems.append(describe_validation_error(exc))
    if problems:
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(problems))
    return config


def load_config(path: str | Path) -> PlatformConfig:
    """Read and validate a YAML configuration file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from None
    return parse_config(data, source=str(p))


#: Dense BF16 TFLOPS of well-known types: the ``perf`` a default config rates them at.
KNOWN_PERF = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "L40S": 362.0, "A10G": 125.0}


def default_config(gpu_type: str = "A100", price_per_hour: float = 2.0) -> PlatformConfig:
    spec = GpuTypeSpec(price_per_hour=price_per_hour, perf=KNOWN_PERF.get(gpu_type, 0.0))
    return PlatformConfig(gpu_types={gpu_type: spec})


def config_json_schema() -> str:
    return json.dumps(PlatformConfig.model_json_schema(), indent=2, sort_keys=True)


__all__ = [
    "MAX_GPUS_PER_LEASE",
    "ApiSettings",
    "BudgetSpec",
    "ControllerSettings",
    "GpuTypeSpec",
    "HostSpec",
    "PlatformConfig",
    "PoolSpec",
    "QuotaSpec",
    "SchedulerSettings",
    "TenantClusterSettings",
    "TenantSpec",
    "config_json_schema",
    "default_config",
    "load_config",
    "parse_config",
]
