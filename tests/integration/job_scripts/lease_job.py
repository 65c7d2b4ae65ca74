"""A tiny Ray job: asks the platform for the lease its submitter gave it, runs a task on each
of its GPUs, reports and releases. Used by tests/integration/test_local_up.py."""

import os

import ray

import fastgpu as fgpu

ray.init()
client = fgpu.Client()  # FASTGPU_TOKEN and FASTGPU_ADDRESS come from the platform
gpus = os.environ["FASTGPU_GPUS"]
low, _, high = gpus.partition(":")
lease = client.request_lease(
    int(high or low),
    os.environ["FASTGPU_GPU_TYPE"],
    float(os.environ["FASTGPU_DURATION"]),
    min_gpus=int(low) if high else None,
    request_id=os.environ["FASTGPU_LEASE_REQUEST_ID"],
    wait=True,
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
job_id = os.environ["FASTGPU_JOB_ID"]
print(f"job {job_id} tenant {lease.tenant} lease {lease.state} gpus {sorted(devices)}")
lease.release()
