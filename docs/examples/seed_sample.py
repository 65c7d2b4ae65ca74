"""The seed's sample, run as written: book GPUs by speed, train a tiny model, give them back.

Needs a running platform whose config rates at least one GPU type at perf >= 10, and a tenant
token: ``FASTGPU_TOKEN=fgpu_... FASTGPU_ADDRESS=http://127.0.0.1:8470 python seed_sample.py``.
It trains on the CPU (``Device("cpu")``) so it runs anywhere; inside a task on the lease,
``Device("cuda")`` would put the model on the lease's GPU.
"""

import torch

import fastgpu as fgpu

gpu_count = 1

with fgpu.Allocator() as allocator:
    resource_request = allocator.request_resource(gpu_count, perf=10.0, time=100)
    print(f"lease {resource_request.id}: {resource_request.gpus} x {resource_request.gpu_type}")

    device = fgpu.Device("cpu")
    device.set_device(0)

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, :4].sum(dim=1) > x[:, 4:].sum(dim=1)).long()  # a tiny synthetic dataset
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()

    for step in range(50):
        optimizer.zero_grad()
        loss = loss_fn(model(x.to(device)), y.to(device))
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == 49:
            print(f"step {step:2d} loss {loss.item():.3f}")

    resource_request.release()
    print(f"released: {resource_request.state}")
