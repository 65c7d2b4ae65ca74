"""Tenants: create, read, change and delete (admin), each tenant seeing only itself.

Rules:
* a tenant is created with its token, shown once; a retry with the same request id answers the
  same tenant without a token and says how to get one (rotate); a second create of an existing
  name without that request id is a 409 that says the same;
* quotas name configured GPU types only; an update merges per GPU type (null removes one);
* a deleted tenant's leases and usage stay under its immutable id: a new tenant of the same
  name starts empty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from fastgpu.auth import ADMIN, Principal, hash_token, new_token
from fastgpu.config import TenantSpec
from fastgpu.errors import Conflict, InvalidRequest, NotFound
from fastgpu.service.auth import AuthService, seconds
from fastgpu.service.models import (
    Deleted,
    Page,
    TenantCreate,
    TenantCreated,
    TenantOut,
    TenantUpdate,
    encode_cursor,
    page_limit,
)
from fastgpu.store import TenantRecord
from fastgpu.timeutil import iso
from fastgpu.validation import invalid_from

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller


def tenant_out(rec: TenantRecord) -> TenantOut:
    spec = rec.spec
    return TenantOut(
        id=rec.id,
        name=rec.name,
        quotas=dict(spec.quotas),
        weight=spec.weight,
        priority=spec.priority,
        budget=spec.budget,
        queueing=spec.queueing,
        created_at=iso(rec.created_at),
    )


class TenantService:
    def __init__(self, ctl: Controller, auth: AuthService) -> None:
        self._ctl = ctl
        self._store = ctl.store
        self._auth = auth

    def _check_types(self, spec: TenantSpec) -> TenantSpec:
        known = self._ctl.config.gpu_types
        for gpu_type in spec.quotas:
            if gpu_type not in known:
                raise InvalidRequest(
                    f"quotas.{gpu_type}: unknown GPU type; expected one of "
                    f"{', '.join(sorted(known))}"
                )
        return spec

    def visible(self, p: Principal, name: str) -> TenantRecord:
        rec = self._ctl.tenant(name) if isinstance(name, str) else None
        if rec is None or (not p.is_admin and rec.name != p.name):
            raise NotFound(f"tenant {name!r} not found")
        return rec

    def create(self, p: Principal, body: TenantCreate) -> TenantCreated:
        self._auth.require_admin(p)
        if body.name == ADMIN:
            raise InvalidRequest("name: 'admin' is reserved; choose another tenant name")
        spec = self._check_types(body.spec())
        life = seconds(body.token_expires_in, "token_expires_in")
        with self._ctl.lock:
            if body.request_id:
                seen = self._store.recall_request(p.name, body.request_id)
                if seen is not None:
                    rec = self._ctl.tenant(body.name)
                    if seen[:2] != ("create_tenant", body.name) or rec is None:
                        raise Conflict(
                            f"request id {body.request_id!r} was used for another call; "
                            "use a new request id"
                        )
                    return TenantCreated(
                        **tenant_out(rec).model_dump(),
                        token=None,
                        note=(
                            "already created by this request id; the token was shown once. "
                            f"Get a new one with `fastgpu tenant rotate-token {rec.name}`"
                        ),
                    )
            if self._ctl.tenant(body.name) is not None:
                raise Conflict(
                    f"tenant {body.name!r} already exists; if you created it and lost its "
                    f"token, run `fastgpu tenant rotate-token {body.name}`"
                )
            token = new_token()
            now = self._ctl.clock()
            rec, _ = self._store.create_tenant(
                body.name, spec, hash_token(token), now, None if life is None else now + life
            )
            if body.request_id:
                self._store.remember_request(
                    p.name, body.request_id, "create_tenant", body.name, now
                )
            self._ctl.tenants_changed()
        return TenantCreated(**tenant_out(rec).model_dump(), token=token, note=None)

    def list(
        self, p: Principal, limit: int | None = None, cursor: str | None = None
    ) -> Page[TenantOut]:
        n = page_limit(limit)
        if not p.is_admin:
            rec = self.visible(p, p.name)
            return Page[TenantOut](items=[tenant_out(rec)], next_cursor=None)
        from fastgpu.service.models import decode_cursor

        after = decode_cursor(cursor)
        if after is not None and not isinstance(after, str):
            raise InvalidRequest("cursor: expected the next_cursor of a previous page")
        recs = self._store.page_tenants(n + 1, after)
        more = len(recs) > n
        recs = recs[:n]
        return Page[TenantOut](
            items=[tenant_out(r) for r in recs],
            next_cursor=encode_cursor(recs[-1].name) if more else None,
        )

    def get(self, p: Principal, name: str) -> TenantOut:
        return tenant_out(self.visible(p, name))

    def update(self, p: Principal, name: str, body: TenantUpdate) -> TenantOut:
        self._auth.require_admin(p)
        changes = body.model_dump(mode="json", exclude_unset=True)
        with self._ctl.lock:
            rec = self.visible(p, name)
            merged: dict[str, Any] = rec.spec.model_dump(mode="json")
            for key, value in changes.items():
                if key == "quotas" and isinstance(value, dict):
                    quotas = dict(merged.get("quotas") or {})
                    for gpu_type, q in value.items():
                        if q is None:
                            quotas.pop(gpu_type, None)
                        elif gpu_type in quotas:
                            quotas[gpu_type] = {**quotas[gpu_type], **q}
                        else:
                            quotas[gpu_type] = q
                    merged["quotas"] = quotas
                else:
                    merged[key] = value
            try:
                spec = self._check_types(TenantSpec.model_validate(merged))
            except ValidationError as exc:
                raise invalid_from(exc) from None
            rec = self._store.update_tenant(name, spec, self._ctl.clock())
            self._ctl.tenants_changed()
        return tenant_out(rec)

    def delete(self, p: Principal, name: str) -> Deleted:
        self._auth.require_admin(p)
        with self._ctl.lock:
            self.visible(p, name)
            self._store.delete_tenant(name)
            self._auth.forget()
            self._ctl.tenants_changed()
        return Deleted(name=name, deleted=True)
