"""The SDK's sweep calls, mixed into :class:`fastgpu.sdk.Client`. A sweep is a job submitted
with a sweep spec (``submit_job(..., sweep=...)``); these find a sweep's jobs by its name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastgpu.errors import NotFound


class SweepCalls:
    if TYPE_CHECKING:  # provided by Client

        def list_jobs(self) -> list[dict[str, Any]]: ...
        def job_status(self, job_id: str) -> dict[str, Any]: ...
        def job_logs(self, job_id: str) -> str: ...
        def stop_job(self, job_id: str) -> dict[str, Any]: ...
        def list_models(self, name: str | None = None, tenant: str | None = None) -> list[Any]: ...

    def list_sweeps(self) -> list[dict[str, Any]]:
        """Your sweeps' jobs (every submission; a resubmission resumes the same sweep)."""
        return [j for j in self.list_jobs() if j.get("sweep")]

    def _sweep_job(self, name: str) -> dict[str, Any]:
        jobs = [j for j in self.list_sweeps() if j["sweep"] == name]
        if not jobs:
            raise NotFound(f"sweep {name!r} not found")
        return max(jobs, key=lambda j: j.get("start_time") or 0)

    def sweep_status(self, name: str) -> dict[str, Any]:
        """The sweep's latest job (state, lease and why it waits), its submissions, and the
        model versions it registered."""
        job = self.job_status(self._sweep_job(name)["id"])
        runs = [j["id"] for j in self.list_sweeps() if j["sweep"] == name]
        models = [
            m["ref"] for m in self.list_models() if (m.get("lineage") or {}).get("sweep") == name
        ]
        return {"sweep": name, "job": job, "submissions": runs, "models": models}

    def sweep_logs(self, name: str) -> str:
        return self.job_logs(self._sweep_job(name)["id"])

    def stop_sweep(self, name: str) -> dict[str, Any]:
        """Stop the sweep's running job; its experiment stays, resubmitting resumes it."""
        return self.stop_job(self._sweep_job(name)["id"])
