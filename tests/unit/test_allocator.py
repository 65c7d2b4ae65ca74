"""The seed's interface offline: the lease requests Allocator sends (over httpx.MockTransport),
Device in torch calls, the GPU index mapping (fake CUDA_VISIBLE_DEVICES), and the seed's sample
run as written against a fake lease API."""

from __future__ import annotations

import json
import math
import pickle
import runpy
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

import fastgpu as fgpu
from fastgpu.allocator import Allocator, Device, set_device
from fastgpu.errors import InvalidRequest
from fastgpu.sdk import Client

SAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "seed_sample.py"


class FakeLeaseApi:
    """The lease endpoints the Allocator uses, granting every request at once."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.released: list[str] = []
        self.leases: dict[str, dict[str, Any]] = {}
        self.headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(request.headers)
        path = request.url.path.removeprefix("/api/v1")
        if request.method == "POST" and path == "/leases":
            body = json.loads(request.content)
            self.requests.append(body)
            lease_id = f"l-{len(self.leases) + 1}"
            self.leases[lease_id] = {
                "id": lease_id,
                "state": "RESERVED",
                "tenant": "seed",
                "gpus": body["gpus"],
                "gpu_type": body.get("gpu_type") or "A100",
            }
            return httpx.Response(200, json=self.leases[lease_id])
        parts = path.strip("/").split("/")
        lease = self.leases[parts[1]]
        if request.method == "POST" and parts[2:] == ["release"]:
            self.released.append(lease["id"])
            lease["state"] = "RELEASED"
        return httpx.Response(200, json=lease)


@pytest.fixture
def api() -> FakeLeaseApi:
    return FakeLeaseApi()


@pytest.fixture
def allocator(api: FakeLeaseApi) -> Iterator[Allocator]:
    client = Client(token="t", address="http://fastgpu.test", transport=httpx.MockTransport(api))
    with Allocator(client=client) as allocator:
        yield allocator


# -- request_resource: what goes over the wire ---------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "sent", "absent"),
    [
        pytest.param(
            {"perf": 10.0, "time": 100},
            {"gpus": 2, "perf": 10.0, "duration": 6000.0, "strategy": "PACK"},
            ["gpu_type"],
            id="seed-perf-number-time-minutes",
        ),
        pytest.param({"perf": 7}, {"perf": 7.0}, ["gpu_type", "duration"], id="int-perf"),
        pytest.param({"time": 1.5}, {"duration": 90.0}, ["perf"], id="fractional-minutes"),
        pytest.param(
            {"perf": "A100", "time": "30m"},
            {"gpu_type": "A100", "duration": "30m"},
            ["perf"],
            id="perf-string-is-a-type-name",
        ),
        pytest.param(
            {"perf": "A100", "gpu_type": "A100"}, {"gpu_type": "A100"}, ["perf"], id="same-twice"
        ),
        pytest.param(
            {"perf": 10.0, "gpu_type": "H100", "preemptible": True},
            {"perf": 10.0, "gpu_type": "H100", "preemptible": True},
            [],
            id="perf-and-type",
        ),
    ],
)
def test_request_body(
    allocator: Allocator,
    api: FakeLeaseApi,
    kwargs: dict[str, Any],
    sent: dict[str, Any],
    absent: list[str],
) -> None:
    lease = allocator.request_resource(2, **kwargs)
    assert lease.state == "RESERVED"
    (body,) = api.requests
    assert {k: body[k] for k in sent} == sent
    for key in absent:
        assert key not in body
    assert body["request_id"].startswith("sdk-")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"perf": True}, "perf: got True"),
        ({"perf": 0}, "perf: got 0"),
        ({"perf": -1.0}, "perf: got -1.0"),
        ({"perf": math.nan}, "perf: got nan"),
        ({"perf": math.inf}, "perf: got inf"),
        ({"perf": "A100", "gpu_type": "H100"}, "name the type once"),
        ({"time": True}, "time: got True"),
        ({"time": 0}, "time: got 0"),
        ({"time": math.inf}, "time: got inf"),
        ({"time": 31 * 24 * 60}, "at most 43200"),
    ],
)
def test_bad_arguments_fail_before_any_request(
    allocator: Allocator, api: FakeLeaseApi, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidRequest, match=match):
        allocator.request_resource(1, **kwargs)
    assert api.requests == []


def test_leaving_the_block_releases_what_is_still_held(api: FakeLeaseApi) -> None:
    client = Client(token="t", address="http://fastgpu.test", transport=httpx.MockTransport(api))
    with Allocator(client=client) as allocator:
        first = allocator.request_resource(1, perf=10.0, time=5)
        second = allocator.request_resource(1, perf=10.0, time=5)
        first.release()
    assert api.released == [first.id, second.id]  # first once, by hand; second on exit
    assert client.get_lease(second.id).state == "RELEASED"  # an injected client stays open


def test_token_comes_from_the_environment(
    api: FakeLeaseApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASTGPU_TOKEN", "fgpu_from_env")
    monkeypatch.setenv("FASTGPU_ADDRESS", "http://fastgpu.test")
    with Allocator() as allocator:
        assert allocator.client.token == "fgpu_from_env"
        assert allocator.client.address == "http://fastgpu.test"
    with pytest.raises(RuntimeError, match="closed"):
        allocator.client.whoami()  # one it made itself is closed on exit
    with Allocator(client=Client(transport=httpx.MockTransport(api))) as allocator:
        allocator.request_resource(1, perf=1.0)
    assert api.headers[0]["authorization"] == "Bearer fgpu_from_env"


# -- Device ---------------------------------------------------------------------------------
@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A process Ray gave physical GPUs 3 and 5; records torch.cuda.set_device calls."""
    chosen: list[int] = []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


@pytest.mark.usefixtures("no_cuda")
def test_cpu_device_works_wherever_torch_takes_a_device() -> None:
    device = Device("cpu")
    assert device.set_device(0) is device
    assert device == "cpu"
    assert repr(device) == "Device('cpu')"
    model = torch.nn.Linear(3, 2)
    assert model.to(device) is model
    assert model.to(device=device).weight.device.type == "cpu"
    assert torch.ones(2).to(device).device == torch.device("cpu")
    assert torch.zeros(2, device=device).device.type == "cpu"
    assert torch.device(device) == torch.device("cpu")
    back = pickle.loads(pickle.dumps(device))
    assert type(back) is Device
    assert back == "cpu"


@pytest.mark.usefixtures("no_cuda")
def test_without_cuda_auto_is_cpu_and_picking_a_gpu_is_a_no_op() -> None:
    assert Device() == "cpu"
    set_device(3)  # nothing to pick; a GPU script still runs on a CPU machine
    with pytest.raises(InvalidRequest, match="use Device\\(\\) to fall back"):
        Device("cuda")


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("cuda:1", r"expected 'cuda' and then set_device\(1\)"),
        ("tpu", "expected 'cpu', 'cuda' or nothing"),
        ("CPU", "expected 'cpu', 'cuda' or nothing"),
    ],
)
def test_device_kinds(kind: str, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        Device(kind)


@pytest.mark.parametrize("bad", [True, -1, 1.0, "0"])
def test_gpu_index_must_be_a_non_negative_int(bad: Any) -> None:
    with pytest.raises(InvalidRequest, match="expected a GPU index"):
        Device("cpu").set_device(bad)


def test_gpu_index_counts_the_gpus_ray_gave_the_process(fake_gpus: list[int]) -> None:
    device = Device()
    assert device == "cuda"
    assert Device("cuda") == "cuda"
    device.set_device(1)  # physical GPU 5, which CUDA numbers 1 in this process
    fgpu.set_device(0)
    assert fake_gpus == [1, 0]
    with pytest.raises(InvalidRequest, match=r"got 2; this process has 2 GPU\(s\) \(3, 5\)"):
        device.set_device(2)
    Device("cpu").set_device(1)  # a CPU device never touches CUDA
    assert fake_gpus == [1, 0]


def test_without_cuda_visible_devices_every_gpu_torch_sees_counts(
    fake_gpus: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    set_device(1)
    with pytest.raises(InvalidRequest, match=r"\(0, 1\); expected 0..1"):
        set_device(2)
    assert fake_gpus == [1]


# -- the seed's sample, as written ----------------------------------------------------------
@pytest.mark.usefixtures("no_cuda")
def test_seed_sample_runs_as_written(
    api: FakeLeaseApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = Client(token="t", address="http://fastgpu.test", transport=httpx.MockTransport(api))
    monkeypatch.setattr(fgpu, "Allocator", partial(Allocator, client=client))
    runpy.run_path(str(SAMPLE), run_name="__main__")
    (body,) = api.requests
    assert body["perf"] == 10.0
    assert body["duration"] == 6000.0  # time=100 minutes
    assert api.released == ["l-1"]
    out = capsys.readouterr().out
    losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("step")]
    assert losses[-1] < losses[0]
    assert "released: RELEASED" in out
