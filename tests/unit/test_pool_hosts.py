"""The pool's inventory and device assignment (pure), and its config's validation."""

from __future__ import annotations

import pytest

from fastgpu.config import parse_config
from fastgpu.errors import ConfigError, Conflict
from fastgpu.pool.hosts import (
    Host,
    default_pool_spec,
    hosts_from_spec,
    pick_devices,
    taken_devices,
)

H0 = Host("host-0", "A100", (0, 1, 2, 3))
H1 = Host("host-1", "A100", (4, 5))
HOSTS = {h.name: h for h in (H0, H1)}


def test_default_pool_splits_devices_into_disjoint_hosts() -> None:
    hosts = hosts_from_spec(default_pool_spec(8, 2, "A100"))
    assert [(h.name, h.devices) for h in hosts] == [
        ("host-0", (0, 1, 2, 3)),
        ("host-1", (4, 5, 6, 7)),
    ]
    with pytest.raises(ValueError, match="multiple"):
        default_pool_spec(3, 2, "A100")


def test_pick_devices_takes_the_lowest_free_ids_and_never_a_taken_one() -> None:
    taken = taken_devices([{"host-0": (0, 2)}, {"host-1": (4,)}])
    assert pick_devices(HOSTS, {"host-0": 2, "host-1": 1}, taken) == {
        "host-0": (1, 3),
        "host-1": (5,),
    }
    with pytest.raises(Conflict, match="host-0 has 2 free GPUs; 3 asked"):
        pick_devices(HOSTS, {"host-0": 3}, taken)
    with pytest.raises(Conflict, match="not in the pool"):
        pick_devices(HOSTS, {"host-9": 1}, taken)
    dead = {"host-1": Host("host-1", "A100", (4, 5), alive=False)}
    with pytest.raises(Conflict, match="not alive"):
        pick_devices(dead, {"host-1": 1}, {})


def test_a_device_in_two_assignments_is_a_conflict() -> None:
    with pytest.raises(Conflict, match=r"devices \[2\] of host host-0"):
        taken_devices([{"host-0": (1, 2)}, {"host-0": (2, 3)}])


BASE = {"gpu_types": {"A100": {"price_per_hour": 2.0}}}


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ({"hosts": []}, "hosts"),
        ({"hosts": [{"name": "h", "gpu_type": "A100", "devices": [0, 0]}]}, "distinct"),
        ({"hosts": [{"name": "h", "gpu_type": "A100", "devices": [-1]}]}, "distinct"),
        ({"hosts": [{"name": "H!", "gpu_type": "A100", "devices": [0]}]}, "name"),
        ({"hosts": [{"name": "h", "gpu_type": "T4", "devices": [0]}]}, "not in gpu_types"),
        (
            {
                "hosts": [
                    {"name": "a", "gpu_type": "A100", "devices": [0, 1]},
                    {"name": "b", "gpu_type": "A100", "devices": [1]},
                ]
            },
            "reuses device ids",
        ),
        (
            {
                "hosts": [
                    {"name": "a", "gpu_type": "A100", "devices": [0]},
                    {"name": "a", "gpu_type": "A100", "devices": [1]},
                ]
            },
            "unique",
        ),
    ],
)
def test_bad_pool_config_names_the_problem(pool: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({**BASE, "pool": pool})


def test_tenant_cluster_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="isolation"):
        parse_config({**BASE, "tenant_clusters": {"isolation": "none"}})
    config = parse_config({**BASE, "tenant_clusters": {"idle_timeout_s": 30}})
    assert config.tenant_clusters.isolation == "auto"
