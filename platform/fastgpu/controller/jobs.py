"""Ray jobs submitted on a tenant's behalf, through Ray's Jobs API (a dashboard).

Two gateways, one interface (``submit``, ``list``, ``get``, ``logs``, ``stop``, each naming
the tenant):

* :class:`JobGateway` (the shared cluster of v1): the server is the only caller of the one
  Jobs API; each job records its tenant in Ray's job metadata (``fastgpu.tenant``) and every
  read filters on it. The job's token travels in its runtime env (``FASTGPU_TOKEN``): any job
  can read it there, which is why v1 isolates nothing inside Ray.
* :class:`TenantJobGateway` (tenant clusters): each tenant's jobs go to its own cluster's Jobs
  API with that cluster's Ray token, so a tenant can only ever see its own jobs. The job's
  token is a 0600 file of the tenant's user in its cluster home; the environment carries only
  its path (``FASTGPU_TOKEN_FILE``).

Either way the job asks for its own lease (request id ``job-<submission id>``) like any driver,
and a working directory is only ever a folder the server unpacked itself from an upload (the
Jobs client uploads it to the cluster); no path a tenant names is read.
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


class JobGateway:
    """The shared cluster's Jobs API (v1)."""

    def __init__(self, dashboard_url: str | None) -> None:
        self._url = dashboard_url
        self._client: Any = None

    # -- the Jobs client and how a job gets its token (what the tenant gateway changes) -----
    def _jobs(self, tenant: str) -> Any:
        if not self._url:
            raise Unavailable(
                "the Ray Jobs API is not available (no dashboard); start the cluster with "
                "`fastgpu up`"
            )
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(self._url)
        return self._client

    def _token_env(self, tenant: str, submission_id: str, token: str) -> dict[str, str]:
        return {"FASTGPU_TOKEN": token}

    def _tenants(self) -> list[str]:
        """Tenants whose jobs an unscoped (admin) list covers: one shared API, so all."""
        return [""]

    # -- the interface -------------------------------------------------------------------------
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
            **self._token_env(tenant, submission_id, token),
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
        for name in [tenant] if tenant is not None else self._tenants():
            rows += [_row(j) for j in self._jobs(name).list_jobs() if j.submission_id]
        rows = [r for r in rows if r["tenant"] and (tenant is None or r["tenant"] == tenant)]
        return sorted(rows, key=lambda r: r["start_time"] or 0)

    def get(self, tenant: str | None, submission_id: str) -> dict[str, Any]:
        """The job if ``tenant`` (None: the admin, any tenant) may see it, else NotFound."""
        if not isinstance(submission_id, str) or not submission_id.startswith(JOB_PREFIX):
            raise NotFound(f"job {submission_id!r} not found")
        for name in [tenant] if tenant is not None else self._tenants():
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


class TenantJobGateway(JobGateway):
    """Each tenant's own cluster's Jobs API (tenant clusters on).

    ``connect(tenant name)`` returns the cluster's ``dashboard_url`` and ``ray_token``
    (starting it if needed); ``secret(tenant name, file name, value)`` writes a 0600 file of the
    tenant's user in its cluster home and returns its path; ``running()`` names the tenants
    whose cluster runs now (an admin's list covers those).
    """

    def __init__(
        self,
        connect: Callable[[str], dict[str, str]],
        secret: Callable[[str, str, str], str],
        running: Callable[[], list[str]],
    ) -> None:
        super().__init__(None)
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

    def _token_env(self, tenant: str, submission_id: str, token: str) -> dict[str, str]:
        return {"FASTGPU_TOKEN_FILE": self._secret(tenant, f"job-{submission_id}", token)}

    def _tenants(self) -> list[str]:
        return self._running()

    # Reads never start a stopped cluster (seconds, and it would reset its idle time): a
    # cluster that is not running has no jobs to show.
    def list(self, tenant: str | None) -> list[dict[str, Any]]:
        if tenant is not None and tenant not in self._running():
            return []
        return super().list(tenant)

    def get(self, tenant: str | None, submission_id: str) -> dict[str, Any]:
        if tenant is not None and tenant not in self._running():
            raise NotFound(f"job {submission_id!r} not found")
        return super().get(tenant, submission_id)
