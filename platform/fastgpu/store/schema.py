"""Tables and versioned migrations of the store.

``MIGRATIONS[i]`` upgrades a database at version ``i`` to ``i + 1``; each runs in its own
transaction together with the version bump, so a crash leaves the database at a whole version.
Add a migration; never edit a released one.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

tenants = Table(
    "tenants",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("spec", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # v4: the immutable id that leases and usage belong to (a re-created name is a new tenant).
    Column("id", String(32)),
)

tokens = Table(
    "tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    # "admin" for the operator, else the tenant's name.
    Column("principal", String(63), nullable=False),
    Column("is_admin", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_tokens_principal", "principal"),
    # v4: a short public id (to list and revoke a token without showing it), when it stops
    # working (rotation grace or a chosen expiry; null: never) and a free-form label.
    Column("id", String(16)),
    Column("expires_at", Float),
    Column("label", String(64)),
)

leases = Table(
    "leases",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(63), nullable=False),
    Column("state", String(16), nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("min_gpus", Integer, nullable=False),
    Column("gpu_type", String(32), nullable=False),
    Column("strategy", String(16), nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("preemptible", Boolean, nullable=False),
    Column("price_per_hour", Float, nullable=False),
    Column("request_id", String(128)),
    Column("reason", String(32)),
    Column("reason_detail", Text),
    Column("placement_group", String(64)),
    Column("placement_group_id", String(64)),
    Column("nodes", Text, nullable=False, default="[]"),
    Column("created_at", Float, nullable=False),
    Column("admitted_at", Float),
    Column("reserved_at", Float),
    Column("ended_at", Float),
    Column("expires_at", Float),
    Column("workload", String(256)),
    Column("preempt_at", Float),
    # v2
    Column("priority", Integer, nullable=False, default=0),
    Column("last_checkpoint_at", Float),
    # v3
    Column("restarts", Integer, nullable=False, default=0),
    # v4
    Column("tenant_id", String(32)),
    UniqueConstraint("tenant", "request_id", name="uq_leases_tenant_request"),
    Index("ix_leases_state", "state"),
    Index("ix_leases_tenant", "tenant"),
)

lease_events = Table(
    "lease_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("lease_id", String(32), nullable=False),
    Column("at", Float, nullable=False),
    Column("prev", String(16)),
    Column("new", String(16), nullable=False),
    Column("reason", Text),
    Index("ix_lease_events_lease", "lease_id"),
)

# One row per stretch of time a lease held a fixed number of GPUs (elastic leases have several).
usage = Table(
    "usage",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("lease_id", String(32), nullable=False),
    Column("tenant", String(63), nullable=False),
    Column("gpu_type", String(32), nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("price_per_hour", Float, nullable=False),
    Column("start", Float, nullable=False),
    Column("end", Float),
    Index("ix_usage_tenant", "tenant"),
    Index("ix_usage_lease", "lease_id"),
    # v4
    Column("tenant_id", String(32)),
    # v5: what held the GPUs ("train:run", "job:id"; "lease" for a plain lease; null for
    # records older than v5), and the indexes of the usage report (a tenant's range; the
    # records that end after a report's start).
    Column("workload", String(256)),
    Index("ix_usage_tenant_id_start", "tenant_id", "start"),
    Index("ix_usage_start", "start"),
    Index("ix_usage_end", "end"),
)

# Idempotency keys of mutating calls other than lease requests (which key on the lease row).
requests = Table(
    "requests",
    metadata,
    Column("principal", String(63), primary_key=True),
    Column("request_id", String(128), primary_key=True),
    Column("op", String(32), nullable=False),
    Column("target", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    # v4: what the first call answered (JSON), so a retry answers the same.
    Column("result", Text),
)


#: The model registry: a tenant's model versions. The files are the tenant's own (a
#: content-addressed folder in its storage, written by its own processes); the row names them
#: with their hash. Versions are never reused: a deleted one keeps its row with ``deleted_at``.
models = Table(
    "models",
    metadata,
    Column("tenant_id", String(32), primary_key=True),
    Column("name", String(63), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("tenant", String(63), nullable=False),
    Column("path", String(512), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("config", Text, nullable=False),
    Column("metrics", Text, nullable=False),
    Column("lineage", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("deleted_at", Float),
)


_LATER_COLUMNS = ("priority", "last_checkpoint_at", "restarts", "tenant_id")
#: Columns version 4 added to tables that version 1 created.
_V4_COLUMNS = {
    "tenants": ("id",),
    "tokens": ("id", "expires_at", "label"),
    "usage": ("tenant_id",),
    "requests": ("result",),
}
#: Columns and indexes version 5 added (the usage ledger's workload and report indexes).
_V5_COLUMNS = {"usage": ("workload",)}
_V5_INDEXES = frozenset({"ix_usage_tenant_id_start", "ix_usage_start", "ix_usage_end"})


def _v1(conn: Connection) -> None:
    # Version 1's leases table: today's, without the columns later versions add.
    v1 = MetaData()
    Table(
        "leases",
        v1,
        *(c._copy() for c in leases.columns if c.name not in _LATER_COLUMNS),
        UniqueConstraint("tenant", "request_id", name="uq_leases_tenant_request"),
        Index("ix_leases_state", "state"),
        Index("ix_leases_tenant", "tenant"),
    )
    for table in (tenants, tokens, usage, requests):
        later = (*_V4_COLUMNS.get(table.name, ()), *_V5_COLUMNS.get(table.name, ()))
        Table(
            table.name,
            v1,
            *(c._copy() for c in table.columns if c.name not in later),
            *(
                Index(i.name, *[c.name for c in i.columns])
                for i in table.indexes
                if i.name not in _V5_INDEXES and not any(c.name in later for c in i.columns)
            ),
        )
    v1.create_all(conn)
    metadata.create_all(conn, tables=[lease_events])


def _v2(conn: Connection) -> None:
    """Per-lease priority (preemption within a tenant) and the workload's last checkpoint
    (preemption loses least work)."""
    conn.execute(text("ALTER TABLE leases ADD COLUMN priority INTEGER NOT NULL DEFAULT 0"))
    conn.execute(text("ALTER TABLE leases ADD COLUMN last_checkpoint_at FLOAT"))


def _v3(conn: Connection) -> None:
    """How many times the workload a lease runs was preempted before (its minimum runtime
    doubles with each, so a workload chosen again and again still makes progress)."""
    conn.execute(text("ALTER TABLE leases ADD COLUMN restarts INTEGER NOT NULL DEFAULT 0"))


def _v4(conn: Connection) -> None:
    """Immutable tenant ids (leases and usage belong to the id, so a re-created tenant name
    starts empty), token ids, expiry and labels, and stored results of idempotent calls."""
    import uuid

    conn.execute(text("ALTER TABLE tenants ADD COLUMN id VARCHAR(32)"))
    for (name,) in conn.execute(text("SELECT name FROM tenants")).all():
        conn.execute(
            text("UPDATE tenants SET id = :id WHERE name = :name"),
            {"id": uuid.uuid4().hex[:16], "name": name},
        )
    conn.execute(text("CREATE UNIQUE INDEX ix_tenants_id ON tenants (id)"))
    for table in ("leases", "usage"):
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN tenant_id VARCHAR(32)"))
        conn.execute(
            text(
                f"UPDATE {table} SET tenant_id = "
                f"(SELECT id FROM tenants WHERE tenants.name = {table}.tenant)"
            )
        )
        conn.execute(text(f"CREATE INDEX ix_{table}_tenant_id ON {table} (tenant_id)"))
    conn.execute(text("ALTER TABLE tokens ADD COLUMN id VARCHAR(16)"))
    conn.execute(text("ALTER TABLE tokens ADD COLUMN expires_at FLOAT"))
    conn.execute(text("ALTER TABLE tokens ADD COLUMN label VARCHAR(64)"))
    for (token_hash,) in conn.execute(text("SELECT token_hash FROM tokens")).all():
        conn.execute(
            text("UPDATE tokens SET id = :id WHERE token_hash = :h"),
            {"id": uuid.uuid4().hex[:12], "h": token_hash},
        )
    conn.execute(text("ALTER TABLE requests ADD COLUMN result TEXT"))


def _v5(conn: Connection) -> None:
    """The usage ledger: each record names the workload that held the GPUs (older records
    stay null: what held them then is not known), and indexes for the usage report."""
    conn.execute(text("ALTER TABLE usage ADD COLUMN workload VARCHAR(256)"))
    conn.execute(text("CREATE INDEX ix_usage_tenant_id_start ON usage (tenant_id, start)"))
    conn.execute(text("CREATE INDEX ix_usage_start ON usage (start)"))
    conn.execute(text('CREATE INDEX ix_usage_end ON usage ("end")'))


def _v_models(conn: Connection) -> None:
    """The model registry (issue 10)."""
    metadata.create_all(conn, tables=[models])


# Budget events (warnings, cap reached, leases stopped or kept at the cap), each at most once
# per tenant, period and key (fastgpu.domain.budget).
budget_events = Table(
    "budget_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", String(32), nullable=False),
    Column("tenant", String(63), nullable=False),
    Column("period_start", Float, nullable=False),
    Column("key", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("at", Float, nullable=False),
    Column("threshold", Float),
    Column("lease_id", String(32)),
    Column("detail", Text, nullable=False),
    UniqueConstraint("tenant_id", "period_start", "key", name="uq_budget_events_key"),
)


def _v_budget_events(conn: Connection) -> None:
    """Budget events: warnings at thresholds and what the cap did, once per period each."""
    metadata.create_all(conn, tables=[budget_events])


# Model endpoints (issue 11): one row per endpoint, its mutable state in ``doc`` (JSON: model,
# checkpoint, scaling, lease, serving version, an update in progress); its tokens hashed.
endpoints = Table(
    "endpoints",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("tenant_id", String(32), nullable=False),
    Column("tenant", String(63), nullable=False),
    Column("name", String(63), nullable=False),
    Column("doc", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("tenant_id", "name", name="uq_endpoints_tenant_name"),
)
endpoint_tokens = Table(
    "endpoint_tokens",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("endpoint_id", String(16), nullable=False, index=True),
    Column("tenant_id", String(32), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)


def _v_endpoints(conn: Connection) -> None:
    """Model endpoints and their hashed tokens (issue 11)."""
    metadata.create_all(conn, tables=[endpoints, endpoint_tokens])


# GPU hosts run by agents (issue 14): the hash of each host's token and its drain (JSON).
hosts = Table(
    "hosts",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("doc", Text, nullable=False),
)


def _v_hosts(conn: Connection) -> None:
    """Agent-run GPU hosts: token hashes and drains (issue 14)."""
    metadata.create_all(conn, tables=[hosts])


# The usage report's daily rollup (issue 12): per UTC day and (tenant id, tenant, GPU type,
# workload), the GPU-seconds and cost of the closed usage records in that day, each record split
# exactly at midnight and priced at its own price. Written in the transaction that closes a
# record (fastgpu.store.usage.StoreTx); open records are not in it. Key columns cannot be null:
# "" stands for the null tenant id or workload of records older than v4 or v5. Without rowid on
# SQLite: rows lie in key order, so a report by day and tenant reads a range without sorting.
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("day", Float, primary_key=True),  # the day's start, epoch seconds (UTC)
    Column("tenant_id", String(32), primary_key=True),
    Column("tenant", String(63), primary_key=True),
    Column("gpu_type", String(32), primary_key=True),
    Column("workload", String(256), primary_key=True),
    Column("gpu_seconds", Float, nullable=False),
    Column("cost", Float, nullable=False),  # GPU-hours x each record's price per GPU-hour
    Index("ix_usage_daily_tenant_day", "tenant_id", "day"),
    sqlite_with_rowid=False,
)


def _v_usage_daily(conn: Connection) -> None:
    """The usage report's daily rollup (issue 12), backfilled from the closed records."""
    from fastgpu.store.usage import rebuild_daily  # the split rule lives with the ledger

    metadata.create_all(conn, tables=[usage_daily])
    rebuild_daily(conn)


def _v_lease_pages(conn: Connection) -> None:
    """Lease lists page in (created_at, id) order, a tenant's or all: indexes in that order, so
    a page reads its rows instead of sorting every lease (all 10,000 leases: 1.6 ms a page of
    100 without them)."""
    page, tenant_page = "(created_at, id)", "(tenant_id, created_at, id)"
    conn.execute(text(f"CREATE INDEX IF NOT EXISTS ix_leases_page ON leases {page}"))
    conn.execute(text(f"CREATE INDEX IF NOT EXISTS ix_leases_tenant_page ON leases {tenant_page}"))
    conn.execute(text("DROP INDEX IF EXISTS ix_leases_tenant_id"))  # a prefix of the above


MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1,
    _v2,
    _v3,
    _v4,
    _v5,
    _v_models,
    _v_budget_events,
    _v_endpoints,
    _v_hosts,
    _v_usage_daily,
    _v_lease_pages,
]
SCHEMA_VERSION = len(MIGRATIONS)
