"""The keeper: a small Ray driver inside one tenant's cluster, serving the server on a pipe.

One process can be a Ray driver of one cluster only, so the server cannot create placement
groups in many tenants' clusters itself. Each tenant cluster gets a keeper, started by the
server as the tenant's own user (it holds nothing but that tenant's token; killing it hurts
only that tenant, and the server starts another). Protocol: one JSON object per line on stdin,
one answer per line on stdout, in order::

    {"op": "create_group", "name": "...", "gpus": 2, "lease": "<id>", "bundle": {"GPU": 1}}
    {"op": "remove_group", "name": "..."}
    {"op": "ready", "name": "...", "timeout_s": 0}
    {"op": "nodes"}
    {"op": "drivers"}
    {"op": "actors", "lease": "<id>"}
    {"op": "drain", "lease": "<id>", "host": "...", "part": 0, "deadline_s": 30, "until": 1.7e9}
    -> {"ok": true, "result": ...} | {"ok": false, "error": "..."}

Answers are the only thing on stdout (what Ray prints there goes to stderr, the keeper's log).
The keeper exits when stdin closes (the server stopped or died); detached groups stay. Group
names live in the Ray namespace :data:`NAMESPACE`; tenants' code finds a group by its id (the
SDK's ``lease.scheduling_strategy``), which needs no namespace.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from fastgpu.domain.lease import HOST_LABEL, LEASE_LABEL, PART_LABEL

NAMESPACE = "fastgpu"


def _group(name: str) -> Any:
    from ray.util import get_placement_group
    from ray.util.placement_group import placement_group_table

    try:
        pg = get_placement_group(name)
    except ValueError:
        return None
    info = placement_group_table(pg)
    return None if not info or info.get("state") == "REMOVED" else pg


def create_group(name: str, gpus: int, lease: str, bundle: dict[str, float] | None = None) -> str:
    """The lease's group: ``gpus`` bundles (default one GPU each), only on the lease's
    raylets (idempotent)."""
    from ray.util.placement_group import placement_group

    existing = _group(name)
    if existing is not None:
        return str(existing.id.hex())
    bundle = dict(bundle or {"GPU": 1.0})
    pg = placement_group(
        [dict(bundle) for _ in range(gpus)],
        strategy="PACK",
        name=name,
        lifetime="detached",
        bundle_label_selector=[{LEASE_LABEL: lease} for _ in range(gpus)],
    )
    return str(pg.id.hex())


def remove_group(name: str) -> bool:
    from ray.util.placement_group import remove_placement_group

    pg = _group(name)
    if pg is None:
        return False
    remove_placement_group(pg)
    return True


def ready(name: str, timeout_s: float) -> bool:
    import ray

    pg = _group(name)
    if pg is None:
        return False
    done, _ = ray.wait([pg.ready()], timeout=timeout_s)
    return bool(done)


def nodes() -> list[dict[str, Any]]:
    import ray

    out = []
    for n in ray.nodes():
        labels = n.get("Labels") or {}
        out.append(
            {
                "node_id": n["NodeID"],
                "alive": bool(n.get("Alive")),
                "gpus": int((n.get("Resources") or {}).get("GPU", 0)),
                "lease": labels.get(LEASE_LABEL),
                "host": labels.get(HOST_LABEL),
            }
        )
    return out


def drivers() -> int:
    """Live drivers in the cluster other than the keeper (jobs, `ray.init` sessions)."""
    import ray
    from ray._private.state import jobs

    me = ray.get_runtime_context().get_job_id()
    return sum(1 for job in jobs() if not job["IsDead"] and job["JobID"] != me)


#: Actor states that hold (or are about to hold) a worker on their node.
LIVE_ACTOR_STATES = ("ALIVE", "PENDING_CREATION", "RESTARTING")


def actors(lease: str) -> list[dict[str, Any]]:
    """The live raylets of ``lease``, each with the ids of the live actors on it (a Serve
    replica, a Train worker): which raylets hold the lease's workload, for a shrink to stop
    the others first. ``part`` is None for a raylet started without that label."""
    import ray
    from ray._private.state import actors as actor_table

    on_node: dict[str, list[str]] = {}
    for state in LIVE_ACTOR_STATES:
        for actor_id, info in actor_table(actor_state_name=state).items():
            node = (info.get("Address") or {}).get("NodeID")
            if node:
                on_node.setdefault(node, []).append(actor_id)
    out = []
    for n in ray.nodes():
        labels = n.get("Labels") or {}
        if not n.get("Alive") or labels.get(LEASE_LABEL) != lease:
            continue
        part = labels.get(PART_LABEL)
        out.append(
            {
                "node_id": n["NodeID"],
                "host": labels.get(HOST_LABEL),
                "part": int(part) if part is not None and part.isdigit() else None,
                "actors": sorted(on_node.get(n["NodeID"], [])),
            }
        )
    return out


def drain(lease: str, host: str, part: int, deadline_s: float, until: float = 0.0) -> list[str]:
    """Mark the lease's raylet ``(host, part)`` as draining in Ray (the GCS's DrainNode, as
    Ray's autoscaler does before it preempts a node): Ray places no new task or actor there,
    and Serve moves the replicas it runs there to other nodes before ``deadline_s``, when the
    server stops the raylet; Ray stops it itself once nothing runs there. Without it a
    draining raylet stays schedulable: a replica Serve starts there meanwhile gets requests
    and dies with the raylet. ``until`` (wall clock, 0: none): after it the server no longer
    waits for the answer and may start a new raylet under the same labels, which must not be
    marked, so nothing is done. The ids of the nodes marked (none: the raylet is gone, Ray
    refused, or the request came too late)."""
    import time

    import ray
    from ray.core.generated import autoscaler_pb2

    if until and time.time() > until:
        return []

    gcs = ray._private.worker.global_worker.gcs_client  # type: ignore[attr-defined]
    deadline_ms = int((time.time() + max(0.0, deadline_s)) * 1000)
    marked = []
    for n in ray.nodes():
        labels = n.get("Labels") or {}
        if (
            n.get("Alive")
            and labels.get(LEASE_LABEL) == lease
            and labels.get(HOST_LABEL) == host
            and labels.get(PART_LABEL) == str(part)
        ):
            accepted, why = gcs.drain_node(
                n["NodeID"],
                autoscaler_pb2.DrainNodeReason.DRAIN_NODE_REASON_PREEMPTION,  # type: ignore[attr-defined]
                f"lease {lease} gives back its raylet {host}/{part}",
                deadline_ms,
            )
            if accepted:
                marked.append(n["NodeID"])
            else:
                print(f"drain of {n['NodeID']} refused: {why}", file=sys.stderr)
    return marked


def handle(request: dict[str, Any]) -> Any:
    op = request.get("op")
    if op == "create_group":
        return create_group(
            request["name"], int(request["gpus"]), request["lease"], request.get("bundle")
        )
    if op == "remove_group":
        return remove_group(request["name"])
    if op == "ready":
        return ready(request["name"], float(request.get("timeout_s", 0)))
    if op == "nodes":
        return nodes()
    if op == "drivers":
        return drivers()
    if op == "actors":
        return actors(request["lease"])
    if op == "drain":
        return drain(
            request["lease"],
            request["host"],
            int(request["part"]),
            float(request.get("deadline_s", 0)),
            float(request.get("until", 0)),
        )
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    import ray

    address = sys.argv[1]
    # The answers get stdout to themselves: Ray prints the cluster's error messages (a node
    # marked dead, a worker killed) on every driver's stdout, which would break the protocol.
    # Everything else written there goes to stderr, the keeper's log.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    # A fixed namespace: group names are scoped to it, and a restarted keeper must find them.
    ray.init(address=address, namespace=NAMESPACE, logging_level=logging.ERROR, log_to_driver=False)
    print(json.dumps({"ok": True, "result": "ready"}), file=out, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = {"ok": True, "result": handle(json.loads(line))}
        except Exception as exc:  # reported to the server, which raises it there
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), file=out, flush=True)


if __name__ == "__main__":
    main()
