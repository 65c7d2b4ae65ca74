"""Ray jobs submitted on a tenant's behalf, through its own cluster's Jobs API (a dashboard).

:class:`TenantJobGateway` (``submit``, ``list``, ``get``, ``logs``, ``stop``, each naming the
tenant): each tenant's jobs go to its own cluster's Jobs API with that cluster's Ray token, so
a tenant can only ever see its own jobs. Each job records its tenant in Ray's job metadata
(``fastgpu.tenant``) and every read filters on it as well. The job's FastGPU token is a 0600
file of the tenant's user in its cluster home; the environment carries only its path
(``FASTGPU_TOKEN_FILE``).

The job asks for its own lease (request id ``job-<submission id>``) like any driver, and a
working directory is only ever a folder the server unpacked itself from an upload (the Jobs
client uploads it to the cluster); no path a tenant names is read.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from fastgpu.errors import NotFound, Unavailable

TENANT_KEY = "fastgpu.tenant"
#: Ray job metadata naming the sweep a job runs (``fastgpu sweep list``).
SWEEP_KEY = "fastgpu.sweep"
JOB_PREFIX = "fgjob-"


def lease_request_id(submission_id: str) -> str:
    return f"job-{submission_id}"


def _row(info: Any) -> dict[str, Any]:
    return {
        "id": info.submission_id,
        "tenant": (info.metadata or {}).get(TENANT_KEY),
        "sweep": (info.metadata or {}).get(SWEEP_KEY),
        "status": str(info.status.value if hasattr(info.status, "value") else info.status),
        "entrypoint": info.entrypoint,
        "message": info.message,
        "start_time": info.start_time,
        "end_time": info.end_time,
    }


class TenantJobGateway:
    """Each tenant's own cluster's Jobs API.

    ``connect(tenant name)`` returns the cluster's ``dashboard_url`` and ``ray_token``
    (starting it if needed); ``secret(tenant name, file name, value)`` writes a 0600 file of the
    tenant's user in its cluster home and returns its path; ``running()`` names the tenants
    whose cluster runs now (an admin's list covers those). Reads never start a stopped cluster
    (seconds, and it would reset its idle time): a cluster that is not running has no jobs to
    show.
    """

    def __init__(
        self,
        connect: Callable[[str], dict[str, str]],
        secret: Callable[[str, str, str], str],
        running: Callable[[], list[str]],
    ) -> None:
        self._connect = connect
        self._secret = secret
        self._running = running
        self._clients: dict[str, tuple[str, Any]] = {}

    def _jobs(self, tenant: str) -> Any:
        from ray.job_submission import JobSubmissionClient

        info = self._connect(tenant)
        url, token = info["dashboard_url"], info["ray_token"]
        known = self._clients.get(tenant)
        if known is None or known[0] != url:  # first use, or the cluster restarted elsewhere
            client = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
            known = self._clients[tenant] = (url, client)
        return known[1]

    def _scope(self, tenant: str | None) -> list[str]:
        """Whose clusters a read covers: the tenant's while it runs; the admin's (``tenant``
        None), every running one."""
        running = self._running()
        if tenant is None:
            return running
        return [tenant] if tenant in running else []

    def submit(
        self,
        tenant: str,
        spec: dict[str, Any],
        platform_env: dict[str, str],
        submission_id: str | None,
        token: str,
    ) -> str:
        """Submit; with a ``submission_id`` already known to Ray, return it (a retry)."""
        submission_id = submission_id or f"{JOB_PREFIX}{uuid.uuid4().hex[:12]}"
        env = {
            **spec["env"],
            **platform_env,
            "FASTGPU_TOKEN_FILE": self._secret(tenant, f"job-{submission_id}", token),
            "FASTGPU_JOB_ID": submission_id,
            "FASTGPU_LEASE_REQUEST_ID": lease_request_id(submission_id),
        }
        runtime_env: dict[str, Any] = {"env_vars": env}
        if spec.get("working_dir"):
            runtime_env["working_dir"] = spec["working_dir"]
        try:
            self._jobs(tenant).submit_job(
                entrypoint=spec["entrypoint"],
                submission_id=submission_id,
                runtime_env=runtime_env,
                metadata={TENANT_KEY: tenant}
                | ({SWEEP_KEY: str(spec["sweep"])} if spec.get("sweep") else {}),
                entrypoint_num_cpus=0,
            )
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                raise Unavailable(f"Ray's Jobs API refused the job: {exc}") from None
        return submission_id

    def list(self, tenant: str | None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for name in self._scope(tenant):
            rows += [_row(j) for j in self._jobs(name).list_jobs() if j.submission_id]
        rows = [r for r in rows if r["tenant"] and (tenant is None or r["tenant"] == tenant)]
        return sorted(rows, key=lambda r: r["start_time"] or 0)

    def get(self, tenant: str | None, submission_id: str) -> dict[str, Any]:
        """The job if ``tenant`` (None: the admin, any tenant) may see it, else NotFound."""
        if not isinstance(submission_id, str) or not submission_id.startswith(JOB_PREFIX):
            raise NotFound(f"job {submission_id!r} not found")
        for name in self._scope(tenant):
            try:
                info = self._jobs(name).get_job_info(submission_id)
            except RuntimeError:
                continue
            row = _row(info)
            if row["tenant"] is not None and tenant in (None, row["tenant"]):
                return row
        raise NotFound(f"job {submission_id!r} not found")

    def logs(self, tenant: str, submission_id: str) -> str:
        return str(self._jobs(tenant).get_job_logs(submission_id))

    def stop(self, tenant: str, submission_id: str) -> bool:
        return bool(self._jobs(tenant).stop_job(submission_id))
