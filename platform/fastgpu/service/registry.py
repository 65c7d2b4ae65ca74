"""The model registry's rules: who may register, see, resolve and delete a model version.

* a version is registered with a tenant's token (never the admin's), for that tenant; its files
  must already be published by the tenant at ``models/<name>/<hash[:16]>`` (the path is checked
  against the name and hash, so a row can never name another folder);
* a tenant sees and resolves only its own models; another tenant's answers 404, as if absent;
  the admin sees all and may name the tenant;
* versions count up per model and are never reused; a request id makes registration
  idempotent (a retry answers the version the first call made);
* deleting a version removes its folder unless another live version has the same files; the
  server walks the tenant's storage without following links (the tenant owns those folders).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from fastgpu.auth import Principal
from fastgpu.config import tenant_storage_key
from fastgpu.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from fastgpu.registry.files import model_path
from fastgpu.registry.refs import ModelRef, parse_ref
from fastgpu.registry.shapes import ModelCreate, ModelOut
from fastgpu.service.models import Page, decode_cursor, encode_cursor, page_limit
from fastgpu.timeutil import iso

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller
    from fastgpu.store import Store
    from fastgpu.store.registry import ModelRecord

_OP = "register_model"


class RegistryService:
    def __init__(self, ctl: Controller) -> None:
        self._ctl = ctl

    @property
    def _store(self) -> Store:
        return self._ctl.store

    def _storage(self, tenant_id: str) -> Path:
        return self._ctl.config.resolved_storage_root() / tenant_storage_key(tenant_id)

    def out(self, rec: ModelRecord) -> ModelOut:
        return ModelOut(
            ref=f"{rec.tenant}/{rec.name}:v{rec.version}",
            tenant=rec.tenant,
            name=rec.name,
            version=rec.version,
            path=rec.path,
            uri=str(self._storage(rec.tenant_id) / rec.path),
            content_hash=rec.content_hash,
            size_bytes=rec.size_bytes,
            config=rec.config,
            metrics=rec.metrics,
            lineage=rec.lineage,
            created_at=iso(rec.created_at) or "",
        )

    # -- scope -----------------------------------------------------------------------------------
    def _owner(self, p: Principal, tenant: str | None) -> tuple[str, str]:
        """(tenant id, name) a call is about: the caller's own, or any for the admin."""
        if p.is_admin:
            if tenant is None:
                raise InvalidRequest("tenant: the admin names whose model (TENANT/MODEL)")
            rec = self._ctl.tenant(tenant)
            if rec is None:
                raise NotFound(f"tenant {tenant!r} not found")
            return rec.id, rec.name
        if p.tenant_id is None or (tenant is not None and tenant != p.name):
            raise NotFound(f"model of tenant {tenant!r} not found")
        return p.tenant_id, p.name

    # -- calls -----------------------------------------------------------------------------------
    def register(self, p: Principal, body: ModelCreate) -> ModelOut:
        if p.is_admin or p.tenant_id is None:
            raise PermissionDenied("models are registered with a tenant's token, not the admin's")
        expected = model_path(body.name, body.content_hash)
        if body.path != expected:
            raise InvalidRequest(
                f"path: got {body.path!r}; expected {expected!r} (publish the files with "
                "fastgpu.registry.publish, or use Client.register_model)"
            )
        with self._ctl.lock:
            if body.request_id:
                seen = self._store.recall_request(p.name, body.request_id)
                if seen is not None:
                    op, target, result = seen
                    if (op, target) != (_OP, body.name) or not result:
                        raise Conflict(
                            f"request id {body.request_id!r} was used for another call; "
                            "use a new request id"
                        )
                    again = self._store.model_version(p.tenant_id, body.name, int(result))
                    if again is None:
                        raise Conflict(f"{body.name}:v{result} was deleted since")
                    return self.out(again)
            now = self._ctl.clock()
            rec = self._store.add_model_version(
                p.tenant_id,
                p.name,
                body.name,
                body.path,
                body.content_hash,
                body.size_bytes,
                body.config,
                body.metrics,
                body.lineage,
                now,
            )
            if body.request_id:
                self._store.remember_request(
                    p.name, body.request_id, _OP, body.name, now, rec.version
                )
        return self.out(rec)

    def resolve(self, p: Principal, ref: str | ModelRef) -> ModelOut:
        """The live version a reference names, as the caller may see it (404 otherwise)."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        tenant_id, _ = self._owner(p, r.tenant)
        rec = self._store.model_version(tenant_id, r.name, r.version)
        if rec is None:
            raise NotFound(f"model {r} not found")
        return self.out(rec)

    def list(
        self,
        p: Principal,
        tenant: str | None = None,
        name: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[ModelOut]:
        n = page_limit(limit)
        tenant_id = None if p.is_admin and tenant is None else self._owner(p, tenant)[0]
        after = decode_cursor(cursor)
        if after is not None and not (
            isinstance(after, list) and len(after) == 3 and isinstance(after[2], int)
        ):
            raise InvalidRequest("cursor: expected the next_cursor of a previous page")
        rows = self._store.model_versions(
            tenant_id, name, None if after is None else tuple(after), n + 1
        )
        more = len(rows) > n
        rows = rows[:n]
        last = rows[-1] if more else None
        return Page[ModelOut](
            items=[self.out(r) for r in rows],
            next_cursor=None
            if last is None
            else encode_cursor([last.tenant_id, last.name, last.version]),
        )

    def delete(self, p: Principal, ref: str) -> ModelOut:
        r = parse_ref(ref)
        if r.version is None:
            raise InvalidRequest(f"model: got {ref!r}; name the version to delete (NAME:vN)")
        found = self.resolve(p, r)
        tenant_id, _ = self._owner(p, r.tenant)
        with self._ctl.lock:
            last_user = self._store.delete_model_version(
                tenant_id, r.name, r.version, self._ctl.clock()
            )
        if last_user:
            remove_tree(self._storage(tenant_id), found.path)
        return found


def remove_tree(storage: Path, rel: str) -> None:
    """Remove ``storage/rel`` without following a link anywhere on the way (the server may run
    as root in folders a tenant owns): each step is opened with O_NOFOLLOW, the last removed
    relative to its parent's descriptor. Missing: nothing to do."""
    parts = [x for x in rel.split("/") if x]
    if not parts or any(x in (".", "..") for x in parts):
        raise InvalidRequest(f"path: {rel!r} is not a folder under the tenant's storage")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        fd = os.open(storage, flags)
    except FileNotFoundError:
        return
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                    return  # gone, or a link put in its place: never followed
                raise
            os.close(fd)
            fd = nxt
        try:
            shutil.rmtree(parts[-1], dir_fd=fd)
        except FileNotFoundError:
            return
        except NotADirectoryError:
            os.unlink(parts[-1], dir_fd=fd)
    finally:
        os.close(fd)
