"""Durable state: one small interface (:class:`Store`) over SQLAlchemy.

SQLite file is the embedded default; PostgreSQL by URL for production; ``sqlite://`` (memory)
for fast tests. Every state change is one transaction. See :mod:`fastgpu.store.sql`.
"""

from fastgpu.store.accounts import TenantRecord, TokenRecord
from fastgpu.store.sql import SCHEMA_VERSION, Store, TxHook, open_store
from fastgpu.store.usage import StoreTx, UsageRow

__all__ = [
    "SCHEMA_VERSION",
    "Store",
    "StoreTx",
    "TenantRecord",
    "TokenRecord",
    "TxHook",
    "UsageRow",
    "open_store",
]
