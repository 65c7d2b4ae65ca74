"""Ray jobs submitted on a tenant's behalf, through Ray's Jobs API (the dashboard).

The controller is the only caller of Ray's Jobs API (it holds the cluster's Ray token; tenants
never do). Each job records its tenant in Ray's job metadata (``fastgpu.tenant``); every read
filters on it, so a tenant sees only its own jobs and another tenant's job id answers
"not found". The job's environment carries the tenant's FastGPU token and address, so the job
asks for its own lease (request id ``job-<submission id>``) like any driver.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from fastgpu.errors import InvalidRequest, NotFound, Unavailable

TENANT_KEY = "fastgpu.tenant"
MAX_ENTRYPOINT = 4096
MAX_ENV = 64


def lease_request_id(submission_id: str) -> str:
    return f"job-{submission_id}"


class JobGateway:
    def __init__(self, dashboard_url: str | None, forbidden_roots: list[Path]) -> None:
        self._url = dashboard_url
        self._client: Any = None
        self._forbidden = [p.resolve() for p in forbidden_roots]

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

    def check_spec(self, spec: Any) -> dict[str, Any]:
        if not isinstance(spec, dict):
            raise InvalidRequest("job: expected a mapping of fields")
        unknown = set(spec) - {"entrypoint", "env", "working_dir", "lease", "name"}
        if unknown:
            raise InvalidRequest(f"{sorted(unknown)[0]}: unknown field; remove it")
        entry = spec.get("entrypoint")
        if not isinstance(entry, str) or not entry.strip() or len(entry) > MAX_ENTRYPOINT:
            raise InvalidRequest(
                f"entrypoint: got {entry!r}; expected a command of 1 to {MAX_ENTRYPOINT} characters"
            )
        env = spec.get("env") or {}
        if not isinstance(env, dict) or len(env) > MAX_ENV:
            raise InvalidRequest(f"env: expected a mapping of at most {MAX_ENV} variables")
        for key, value in env.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise InvalidRequest(f"env.{key}: expected a string value")
            if key.startswith(("FASTGPU_", "RAY_")):
                raise InvalidRequest(f"env.{key}: FASTGPU_* and RAY_* are set by the platform")
        wd = spec.get("working_dir")
        if wd is not None:
            if not isinstance(wd, str) or not Path(wd).is_absolute() or not Path(wd).is_dir():
                raise InvalidRequest(
                    f"working_dir: got {wd!r}; expected an absolute path to an existing folder"
                )
            resolved = Path(wd).resolve()
            for root in self._forbidden:
                if resolved == root or root in resolved.parents or resolved in root.parents:
                    raise InvalidRequest(
                        "working_dir: must not contain or lie inside the platform's state folder"
                    )
        return {"entrypoint": entry, "env": env, "working_dir": wd}

    def submit(self, tenant: str, spec: dict[str, Any], platform_env: dict[str, str]) -> str:
        submission_id = f"fgjob-{uuid.uuid4().hex[:12]}"
        env = {
            **spec["env"],
            **platform_env,
            "FASTGPU_JOB_ID": submission_id,
            "FASTGPU_LEASE_REQUEST_ID": lease_request_id(submission_id),
        }
        runtime_env: dict[str, Any] = {"env_vars": env}
        if spec.get("working_dir"):
            runtime_env["working_dir"] = spec["working_dir"]
        self._jobs().submit_job(
            entrypoint=spec["entrypoint"],
            submission_id=submission_id,
            runtime_env=runtime_env,
            metadata={TENANT_KEY: tenant},
            entrypoint_num_cpus=0,
        )
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
