"""Config loading: valid files parse; invalid ones name the field, the value and what is
expected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastgpu.config import config_json_schema, load_config
from fastgpu.errors import ConfigError

GOOD = """
gpu_types:
  A100: {price_per_hour: 3.5, cpus_per_gpu: 4}
  H100: {price_per_hour: 7}
tenants:
  vision:
    quotas: {A100: {nominal: 4, borrowing_limit: 2}, H100: {nominal: 1, lending_limit: 0}}
    weight: 2
    budget: {period: month, money: 5000}
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "fastgpu.yaml"
    p.write_text(text)
    return p


def test_good_config(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.gpu_types["A100"].price_per_hour == 3.5
    q = cfg.tenants["vision"].quota("A100")
    assert (q.nominal, q.borrowing_limit, q.lending_limit) == (4, 2, None)
    assert cfg.tenants["vision"].quota("B200").nominal == 0
    assert cfg.api.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "gpu_types: {A100: {price_per_hour: -1}}",
            "gpu_types.A100.price_per_hour: got -1; expected greater than or equal to 0",
        ),
        (
            "gpu_types: {A100: {price_per_hour: 1, colour: red}}",
            "gpu_types.A100.colour: unknown field",
        ),
        (
            "gpu_types: {A100: {price_per_hour: 1}}\ntenants: {t: {quotas: {A100: {nominal: -2}}}}",
            "tenants.t.quotas.A100.nominal: got -2",
        ),
        (
            "gpu_types: {A100: {price_per_hour: 1}}\ntenants: {t: {quotas: {H100: {nominal: 2}}}}",
            "'H100', which is not in gpu_types (A100)",
        ),
        ("gpu_types: {A100: {price_per_hour: 1}}\ntenants: {Bad_Name: {}}", "tenant names"),
        ("gpu_types: {}", "gpu_types: got {}"),
        ("tenants: {}", "gpu_types: missing"),
        (
            "gpu_types: {A100: {price_per_hour: 1}}\ntenants: {t: {budget: {period: month}}}",
            "gpu_hours, money or both",
        ),
        ("gpu_types: {A100: {price_per_hour: lots}}", "gpu_types.A100.price_per_hour: got 'lots'"),
        ("- just\n- a list", "expected a mapping"),
        ("gpu_types: {A100: {price_per_hour: 1}\n", "not valid YAML"),
    ],
)
def test_bad_config_names_field_value_and_expectation(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))
    assert expected in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_schema_documents_every_field() -> None:
    schema = json.loads(config_json_schema())
    defs = schema["$defs"]
    for name, model in [("PlatformConfig", schema), *defs.items()]:
        for field, spec in model.get("properties", {}).items():
            assert spec.get("description"), f"{name}.{field} has no description"
        assert model.get("additionalProperties") is False, name


def test_published_schema_is_current() -> None:
    published = Path(__file__).resolve().parents[2] / "docs" / "config.schema.json"
    assert json.loads(published.read_text()) == json.loads(config_json_schema()), (
        "docs/config.schema.json is stale: run `fastgpu config schema > docs/config.schema.json`"
    )


def test_shipped_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "docs" / "examples" / "fastgpu.yaml")
    assert set(cfg.gpu_types) == {"A100", "H100"}


def test_tenant_clusters_are_the_default_and_the_server_needs_a_pool(tmp_path: Path) -> None:
    """Isolation is the default; a server given no GPUs to carve refuses to start and names
    the field, rather than starting a platform that cannot grant a lease."""
    import subprocess
    import sys

    cfg = load_config(_write(tmp_path, GOOD))
    (tmp_path / "x.yaml").write_text(GOOD)
    assert cfg.tenant_clusters.enabled is True
    assert cfg.pool is None  # `fastgpu up` fills it in from --gpus/--nodes
    out = subprocess.run(
        [sys.executable, "-m", "fastgpu.cli.main", "server", "--config", str(tmp_path / "x.yaml")],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "pool.hosts" in " ".join(out.stderr.split())


def test_configs_of_the_removed_shared_cluster_are_refused_saying_what_to_do(
    tmp_path: Path,
) -> None:
    """The shared cluster (v1) is gone: `enabled: false` and its `ray:` ports are refused, each
    named with what to do instead, both in one report; `enabled: true` (every config an older
    `fastgpu up` saved says so) still loads."""
    kept = load_config(_write(tmp_path, GOOD + "tenant_clusters: {enabled: true}\n"))
    assert kept.tenant_clusters.enabled is True
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, GOOD + "tenant_clusters: {enabled: false}\n"))
    message = str(err.value)
    assert "tenant_clusters.enabled: got False; expected true (or delete the line)" in message
    assert "the shared cluster of v1 was removed" in message
    assert "set pool.hosts, or let `fastgpu up --gpus N`" in message
    old = GOOD + "tenant_clusters: {enabled: false}\nray: {gcs_port: 6380, dashboard_port: 8266}\n"
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, old))
    lines = str(err.value).splitlines()
    assert lines[0] == f"{tmp_path / 'fastgpu.yaml'} is invalid:"
    assert lines[1].startswith("ray: got a `ray` section (the shared cluster's ports); expected "
                               "none, delete it: the shared cluster of v1 was removed")  # fmt: skip
    assert lines[2].startswith("tenant_clusters.enabled: got False; expected true")


def test_a_config_an_older_up_saved_loads_without_its_ray_ports(tmp_path: Path) -> None:
    """`fastgpu up` of an older FastGPU saved the shared cluster's `ray:` ports in every state
    dir; FastGPU wrote them, not the operator, so `up` and `down` drop them there. A state dir
    of a platform that ran the shared cluster is still refused."""
    from fastgpu.local import load_saved_config

    saved = GOOD + "tenant_clusters: {enabled: true}\nray: {gcs_port: 6380}\n"
    assert load_saved_config(_write(tmp_path, saved)).tenant_clusters.enabled is True
    shared = GOOD + "tenant_clusters: {enabled: false}\nray: {gcs_port: 6380}\n"
    with pytest.raises(ConfigError, match="the shared cluster of v1 was removed"):
        load_saved_config(_write(tmp_path, shared))


@pytest.mark.parametrize(
    "args",
    [["up", "--shared-cluster"], ["server", "--config", "x.yaml", "--ray-address", "1.2.3.4:6379"]],
)
def test_the_shared_clusters_flags_are_refused_saying_what_to_do(args: list[str]) -> None:
    from typer.testing import CliRunner

    from fastgpu.cli.main import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    said = " ".join(result.output.replace("│", " ").split())
    assert "no longer exists: the shared cluster of v1 was removed" in said
    assert "pool.hosts" in said
