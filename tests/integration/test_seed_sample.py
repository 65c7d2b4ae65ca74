"""The seed's sample (docs/examples/seed_sample.py) runs as written against a live platform.

``live_server`` (tests/integration/conftest.py) serves the control API at ``.url`` and makes
tenants with ``.tenant_token(name, **quotas)``; its config must rate A100 at perf >= 10, the
sample's minimum, so the cheapest type that meets it is one the tenant has quota for.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fastgpu.sdk import Client

pytestmark = pytest.mark.ray

SAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "seed_sample.py"


def test_seed_sample_runs_as_written(live_server: Any) -> None:
    token = live_server.tenant_token("seed-sample", A100=1)
    env = {**os.environ, "FASTGPU_TOKEN": token, "FASTGPU_ADDRESS": live_server.url}
    done = subprocess.run(
        [sys.executable, str(SAMPLE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "released: RELEASED" in done.stdout
    losses = [
        float(line.split()[-1]) for line in done.stdout.splitlines() if line.startswith("step")
    ]
    assert losses[-1] < losses[0]

    with Client(token=token, address=live_server.url) as client:
        leases = client.list_leases()
    assert [(lease.state, lease.gpus, lease.gpu_type) for lease in leases] == [
        ("RELEASED", 1, "A100")
    ]
