"""The pure rules of endpoints: token checks, payload validation, the autoscaling decision."""

from __future__ import annotations

import json

import pytest

from fastgpu.endpoints.autoscale import Action, Demand, decide, wanted_gpus
from fastgpu.endpoints.models import DeploySpec
from fastgpu.endpoints.payload import PayloadError, parse_inputs
from fastgpu.endpoints.tokens import (
    bearer,
    check,
    new_endpoint_id,
    new_token,
    parse_token_file,
    token_file_body,
    token_hash,
)

A, B, OTHER = new_endpoint_id(), new_endpoint_id(), new_endpoint_id()
TA, TB, T_OTHER = new_token(A), new_token(B), new_token(OTHER)
VALID = {token_hash(TA): A, token_hash(TB): B}
MINE = frozenset({A, B})


@pytest.mark.parametrize(
    ("token", "status"),
    [
        (None, 401),
        ("garbage", 401),
        (new_token(A), 401),  # well-formed, this endpoint, never issued (or revoked)
        (TA, 200),
        (TB, 403),  # the same tenant's other endpoint
        (T_OTHER, 404),  # another tenant's endpoint: this one does not exist to it
    ],
)
def test_the_auth_matrix(token: str | None, status: int) -> None:
    assert check(token, A, VALID, MINE).status == status


def test_bearer_and_the_token_file_round_trip() -> None:
    assert bearer(f"Bearer {TA}") == TA
    assert bearer("Basic abc") is None
    assert bearer(None) is None
    valid, ids = parse_token_file(token_file_body(VALID, set(MINE)))
    assert valid == VALID
    assert ids == MINE
    assert TA not in token_file_body(VALID, set(MINE))  # hashes only


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"not json", 422, "not JSON"),
        (b"{}", 422, "no 'inputs'"),
        (json.dumps({"inputs": [[1.0] * 3]}).encode(), 422, "inputs[0]: got 3 values"),
        (json.dumps({"inputs": [[1.0, "x", 3.0, 4.0]]}).encode(), 422, "inputs[0][1]"),
        (json.dumps({"inputs": [], "x": 1}).encode(), 422, "unknown fields"),
        (json.dumps({"inputs": [[0.0] * 4] * 11}).encode(), 413, "at most 10"),
        (b"x" * 2000, 413, "at most 1000 bytes"),
    ],
)
def test_payload_errors_say_what_was_expected(body: bytes, status: int, says: str) -> None:
    with pytest.raises(PayloadError) as err:
        parse_inputs(body, width=4, max_rows=10, max_bytes=1000)
    assert err.value.status == status
    assert says in err.value.message
    if status == 422:
        assert "expected JSON" in err.value.message


def test_a_good_payload() -> None:
    assert parse_inputs(b'{"inputs": [[1, 2.5, 0, 3]]}', width=4) == [[1, 2.5, 0, 3]]


@pytest.mark.parametrize(
    ("demand", "lease", "action", "gpus"),
    [
        (Demand(0, False, 0), None, Action.NONE, 0),  # scaled to zero, stays there
        (Demand(1, False, 0), None, Action.REQUEST, 2),  # first request after zero
        (Demand(3, False, 0), None, Action.REQUEST, 2),  # one replica's GPUs first
        (Demand(3, False, 0), 2, Action.RESIZE, 4),  # demand grows the lease, a replica a pass
        (Demand(3, False, 0), 4, Action.RESIZE, 6),
        (Demand(9, False, 0), 6, Action.RESIZE, 8),  # ... up to max_replicas
        (Demand(9, False, 0), 8, Action.NONE, 8),
        (Demand(1, False, 0, 3), 6, Action.NONE, 6),  # Serve has not picked what it stops
        (Demand(1, False, 0, 1), 6, Action.RESIZE, 2),  # it has: the others are STOPPING
        (Demand(1, False, 0), 6, Action.RESIZE, 2),  # and shrinks it
        (Demand(1, True, 0), 2, Action.RESIZE, 4),  # an update asks one replica of surge
        (Demand(0, False, 5), 2, Action.NONE, 2),  # idle, not for long enough yet
        (Demand(0, False, 61), 2, Action.RELEASE, 0),  # idle: scale to zero
        (Demand(2, False, 0), 4, Action.NONE, 4),
    ],
)
def test_the_autoscaling_decision(
    demand: Demand, lease: int | None, action: Action, gpus: int
) -> None:
    plan = decide(demand, lease, gpus_per_replica=2, min_replicas=0, max_replicas=4, idle_s=60)
    assert (plan.action, plan.gpus) == (action, gpus)


def test_min_replicas_keeps_gpus() -> None:
    assert wanted_gpus(Demand(0, False, 999), 1, min_replicas=1, max_replicas=3) == 1


def test_deploy_spec_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="min_replicas <= max_replicas"):
        DeploySpec(name="m", model="run-1", min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="name"):
        DeploySpec(name="Bad Name", model="run-1")
    assert DeploySpec(name="m", model="acme/digits:v3").model == "acme/digits:v3"


def test_a_shrink_waits_while_serve_keeps_a_replica_that_is_not_running_yet() -> None:
    """Serve wants one replica and has one RUNNING and one STARTING: the shrink waits (both
    raylets hold a replica Serve keeps, and which one it stops is not known yet); a STOPPING or
    migrating replica is on its way out and does not hold the shrink."""
    from fastgpu.service.endpoint_reconcile import serve_view

    def view(*states: str) -> dict[str, object]:
        dep = {"target_num_replicas": 1, "replicas": [{"state": s} for s in states]}
        return {"applications": {"a": {"status": "RUNNING", "deployments": {"ModelServer": dep}}}}

    _, _, target, running, kept = serve_view(view("RUNNING", "STARTING"), "a")
    assert (target, running, kept) == (1, 1, 2)
    plan = decide(Demand(target, False, 0, kept), 4, 2, 1, 3, 60)
    assert (plan.action, plan.why) == (Action.NONE, "waiting for Serve to pick what it stops")
    for leaving in ("STOPPING", "PENDING_MIGRATION"):
        _, _, target, _, kept = serve_view(view("RUNNING", leaving), "a")
        assert decide(Demand(target, False, 0, kept), 4, 2, 1, 3, 60).action == Action.RESIZE
