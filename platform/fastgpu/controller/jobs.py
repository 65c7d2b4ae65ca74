"""Ray jobs submitted on a tenant's behalf, through Ray's Jobs API (the dashboard).

The server is the only caller of Ray's Jobs API (it holds the cluster's Ray token; tenants
never do). Each job records its tenant in Ray's job metadata (``fastgpu.tenant``); every read
filters on it, so a tenant sees only its own jobs and another tenant's job id answers
"not found". The job's environment carries the tenant's FastGPU token and address, so the job
asks for its own lease (request id ``job-<submission id>``) like any driver (issue 9 replaces
this with the tenant's own cluster). A working directory is only ever a folder the server
unpacked itself from an upload; no path a tenant names is read.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastgpu.errors import NotFound, Unavailable

TENANT_KEY = "fastgpu.tenant"


def lease_request_id(submission_id: str) -> str:
    return f"job-{submission_id}"


class JobGateway:
    def __init__(self, dashboard_url: str | None) -> None:
        self._url = dashboard_url
        self._client: Any = None

    def _jobs(self) -> Any:
        if not self._url:
            raise Unavailable(
                "the Ray Jobs API is not available (no dashboard); start the cluster with "
                "`fastgpu up`"
            )
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(self._url)
        return self._client

    def submit(
        self,
        tenant: str,
        spec: dict[str, Any],
        platform_env: dict[str, str],
        submission_id: str | None = None,
    ) -> str:
        """Submit; with a ``submission_id`` already known to Ray, return it (a retry)."""
        submission_id = submission_id or f"fgjob-{uuid.uuid4().hex[:12]}"
        env = {
            **spec["env"],
            **platform_env,
            "FASTGPU_JOB_ID": submission_id,
            "FASTGPU_LEASE_REQUEST_ID": lease_request_id(submission_id),
        }
        runtime_env: dict[str, Any] = {"env_vars": env}
        if spec.get("working_dir"):
            runtime_env["working_dir"] = spec["working_dir"]
        try:
            self._jobs().submit_job(
                entrypoint=spec["entrypoint"],
                submission_id=submission_id,
                runtime_env=runtime_env,
                metadata={TENANT_KEY: tenant},
                entrypoint_num_cpus=0,
            )
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                raise Unavailable(f"Ray's Jobs API refused the job: {exc}") from None
        return submission_id

    @staticmethod
    def _row(info: Any) -> dict[str, Any]:
        return {
            "id": info.submission_id,
            "tenant": (info.metadata or {}).get(TENANT_KEY),
            "status": str(info.status.value if hasattr(info.status, "value") else info.status),
            "entrypoint": info.entrypoint,
            "message": info.message,
            "start_time": info.start_time,
            "end_time": info.end_time,
        }

    def list(self, tenant: str | None) -> list[dict[str, Any]]:
        rows = [self._row(j) for j in self._jobs().list_jobs() if j.submission_id]
        rows = [r for r in rows if r["tenant"] and (tenant is None or r["tenant"] == tenant)]
        return sorted(rows, key=lambda r: r["start_time"] or 0)

    def get(self, tenant: str | None, submission_id: str) -> dict[str, Any]:
        if not isinstance(submission_id, str) or not submission_id.startswith("fgjob-"):
            raise NotFound(f"job {submission_id!r} not found")
        try:
            info = self._jobs().get_job_info(submission_id)
        except RuntimeError:
            raise NotFound(f"job {submission_id!r} not found") from None
        row = self._row(info)
        if row["tenant"] is None or (tenant is not None and row["tenant"] != tenant):
            raise NotFound(f"job {submission_id!r} not found")
        return row

    def logs(self, submission_id: str) -> str:
        return str(self._jobs().get_job_logs(submission_id))

    def stop(self, submission_id: str) -> bool:
        return bool(self._jobs().stop_job(submission_id))
