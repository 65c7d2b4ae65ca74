"""Shared integration fixtures: ``live_server`` is a real server process on a real local Ray
cluster with 8 logical A100s (one per test module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.platform_fixtures import Platform, local_platform


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    yield from local_platform(tmp_path_factory)
