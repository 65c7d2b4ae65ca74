"""Ray jobs for tenants: upload a working directory, submit, list, read status and logs, stop.

Rules:
* jobs are submitted with a tenant's token (never the admin's) and are visible to that tenant
  only (another tenant's job id answers 404);
* a working directory travels as a zip through ``POST /uploads`` (size-limited, regular files
  only, checked entry by entry); the server unpacks it once into a folder of its own state dir
  named by content hash, and jobs name that hash: no path a tenant names is ever read;
* ``FASTGPU_*`` and ``RAY_*`` variables are the platform's; a job's lease is checked at submit
  time with the same rules as any lease request;
* a request id makes submission idempotent: the Ray submission id is derived from it, so a
  retry (even after a server crash between Ray's answer and ours) finds the same job;
* an unpacked upload is kept ``api.upload_retention_s`` after it was last uploaded, then
  purged (the controller's purge pass): Ray copies a job's folder into its cluster at
  submission, and the SDK uploads before every submission.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fastgpu.auth import Principal
from fastgpu.controller.jobs import TenantJobGateway, lease_request_id
from fastgpu.domain import bundle
from fastgpu.domain.sweep import ENV as SWEEP_ENV
from fastgpu.errors import InvalidRequest, NotFound, PermissionDenied
from fastgpu.service.leases import LeaseService
from fastgpu.service.models import (
    JobCreate,
    JobLogs,
    JobOut,
    LeaseOut,
    Page,
    UploadOut,
    paginate,
)

if TYPE_CHECKING:
    from fastgpu.controller.loop import Controller

UPLOADS_DIR = "uploads"


class JobService:
    def __init__(self, ctl: Controller, gateway: TenantJobGateway, leases: LeaseService) -> None:
        self._ctl = ctl
        self._gateway = gateway
        self._leases = leases
        self._uploads = ctl.config.resolved_state_dir() / UPLOADS_DIR
        ctl.purge_hooks["uploads"] = self.purge_uploads

    @staticmethod
    def _tenant_only(p: Principal) -> str:
        if p.is_admin or p.tenant_id is None:
            raise PermissionDenied("jobs are submitted with a tenant's token, not the admin's")
        return p.tenant_id

    def _upload_dir(self, tenant_id: str, sha256: str) -> Path:
        return self._uploads / tenant_id / sha256

    def upload(self, p: Principal, data: bytes) -> UploadOut:
        """Check a zipped working directory entry by entry and keep it unpacked, by its hash
        (the same folder serves every job that names it; nothing writes to it again)."""
        tenant_id = self._tenant_only(p)
        limit = self._ctl.config.api.max_upload_bytes
        if len(data) > limit:
            raise InvalidRequest(f"upload: {len(data)} bytes; expected at most {limit}")
        parent = self._uploads / tenant_id
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=".up-", dir=parent))
        try:
            info = bundle.unpack(data, staging / "wd", max_bytes=limit)
            final = self._upload_dir(tenant_id, info.sha256)
            if not final.exists():
                try:
                    (staging / "wd").rename(final)
                except OSError:  # the same content landed meanwhile: keep that one
                    if not final.is_dir():
                        raise
            os.utime(final)  # uploaded now: kept for the retention from now
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return UploadOut(sha256=info.sha256, bytes=len(data), files=info.files)

    def purge_uploads(self) -> int:
        """Remove unpacked uploads last uploaded more than ``api.upload_retention_s`` ago
        (file times: the wall clock); how many."""
        before = time.time() - self._ctl.config.api.upload_retention_s
        removed = 0
        for tenant in self._uploads.iterdir() if self._uploads.is_dir() else ():
            for folder in tenant.iterdir():
                if folder.name.startswith(".up-") or folder.stat().st_mtime >= before:
                    continue  # an upload in progress, or a recent one
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def submit(self, p: Principal, body: JobCreate) -> JobOut:
        tenant_id = self._tenant_only(p)
        for key in body.env:
            if not key or key.startswith(("FASTGPU_", "RAY_")):
                raise InvalidRequest(f"env.{key}: FASTGPU_* and RAY_* are set by the platform")
        cfg = self._ctl.config
        env = {"FASTGPU_ADDRESS": f"http://{cfg.api.host}:{cfg.api.port}"}
        if body.lease is not None:
            req = self._leases.resolve(body.lease, self._leases.owner(p, None))
            env["FASTGPU_GPUS"] = (
                f"{req.min_gpus}:{req.gpus}"
                if req.min_gpus and req.min_gpus != req.gpus
                else str(req.gpus)
            )
            env["FASTGPU_GPU_TYPE"] = req.gpu_type
            env["FASTGPU_DURATION"] = str(int(req.duration_s))
        if body.sweep is not None:
            if body.lease is None:
                raise InvalidRequest("lease: a sweep runs on a lease; give --gpus")
            if body.sweep.gpus_per_trial > req.gpus:
                raise InvalidRequest(
                    f"sweep.gpus_per_trial: {body.sweep.gpus_per_trial} GPUs per trial on a "
                    f"lease of at most {req.gpus}; expected at most the lease's GPUs"
                )
            env[SWEEP_ENV] = body.sweep.to_env()
        submission_id = None
        if body.request_id:
            digest = hashlib.sha256(f"{tenant_id}:{body.request_id}".encode()).hexdigest()
            submission_id = f"fgjob-{digest[:12]}"
        spec: dict[str, object] = {"entrypoint": body.entrypoint, "env": dict(body.env)}
        if body.sweep is not None:
            spec["sweep"] = body.sweep.name
        if body.upload is not None:
            workdir = self._upload_dir(tenant_id, body.upload)
            if not workdir.is_dir():
                raise NotFound(
                    f"upload {body.upload} not found; POST the zipped folder to /uploads first"
                )
            spec["working_dir"] = str(workdir)
        # The gateway decides how the job gets its own token (a file in a tenant cluster).
        job_id = self._gateway.submit(p.name, spec, env, submission_id, self._job_token(p))
        return self.status(p, job_id)

    def _job_token(self, p: Principal) -> str:
        """A token for the job to act as its tenant, issued for it: rotating the tenant's own
        token does not break running jobs, and it expires with the longest lease."""
        from fastgpu.auth import hash_token, new_token
        from fastgpu.validation import MAX_DURATION_S

        token = new_token()
        now = self._ctl.clock()
        self._ctl.store.add_token(
            hash_token(token), p.name, False, now, now + MAX_DURATION_S, "job"
        )
        return token

    def list(
        self,
        p: Principal,
        tenant: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[JobOut]:
        scope = p.name if not p.is_admin else tenant
        if not p.is_admin and tenant not in (None, p.name):
            raise NotFound(f"tenant {tenant!r} not found")
        jobs = [JobOut(**row) for row in self._gateway.list(scope)]
        return paginate(jobs, lambda j: [j.start_time or 0, j.id], limit, cursor)

    def status(self, p: Principal, job_id: str) -> JobOut:
        """Ray's view of the job plus the lease it asked for (state and pending reason)."""
        row = self._gateway.get(p.tenant, job_id)
        out = JobOut(**row)
        owner = self._ctl.tenant(row["tenant"]) if row.get("tenant") else None
        if owner is not None:
            lease = self._ctl.store.find_lease_by_request(owner.id, lease_request_id(job_id))
            out.lease = LeaseOut.of(lease) if lease else None
        return out

    def logs(self, p: Principal, job_id: str) -> JobLogs:
        row = self._gateway.get(p.tenant, job_id)
        return JobLogs(id=job_id, logs=self._gateway.logs(row["tenant"], job_id))

    def stop(self, p: Principal, job_id: str) -> JobOut:
        row = self._gateway.get(p.tenant, job_id)
        self._gateway.stop(row["tenant"], job_id)
        return self.status(p, job_id)
