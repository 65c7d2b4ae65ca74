"""cluster.yaml: the repository's example loads; errors name the field; the published JSON
schema is current; the overlay is a valid platform config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastgpu.config import PlatformConfig
from fastgpu.domain.cluster_file import cluster_json_schema, load_cluster_file, parse_cluster_file
from fastgpu.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def good() -> dict[str, Any]:
    return {
        "gpu_types": {"A100": {"price_per_hour": 2.0, "perf": 312}},
        "hosts": [
            {"name": "h0", "gpu_type": "A100", "devices": [0, 1]},
            {"name": "h1", "gpu_type": "A100", "devices": 2},
        ],
        "agents": {"heartbeat_s": 1, "lost_after_s": 3},
    }


def test_the_repository_cluster_yaml_is_valid_and_becomes_a_platform_config() -> None:
    spec = load_cluster_file(REPO / "cluster.yaml")
    assert [h.name for h in spec.hosts] == ["gpu-a100-1", "gpu-a100-2", "gpu-h100-1"]
    assert spec.hosts[0].device_ids() == list(range(8))
    config = PlatformConfig.model_validate(spec.platform_overlay())
    assert config.tenant_clusters.enabled
    assert config.pool is not None
    assert config.pool.agents is not None
    assert config.gpu_types["H100"].perf == 989


def test_the_published_schema_is_current() -> None:
    published = REPO / "docs" / "cluster.schema.json"
    assert published.read_text() == cluster_json_schema(), (
        "docs/cluster.schema.json is stale: run `fastgpu cluster schema > docs/cluster.schema.json`"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["hosts"][1].update(gpu_type="B200"), r"hosts\[1\]\.gpu_type"),
        (lambda d: d["hosts"][0].update(devices=[0, 0]), "devices must be 1..64 distinct"),
        (lambda d: d["hosts"][0].update(name="Bad_Name"), "hosts.0.name"),
        (lambda d: d["hosts"].append(dict(d["hosts"][0])), "names must be unique"),
        (lambda d: d.update(agents={"heartbeat_s": 5, "lost_after_s": 6}), "lost_after_s"),
        (lambda d: d.update(hostz=[]), "hostz"),
        (lambda d: d["gpu_types"]["A100"].update(price_per_hour=-1), "price_per_hour"),
        (lambda d: (d.pop("agents"), d["hosts"][1].update(devices=[1, 2])), "device 1 is in h0"),
    ],
)
def test_errors_name_the_field(change: Any, message: str) -> None:
    data = good()
    change(data)
    with pytest.raises(ConfigError, match=message):
        parse_cluster_file(data)


def test_the_overlay_of_a_one_machine_pool_has_no_agents() -> None:
    data = good()
    data.pop("agents")
    data["hosts"][1]["devices"] = [2, 3]
    overlay = parse_cluster_file(data).platform_overlay()
    assert "agents" not in overlay["pool"]
    assert PlatformConfig.model_validate(overlay).pool is not None
