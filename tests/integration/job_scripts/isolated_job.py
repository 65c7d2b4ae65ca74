"""A Ray job in a tenant's own cluster: takes its lease (its FastGPU token is a file, never a
value in its environment), runs a task per GPU, then tries to reach what is not its own (the
paths and pids in PROBE_PATHS / PROBE_PIDS) and prints one JSON line of what happened.
Used by tests/integration/test_pool_server.py."""

import json
import os
import signal

import ray

import fastgpu as fgpu


def read(path: str) -> object:
    if os.path.isfile(path):
        with open(path) as f:
            return f.read()
    return os.listdir(path)


def attempt(fn):  # type: ignore[no-untyped-def]
    try:
        fn()
        return "allowed"
    except OSError as exc:
        return type(exc).__name__


ray.init()
client = fgpu.Client()  # FASTGPU_TOKEN_FILE and FASTGPU_ADDRESS come from the platform
lease = client.request_lease(
    int(os.environ["FASTGPU_GPUS"]),
    os.environ["FASTGPU_GPU_TYPE"],
    float(os.environ["FASTGPU_DURATION"]),
    request_id=os.environ["FASTGPU_LEASE_REQUEST_ID"],
    wait=True,
    timeout=240,
)


@ray.remote(num_gpus=1, num_cpus=0)
def where() -> str:
    return os.environ["CUDA_VISIBLE_DEVICES"]


devices = ray.get(
    [
        where.options(scheduling_strategy=lease.scheduling_strategy(i)).remote()
        for i in range(lease.gpus)
    ]
)
token = client.token
env_text = "\n".join(f"{k}={v}" for k, v in os.environ.items())
probes = {path: attempt(lambda p=path: read(p)) for path in json.loads(os.environ["PROBE_PATHS"])}
probes |= {
    f"kill {pid}": attempt(lambda p=pid: os.kill(p, signal.SIGTERM))
    for pid in json.loads(os.environ["PROBE_PIDS"])
}
print(
    json.dumps(
        {
            "lease": lease.id,
            "state": lease.state,
            "devices": sorted(devices),
            "cluster_gpus": ray.cluster_resources().get("GPU", 0),
            "token_in_env": token in env_text,
            "uid": os.getuid(),
            "probes": probes,
        }
    )
)
lease.release()
