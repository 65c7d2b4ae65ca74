"""Event-driven simulation of one policy on one trace.

Responsibility: move simulated time from event to event (arrivals, completions, the end of a
preemption's grace period, checkpoints, policy wake-ups), build an immutable
:class:`~fastgpu.scheduler.Snapshot` at each event time, ask the policy, and carry out its
decisions exactly as the live controller would: admit onto the named nodes, preempt after the
announced grace, resize, reject. Time never advances in ticks, so two months replay in seconds.

Job model (stated in ``docs/simulator.md``):

* A trace job of g GPUs and duration d carries d seconds of work *at g GPUs*. It is submitted
  with ``duration_s = d`` (the requested duration is the trace's, i.e. a perfect estimate).
* It checkpoints every ``checkpoint_s`` of runtime (30 min by default); a preempted job loses
  the progress since its last checkpoint (or since it (re)started) and resumes from there.
* Elastic jobs (policy variant ``elastic``) accept ``[max(1, g // 2), 2 g]`` GPUs; with k GPUs a
  job progresses at ``(k / g) ** alpha`` times its trace speed (sublinear, alpha = 0.8) and each
  rescale costs ``rescale_s`` (30 s, Pollux's figure) without progress; a rescale checkpoints.

Invariants: a node never holds more than its GPUs; a job's GPUs are held from admission until
it completes or its preemption takes effect; every job ends done, rejected or (if the policy
leaves it waiting with nothing left to happen) unfinished.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from fastgpu.config import QuotaSpec
from fastgpu.scheduler.decisions import Decisions
from fastgpu.scheduler.index import PendingIndex, RunningIndex
from fastgpu.scheduler.policy import Policy
from fastgpu.scheduler.snapshot import LeaseView, NodeView, Snapshot, TenantView
from fastgpu.sim.cluster import ClusterSpec
from fastgpu.sim.meter import UsageMeter
from fastgpu.sim.trace import Job, Trace

PENDING, RUNNING, LEAVING, DONE, REJECTED = range(5)
_COMPLETE, _LEAVE, _CKPT, _WAKE = range(4)


@dataclass(frozen=True)
class JobModel:
    """How trace jobs become leases and how they run."""

    #: Checkpoint every this many seconds of runtime; preemption loses work since the last.
    checkpoint_s: float = 1800.0
    #: Jobs may be preempted (the fair-share policies); static and FIFO never preempt anyway.
    preemptible: bool = True
    #: Elastic jobs: [max(1, g // 2), 2 g] GPUs, speed (k / g) ** alpha.
    elastic: bool = False
    alpha: float = 0.8
    #: Seconds without progress after each elastic rescale (Pollux charges 30 s).
    rescale_s: float = 30.0
    #: Preemption loses no work (the oracle's idealisation).
    lossless_preemption: bool = False

    def bounds(self, gpus: int) -> tuple[int, int]:
        if not self.elastic:
            return gpus, gpus
        return max(1, gpus // 2), 2 * gpus

    def strategy(self, gpus: int, per_node: int) -> str:
        # Philly placed multi-GPU jobs with locality: all on one node when they fit one.
        if self.elastic or gpus > per_node:
            return "PACK"
        return "STRICT_PACK"


class _SimJob:
    __slots__ = (
        "end",
        "first_start",
        "held",
        "job",
        "leave_at",
        "lost_gpu_s",
        "max_g",
        "min_g",
        "pause_until",
        "placement",
        "preemptions",
        "rate",
        "resizes",
        "seg_start",
        "state",
        "strategy",
        "version",
        "view",
        "work_left",
    )

    def __init__(self, job: Job, min_g: int, max_g: int, strategy: str) -> None:
        self.job = job
        self.min_g = min_g
        self.max_g = max_g
        self.strategy = strategy
        self.state = PENDING
        self.work_left = job.duration  # seconds at job.gpus, as of seg_start
        self.placement: dict[str, int] = {}
        self.held = 0
        self.seg_start = 0.0
        self.pause_until = 0.0
        self.rate = 1.0
        self.first_start: float | None = None
        self.end: float | None = None
        self.leave_at: float | None = None
        self.preemptions = 0
        self.resizes = 0
        self.lost_gpu_s = 0.0
        self.version = 0
        self.view: LeaseView | None = None


@dataclass
class JobResult:
    id: str
    tenant: str
    gpus: int
    submit: float
    duration: float
    start: float | None
    end: float | None
    preemptions: int
    resizes: int
    lost_gpu_s: float
    rejected: bool


@dataclass
class SimResult:
    policy: str
    cluster: ClusterSpec
    nominal: dict[str, int]
    jobs: list[JobResult]
    #: GPU-seconds allocated in total and per tenant.
    busy_gpu_s: float
    #: GPU-seconds allocated during the submission window [0, trace.end).
    busy_window_gpu_s: float
    tenant_gpu_s: dict[str, float]
    #: GPU-seconds each tenant sat below nominal while it had demand waiting.
    violation_gpu_s: dict[str, float]
    #: Time series, one value per bucket of ``bucket_s`` seconds from time 0.
    bucket_s: float
    util_series: list[float]
    share_series: dict[str, list[float]]
    cycles: int
    wall_s: float = 0.0
    unfinished: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class Simulation:
    """One policy, one trace, one cluster. ``run()`` once."""

    def __init__(
        self,
        trace: Trace,
        cluster: ClusterSpec,
        quotas: dict[str, QuotaSpec],
        policy: Policy,
        *,
        name: str = "policy",
        model: JobModel | None = None,
        half_life_s: float = 7 * 24 * 3600.0,
        bucket_s: float = 3600.0,
        weights: dict[str, float] | None = None,
        clock: Callable[[], float] | None = None,
        skip_full_arrivals: bool = False,
    ) -> None:
        self.trace = trace
        self.cluster = cluster
        self.quotas = quotas
        self.policy = policy
        self.name = name
        self.model = model or JobModel()
        self.bucket_s = bucket_s
        self.weights = weights or {}
        self._clock = clock
        #: The policy only reclaims for tenants below nominal (true of FairSharePolicy and
        #: FIFO; not of the SRTF oracle, which preempts for any shorter job).
        self.skip_full_arrivals = skip_full_arrivals
        per_node = cluster.gpus_per_node
        self.jobs: list[_SimJob] = []
        for j in trace.jobs:
            lo, hi = self.model.bounds(j.gpus)
            self.jobs.append(_SimJob(j, lo, hi, self.model.strategy(j.gpus, per_node)))
        self.by_id = {sj.job.id: sj for sj in self.jobs}
        self.nodes: dict[str, NodeView] = {n.node_id: n for n in cluster.node_views()}
        self.pending: dict[str, _SimJob] = {}
        self.running: dict[str, _SimJob] = {}
        #: What the policy sees, kept up to date with every change (not rebuilt per cycle):
        #: the views of pending and running jobs (same order as ``pending``/``running``) and
        #: the pending index handed over with each snapshot.
        self.pending_views: dict[str, LeaseView] = {}
        self.running_views: dict[str, LeaseView] = {}
        self.pending_index = PendingIndex()
        self.running_index = RunningIndex()
        self.events: list[tuple[float, int, int, str, int]] = []
        self._seq = 0
        self.now = 0.0
        tenants = trace.tenants
        self.used = dict.fromkeys(tenants, 0)
        self.demand = dict.fromkeys(tenants, 0)
        #: Tenant -> {min GPUs of a pending job: how many such jobs}.
        self.pending_sizes: dict[str, dict[int, int]] = {t: {} for t in tenants}
        self.nominal = {t: quotas[t].nominal if t in quotas else 0 for t in tenants}
        self.held_total = 0
        self.meter = UsageMeter(tenants, self.nominal, half_life_s, bucket_s, trace.end)
        self.cycles = 0
        self.wake_at: float | None = None

    # -- events ----------------------------------------------------------------------------
    def _push(self, t: float, kind: int, job_id: str, version: int) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, kind, self._seq, job_id, version))

    def _advance(self, t: float) -> None:
        if t <= self.now:
            return
        self.meter.advance(self.now, t, self.held_total, self.used, self.demand, self.pending_sizes)
        self.now = t

    # -- job state changes -------------------------------------------------------------------
    def _wait(self, sj: _SimJob, sign: int) -> None:
        """Count a job into (+1) or out of (-1) its tenant's waiting demand."""
        tenant = sj.job.tenant
        self.demand[tenant] += sign * sj.min_g
        sizes = self.pending_sizes[tenant]
        left = sizes.get(sj.min_g, 0) + sign
        if left:
            sizes[sj.min_g] = left
        else:
            sizes.pop(sj.min_g, None)

    def _enqueue(self, sj: _SimJob) -> None:
        """The job waits (arrival or requeue after preemption)."""
        view = sj.view = self._pending_view(sj)
        self.pending[sj.job.id] = sj
        self.pending_views[sj.job.id] = view
        self.pending_index.add(view)
        self._wait(sj, +1)

    def _dequeue(self, sj: _SimJob) -> None:
        """The job stops waiting (admitted or rejected)."""
        del self.pending[sj.job.id]
        view = self.pending_views.pop(sj.job.id)
        self.pending_index.remove(view)
        self._wait(sj, -1)

    def _set_running_view(self, sj: _SimJob, view: LeaseView) -> None:
        sj.view = view
        old = self.running_views.get(sj.job.id)
        self.running_views[sj.job.id] = view
        if old is None:
            self.running_index.add(view)
        else:
            self.running_index.replace(old, view)

    def _drop_running_view(self, sj: _SimJob) -> None:
        self.running_index.remove(self.running_views.pop(sj.job.id))

    def _preemptible(self, job: Job) -> bool:
        return self.model.preemptible if job.preemptible is None else job.preemptible

    def _pending_view(self, sj: _SimJob) -> LeaseView:
        j = sj.job
        return LeaseView(
            id=j.id,
            tenant=j.tenant,
            gpu_type=self.cluster.gpu_type,
            gpus=sj.max_g,
            min_gpus=sj.min_g,
            strategy=sj.strategy,
            preemptible=self._preemptible(j),
            submitted_at=j.submit,
            duration_s=sj.work_left,
        )

    def _running_view(self, sj: _SimJob, checkpoint_at: float | None = None) -> LeaseView:
        j = sj.job
        expected = (sj.pause_until - sj.seg_start) + sj.work_left / sj.rate
        return LeaseView(
            id=j.id,
            tenant=j.tenant,
            gpu_type=self.cluster.gpu_type,
            gpus=sj.max_g,
            min_gpus=sj.min_g,
            strategy=sj.strategy,
            preemptible=self._preemptible(j),
            submitted_at=j.submit,
            duration_s=expected,
            started_at=sj.seg_start,
            placement=dict(sj.placement),
            last_checkpoint_at=checkpoint_at,
            preempt_at=sj.leave_at,
            restarts=sj.preemptions,
        )

    def _rate(self, sj: _SimJob, k: int) -> float:
        if k == sj.job.gpus:
            return 1.0
        return (k / sj.job.gpus) ** self.model.alpha

    def _progress(self, sj: _SimJob, t: float) -> float:
        return sj.rate * max(0.0, t - sj.pause_until)

    def _set_held(self, sj: _SimJob, placement: dict[str, int]) -> None:
        """Move a job's GPUs from its old placement to ``placement`` on the node ledger."""
        delta: dict[str, int] = {}
        for node, n in sj.placement.items():
            delta[node] = delta.get(node, 0) + n
        for node, n in placement.items():
            delta[node] = delta.get(node, 0) - n
        for node, d in delta.items():
            if d:
                nv = self.nodes[node]
                free = nv.free_gpus + d
                if not 0 <= free <= nv.total_gpus:
                    raise RuntimeError(
                        f"{self.name}: node {node} would have {free} free GPUs of {nv.total_gpus}"
                    )
                self.nodes[node] = NodeView(nv.node_id, nv.gpu_type, nv.total_gpus, free)
        k = sum(placement.values())
        tenant = sj.job.tenant
        self.used[tenant] += k - sj.held
        self.held_total += k - sj.held
        sj.placement = placement
        sj.held = k

    def _start_segment(self, sj: _SimJob, pause: float) -> None:
        sj.seg_start = self.now
        sj.pause_until = self.now + pause
        sj.rate = self._rate(sj, sj.held)
        sj.version += 1
        end = sj.pause_until + sj.work_left / sj.rate
        self._push(end, _COMPLETE, sj.job.id, sj.version)
        if self._preemptible(sj.job) and self.model.checkpoint_s < end - self.now:
            self._push(self.now + self.model.checkpoint_s, _CKPT, sj.job.id, sj.version)
        self._set_running_view(sj, self._running_view(sj))

    def _admit(self, sj: _SimJob, placement: dict[str, int]) -> None:
        self._dequeue(sj)
        self._set_held(sj, dict(placement))
        sj.state = RUNNING
        if sj.first_start is None:
            sj.first_start = self.now
        self.running[sj.job.id] = sj
        self._start_segment(sj, 0.0)

    def _finish(self, sj: _SimJob) -> None:
        del self.running[sj.job.id]
        self._drop_running_view(sj)
        self._set_held(sj, {})
        sj.state = DONE
        sj.end = self.now
        sj.version += 1

    def _leave(self, sj: _SimJob) -> None:
        """A preemption takes effect: keep the last checkpoint, give the GPUs back, requeue."""
        t = self.now
        done = self._progress(sj, t)
        if not self.model.lossless_preemption:
            ck = self.model.checkpoint_s
            last = sj.seg_start + math.floor((t - sj.seg_start) / ck) * ck
            kept = self._progress(sj, last)
            sj.lost_gpu_s += sj.held * max(0.0, t - max(last, sj.pause_until))
            done = kept
        sj.work_left = max(sj.work_left - done, 1e-6)
        del self.running[sj.job.id]
        self._drop_running_view(sj)
        self._set_held(sj, {})
        sj.state = PENDING
        sj.leave_at = None
        sj.preemptions += 1
        sj.version += 1
        self._enqueue(sj)

    def _resize(self, sj: _SimJob, placement: dict[str, int]) -> None:
        sj.work_left = max(sj.work_left - self._progress(sj, self.now), 1e-6)
        self._set_held(sj, dict(placement))
        sj.resizes += 1
        self._start_segment(sj, self.model.rescale_s)

    # -- the loop ---------------------------------------------------------------------------
    def _snapshot(self) -> Snapshot:
        tenants = {
            t: TenantView(
                name=t,
                quotas={self.cluster.gpu_type: q},
                weight=self.weights.get(t, 1.0),
                decayed_usage_gpu_s=self.meter.decayed.get(t, 0.0),
            )
            for t, q in self.quotas.items()
        }
        return Snapshot(
            now=self.now,
            gpu_types=self.cluster.gpu_types(),
            nodes=tuple(self.nodes.values()),
            tenants=tenants,
            running=tuple(self.running_views.values()),
            pending=tuple(self.pending_views.values()),
            pending_index=self.pending_index,
            running_index=self.running_index,
        )

    def _apply(self, d: Decisions) -> bool:
        """Carry out decisions; True when GPUs came free at once (worth another cycle)."""
        freed = False
        for rej in d.reject:
            sj = self.pending[rej.lease_id]
            self._dequeue(sj)
            sj.state = REJECTED
        for pre in d.preempt:
            sj = self.running[pre.lease_id]
            if sj.leave_at is not None:
                continue
            if pre.grace_s <= 0:
                self._leave(sj)
                freed = True
            else:
                sj.leave_at = self.now + pre.grace_s
                sj.state = LEAVING
                last = sj.view.last_checkpoint_at if sj.view else None
                self._set_running_view(sj, self._running_view(sj, last))
                self._push(sj.leave_at, _LEAVE, sj.job.id, sj.version)
        for rs in d.resize:
            sj = self.running[rs.lease_id]
            if sum(rs.placement.values()) < sj.held:
                freed = True
            self._resize(sj, dict(rs.placement))
        for ad in d.admit:
            self._admit(self.pending[ad.lease_id], dict(ad.placement))
        for q in d.queue:
            self.reasons[q.reason] = self.reasons.get(q.reason, 0) + 1
        if d.wake_at is not None and (self.wake_at is None or d.wake_at < self.wake_at):
            self.wake_at = d.wake_at
            self._push(d.wake_at, _WAKE, "", 0)
        return freed

    def _cycle(self) -> None:
        growable = self.model.elastic and any(
            sj.held < sj.max_g and sj.leave_at is None for sj in self.running.values()
        )
        if not self.pending and not growable:
            return
        for _ in range(4):
            self.cycles += 1
            if not self._apply(self.policy.schedule(self._snapshot())):
                break

    def run(self) -> SimResult:
        import time

        clock = self._clock or time.perf_counter
        t0 = clock()
        self.reasons: dict[str, int] = {}
        arrivals = self.jobs
        i, n = 0, len(arrivals)
        events = self.events
        while i < n or events:
            t_arr = arrivals[i].job.submit if i < n else math.inf
            t_ev = events[0][0] if events else math.inf
            t = min(t_arr, t_ev)
            if t == math.inf:
                break
            self._advance(t)
            # Cycle only when something the policy sees changed: checkpoints and stale
            # events do not (and are most of the events).
            changed = False
            while i < n and arrivals[i].job.submit <= t:
                sj = arrivals[i]
                self._enqueue(sj)
                i += 1
                # An arrival into a full cluster changes nothing unless it may reclaim (its
                # tenant is below nominal) or elastic leases could shrink for it: skipping
                # that cycle is exact and saves most cycles of a busy period.
                if (
                    not self.skip_full_arrivals
                    or self.held_total < self.cluster.capacity
                    or self.model.elastic
                    or self.used[sj.job.tenant] + sj.min_g <= self.nominal[sj.job.tenant]
                ):
                    changed = True
            while events and events[0][0] <= t:
                _, kind, _, jid, version = heapq.heappop(events)
                if kind == _WAKE:
                    if self.wake_at is not None and self.wake_at <= t:
                        self.wake_at = None
                        changed = True
                    continue
                sj = self.by_id[jid]
                if sj.version != version or sj.state not in (RUNNING, LEAVING):
                    continue
                if kind == _COMPLETE:
                    self._finish(sj)
                    changed = True
                elif kind == _LEAVE:
                    self._leave(sj)
                    changed = True
                else:  # _CKPT: the view learns of the checkpoint (least-lost-work victims)
                    self._set_running_view(sj, self._running_view(sj, t))
                    nxt = t + self.model.checkpoint_s
                    if nxt < sj.pause_until + sj.work_left / sj.rate:
                        self._push(nxt, _CKPT, jid, version)
            if changed:
                self._cycle()
            if i >= n and not events and self.pending:
                break  # nothing left to happen: the rest never starts
        results = [
            JobResult(
                id=sj.job.id,
                tenant=sj.job.tenant,
                gpus=sj.job.gpus,
                submit=sj.job.submit,
                duration=sj.job.duration,
                start=sj.first_start,
                end=sj.end,
                preemptions=sj.preemptions,
                resizes=sj.resizes,
                lost_gpu_s=sj.lost_gpu_s,
                rejected=sj.state == REJECTED,
            )
            for sj in self.jobs
        ]
        return SimResult(
            policy=self.name,
            cluster=self.cluster,
            nominal=dict(self.nominal),
            jobs=results,
            busy_gpu_s=self.meter.busy,
            busy_window_gpu_s=self.meter.busy_window,
            tenant_gpu_s=dict(self.meter.tenant_gpu_s),
            violation_gpu_s=dict(self.meter.violation),
            bucket_s=self.bucket_s,
            util_series=self.meter.series(self.meter.util_buckets, self.cluster.capacity),
            share_series={
                t: self.meter.series(s, self.cluster.capacity)
                for t, s in self.meter.share_buckets.items()
            },
            cycles=self.cycles,
            wall_s=clock() - t0,
            unfinished=sum(1 for sj in self.jobs if sj.state in (PENDING, RUNNING, LEAVING)),
            reasons=self.reasons,
        )
