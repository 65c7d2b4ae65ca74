"""Authentication and tokens: who a bearer token is, and the token life cycle.

Rules:
* a token is stored as its SHA-256 only; the raw token is shown once (creation, rotation);
* an unknown, expired or revoked token answers 401; a tenant's token never acts for another;
* rotation issues a new token and lets the old ones work for a grace period (running jobs
  hold them) or stops them at once (grace 0); revocation by token id is immediate;
* the admin token rotates and revokes the same way; the last admin token cannot be revoked
  (that would lock the operator out of its own platform).

Principals are cached by token hash for ``CACHE_S`` (a revocation elsewhere, e.g. on a standby
server that took over, is seen within that time; in this process at once).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastgpu.auth import ADMIN, Principal, hash_token, new_token
from fastgpu.config import tenant_storage_key
from fastgpu.errors import AuthenticationError, Conflict, NotFound, PermissionDenied
from fastgpu.service.models import Page, TokenIssued, TokenOut, WhoAmI, paginate
from fastgpu.store import TokenRecord
from fastgpu.timeutil import iso
from fastgpu.validation import parse_duration

#: The label of a tenant cluster's own token (see :meth:`AuthService.cluster_token`).
CLUSTER_TOKEN_LABEL = "cluster"

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller

CACHE_S = 2.0
MAX_TOKEN_LIFETIME_S = 10 * 365 * 86400


def token_out(rec: TokenRecord) -> TokenOut:
    return TokenOut(
        id=rec.id,
        principal=rec.principal,
        is_admin=rec.is_admin,
        created_at=iso(rec.created_at),
        expires_at=iso(rec.expires_at),
        label=rec.label,
    )


def issued(rec: TokenRecord, token: str) -> TokenIssued:
    return TokenIssued(**token_out(rec).model_dump(), token=token)


def seconds(value: str | float | int | None, field: str, allow_zero: bool = False) -> float | None:
    """A duration field ('90d', '1h', seconds); None stays None; 0 only where allowed."""
    if value is None:
        return None
    if allow_zero and not isinstance(value, bool) and value in (0, "0", "0s"):
        return 0.0
    return parse_duration(value, field, max_s=MAX_TOKEN_LIFETIME_S)


class AuthService:
    def __init__(self, ctl: Controller) -> None:
        self._ctl = ctl
        self._store = ctl.store
        self._cache: dict[str, tuple[float, Principal]] = {}

    def forget(self) -> None:
        """Drop cached principals (a token or tenant changed)."""
        self._cache.clear()

    def cached(self, token: str) -> Principal | None:
        """The principal of a token seen within ``CACHE_S`` (no I/O), else None."""
        hit = self._cache.get(hash_token(token)) if isinstance(token, str) else None
        if hit is None or time.monotonic() - hit[0] >= CACHE_S:
            return None
        p = hit[1]
        if p.token_expires_at is not None and p.token_expires_at <= self._ctl.clock():
            return None
        return p

    def authenticate(self, token: str | None) -> Principal:
        if not token or not isinstance(token, str) or len(token) > 256:
            raise AuthenticationError("no token given; pass a bearer token (FASTGPU_TOKEN)")
        digest = hash_token(token)
        now_mono = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now_mono - cached[0] < CACHE_S:
            p = cached[1]
            if p.token_expires_at is None or p.token_expires_at > self._ctl.clock():
                return p
        rec = self._store.lookup_token(digest, self._ctl.clock())
        if rec is None:
            self._cache.pop(digest, None)
            raise AuthenticationError(
                "the token is not valid (unknown, expired or revoked); check FASTGPU_TOKEN"
            )
        tenant_id = None
        if not rec.is_admin:
            tenant = self._ctl.tenant(rec.principal)
            if tenant is None:
                raise AuthenticationError("the token's tenant no longer exists")
            tenant_id = tenant.id
        p = Principal(rec.principal, rec.is_admin, tenant_id, rec.id, rec.expires_at)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now_mono, p)
        return p

    @staticmethod
    def require_admin(p: Principal) -> None:
        if not p.is_admin:
            raise PermissionDenied("this operation needs the admin token")

    def bootstrap_admin(self, token: str) -> None:
        """Register the admin token ``fastgpu up`` made (a no-op when it is known)."""
        h = hash_token(token)
        if self._store.lookup_token(h, self._ctl.clock()) is None:
            try:
                self._store.add_token(h, ADMIN, True, self._ctl.clock(), label="bootstrap")
            except Exception:  # another server registered it first (same store)
                if self._store.lookup_token(h, self._ctl.clock()) is None:
                    raise

    def whoami(self, p: Principal) -> WhoAmI:
        out = WhoAmI(
            principal=p.name,
            is_admin=p.is_admin,
            tenant=p.tenant,
            tenant_id=p.tenant_id,
            token_id=p.token_id,
            token_expires_at=iso(p.token_expires_at),
        )
        if p.tenant and p.tenant_id:
            root = self._ctl.config.resolved_storage_root()
            out.storage_root = str(root)
            out.storage_key = tenant_storage_key(p.tenant_id)
            out.runs_dir = str(root / out.storage_key / "runs")
        return out

    # -- the token life cycle ------------------------------------------------------------------
    def _owner(self, p: Principal, principal: str) -> tuple[str, bool]:
        """Whose tokens a call is about: the admin may name any tenant or 'admin'; a tenant
        only itself."""
        if principal == ADMIN:
            self.require_admin(p)
            return ADMIN, True
        if not p.is_admin and principal != p.name:
            raise NotFound(f"tenant {principal!r} not found")
        if self._ctl.tenant(principal) is None:
            raise NotFound(f"tenant {principal!r} not found")
        return principal, False

    def list_tokens(
        self,
        p: Principal,
        principal: str,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[TokenOut]:
        owner, _ = self._owner(p, principal)
        rows = [token_out(r) for r in self._store.list_tokens(owner, self._ctl.clock())]
        return paginate(rows, lambda t: [t.created_at or "", t.id], limit, cursor)

    def rotate(
        self,
        p: Principal,
        principal: str,
        grace: str | float | int | None = None,
        expires_in: str | float | int | None = None,
        label: str | None = None,
        request_id: str | None = None,
    ) -> TokenIssued:
        """A new token for ``principal``; the old ones stop after the grace period."""
        return self._once(
            p,
            principal,
            request_id,
            "rotate_token",
            lambda owner, is_admin: self._rotate(owner, is_admin, grace, expires_in, label),
        )

    def _once(
        self,
        p: Principal,
        principal: str,
        request_id: str | None,
        op: str,
        make: Callable[[str, bool], TokenIssued],
    ) -> TokenIssued:
        """``make(owner, is_admin)`` for the admin, once per request id: a retry answers the
        token's record, never the token again."""
        owner, is_admin = self._owner(p, principal)
        if not p.is_admin:
            raise PermissionDenied("tokens are issued and rotated by the admin")
        with self._ctl.lock:
            again = self._replay(p, request_id, op, owner)
            if again is not None:
                return again
            out = make(owner, is_admin)
            self._remember(p, request_id, op, out)
            return out

    def _replay(
        self, p: Principal, request_id: str | None, op: str, owner: str
    ) -> TokenIssued | None:
        """The token an earlier call with this request id issued (without the token)."""
        if not request_id:
            return None
        seen = self._store.recall_request(p.name, request_id)
        if seen is None:
            return None
        if seen[0] != op or not isinstance(seen[2], dict) or seen[2].get("principal") != owner:
            raise Conflict(f"request id {request_id!r} was used for another call; use a new one")
        return TokenIssued(
            **{**seen[2], "token": None},
            note=(
                "already done by this request id; the token was shown once. Issue another "
                "with a new request id if it was lost"
            ),
        )

    def _remember(self, p: Principal, request_id: str | None, op: str, out: TokenIssued) -> None:
        if request_id:
            meta = out.model_dump(exclude={"token", "note"})
            self._store.remember_request(p.name, request_id, op, out.id, self._ctl.clock(), meta)

    def _rotate(
        self,
        owner: str,
        is_admin: bool,
        grace: str | float | int | None,
        expires_in: str | float | int | None,
        label: str | None,
    ) -> TokenIssued:
        now = self._ctl.clock()
        grace_s = seconds(grace, "grace", allow_zero=True)
        if grace_s is None:
            grace_s = self._ctl.config.api.token_grace_s
        life = seconds(expires_in, "expires_in")
        token = new_token()
        rec = self._store.rotate_tokens(
            owner,
            is_admin,
            hash_token(token),
            now,
            old_expire_at=now + grace_s,
            expires_at=None if life is None else now + life,
            label=label or "rotated",
        )
        self.forget()
        return issued(rec, token)

    def issue(
        self,
        p: Principal,
        principal: str,
        expires_in: str | float | int | None = None,
        label: str | None = None,
        request_id: str | None = None,
    ) -> TokenIssued:
        """One more token for ``principal`` (the others keep working)."""
        return self._once(
            p,
            principal,
            request_id,
            "issue_token",
            lambda owner, is_admin: self._issue(owner, is_admin, expires_in, label),
        )

    def _issue(
        self,
        owner: str,
        is_admin: bool,
        expires_in: str | float | int | None,
        label: str | None,
    ) -> TokenIssued:
        now = self._ctl.clock()
        life = seconds(expires_in, "expires_in")
        token = new_token()
        rec = self._store.add_token(
            hash_token(token), owner, is_admin, now, None if life is None else now + life, label
        )
        return issued(rec, token)

    def cluster_token(self, tenant_id: str) -> str:
        """A token for the jobs of a tenant's own Ray cluster, issued when its head starts (it
        lives there as a 0600 file of the tenant's user, ``FASTGPU_TOKEN_FILE``, so a job sent
        with plain `ray job submit` acts as its tenant); the previous cluster token is revoked.
        It expires with the longest lease; rotating the tenant's tokens stops it too."""
        from fastgpu.validation import MAX_DURATION_S

        rec = next((r for r in self._ctl.tenants() if r.id == tenant_id), None)
        if rec is None:
            raise NotFound(f"tenant {tenant_id!r} not found")
        now = self._ctl.clock()
        for old in self._store.list_tokens(rec.name, now):
            if old.label == CLUSTER_TOKEN_LABEL:
                self._store.revoke_token(rec.name, old.id)
        token = new_token()
        self._store.add_token(
            hash_token(token), rec.name, False, now, now + MAX_DURATION_S, CLUSTER_TOKEN_LABEL
        )
        self.forget()
        return token

    def revoke(self, p: Principal, principal: str, token_id: str) -> TokenOut:
        owner, is_admin = self._owner(p, principal)
        now = self._ctl.clock()
        mine = {r.id: r for r in self._store.list_tokens(owner, now)}  # all of them
        rec = mine.get(token_id)
        if rec is None:
            raise NotFound(f"token {token_id!r} of {owner} not found")
        if is_admin and len(mine) == 1:
            raise Conflict(
                "that is the last admin token; rotate the admin token instead of revoking it"
            )
        if not p.is_admin and token_id == p.token_id and len(mine) == 1:
            raise Conflict("that is your only token; ask the admin to rotate it instead")
        self._store.revoke_token(owner, token_id)
        self.forget()
        return token_out(rec)
