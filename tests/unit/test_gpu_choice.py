"""Choosing a GPU type from a minimum per-GPU perf: the table of cases and the invariant."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastgpu.config import GpuTypeSpec
from fastgpu.domain.gpu_choice import check_perf, choose_gpu_type
from fastgpu.errors import InvalidRequest


def gpu(price: float, perf: float = 0.0) -> GpuTypeSpec:
    return GpuTypeSpec(price_per_hour=price, perf=perf)


CLUSTER = {
    "T4": gpu(0.5),  # unrated
    "L4": gpu(0.8, 30),
    "A100": gpu(3.2, 312),
    "H100": gpu(6.9, 989),
}


@pytest.mark.parametrize(
    ("gpu_type", "perf", "allowed", "expected"),
    [
        pytest.param(None, 10.0, None, "L4", id="cheapest-that-meets"),
        pytest.param(None, 30, None, "L4", id="meets-is-at-least"),
        pytest.param(None, 30.5, None, "A100", id="just-over-skips-to-next"),
        pytest.param(None, 500, None, "H100", id="only-the-fastest"),
        pytest.param(None, 10.0, {"A100", "H100"}, "A100", id="allowed-narrows"),
        pytest.param(None, 10.0, ["H100", "MI300"], "H100", id="unknown-allowed-ignored"),
        pytest.param("H100", 10.0, {"A100"}, "H100", id="named-type-ignores-allowed"),
        pytest.param("A100", None, None, "A100", id="name-only"),
        pytest.param("T4", None, None, "T4", id="unrated-by-name"),
        pytest.param("A100", 312, None, "A100", id="named-meets"),
    ],
)
def test_choice(
    gpu_type: str | None, perf: float | None, allowed: set[str] | None, expected: str
) -> None:
    assert choose_gpu_type(CLUSTER, gpu_type=gpu_type, perf=perf, allowed=allowed) == expected


def test_equal_price_goes_to_the_faster_type_then_the_name() -> None:
    types = {"b": gpu(1.0, 50), "a": gpu(1.0, 50), "slow": gpu(1.0, 20), "c": gpu(1.0, 80)}
    assert choose_gpu_type(types, gpu_type=None, perf=10, allowed=None) == "c"
    del types["c"]
    assert choose_gpu_type(types, gpu_type=None, perf=10, allowed=None) == "a"


@pytest.mark.parametrize(
    ("gpu_type", "perf", "allowed", "words"),
    [
        pytest.param(
            None,
            2000,
            None,
            ["got 2000", "H100 989, A100 312, L4 30, T4 unrated", "expected perf <= 989"],
            id="none-in-cluster",
        ),
        pytest.param(
            None,
            500,
            {"L4", "A100"},
            ["quota for", "A100 312, L4 30", "expected perf <= 312", "H100 would"],
            id="only-without-quota",
        ),
        pytest.param(
            None,
            2000,
            {"A100"},
            ["expected perf <= 312", "no GPU type in the cluster meets it either"],
            id="none-anywhere-with-quota",
        ),
        pytest.param(None, 10, set(), ["quota for no GPU type", "L4 would"], id="no-quota"),
        pytest.param(None, 1, {"T4"}, ["none has a perf figure"], id="only-unrated"),
        pytest.param("A100", 500, None, ["A100 has perf 312", "drop gpu_type"], id="named-slow"),
        pytest.param("T4", 1, None, ["T4 has no perf figure"], id="named-unrated"),
        pytest.param(
            "V100", None, None, ["gpu_type: got 'V100'", "A100, H100, L4, T4"], id="unknown-type"
        ),
        pytest.param(None, None, None, ["gpu_type or perf: missing"], id="neither"),
    ],
)
def test_errors_say_what_to_change(
    gpu_type: str | None, perf: float | None, allowed: set[str] | None, words: list[str]
) -> None:
    with pytest.raises(InvalidRequest) as info:
        choose_gpu_type(CLUSTER, gpu_type=gpu_type, perf=perf, allowed=allowed)
    for word in words:
        assert word in info.value.message


@pytest.mark.parametrize("bad", [True, False, 0, -1.0, math.nan, math.inf, -math.inf, "10", None])
def test_perf_must_be_a_finite_positive_number(bad: object) -> None:
    with pytest.raises(InvalidRequest, match="expected a number > 0"):
        check_perf(bad)


def test_all_unrated_cluster_names_the_fix() -> None:
    with pytest.raises(InvalidRequest, match=r"gpu_types\.<name>\.perf"):
        choose_gpu_type({"A100": gpu(1.0)}, gpu_type=None, perf=10, allowed=None)


names = st.sampled_from(["A100", "H100", "L4", "T4", "V100", "MI300"])
specs = st.builds(
    gpu,
    price=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.2, 6.9]),
    perf=st.one_of(st.just(0.0), st.floats(min_value=1, max_value=1000)),
)


@given(
    types=st.dictionaries(names, specs, min_size=1),
    perf=st.floats(min_value=0.5, max_value=1200),
    allowed=st.one_of(st.none(), st.sets(names)),
)
def test_result_meets_perf_and_nothing_cheaper_does(
    types: dict[str, GpuTypeSpec], perf: float, allowed: set[str] | None
) -> None:
    pool = {n: s for n, s in types.items() if allowed is None or n in allowed}
    meeting = {n: s for n, s in pool.items() if s.perf >= perf}
    try:
        got = choose_gpu_type(types, gpu_type=None, perf=perf, allowed=allowed)
    except InvalidRequest:
        assert not meeting
        return
    assert got in meeting
    assert all(s.price_per_hour >= types[got].price_per_hour for s in meeting.values())
    # Deterministic: the same answer whatever the mapping's order.
    again = dict(reversed(list(types.items())))
    assert choose_gpu_type(again, gpu_type=None, perf=perf, allowed=allowed) == got
