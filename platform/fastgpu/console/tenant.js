// A tenant's view: its quota and allocation, budget, what waits and why, leases, usage over
// time and jobs. Every number comes from the API with the tenant's own token, so the server
// decides what it sees (its own rows only).
//
// Usage over time: the API has no per-period series, only totals since a time
// (GET /usage?since=). The console asks for the total since the start of each period and takes
// differences: usage in [s_k, s_k+1) = total since s_k - total since s_k+1.

import { drawBars } from "./chart.js";
import { el, guarded, LiveTable, show } from "./dom.js";
import {
  duration,
  iso,
  money,
  num,
  periodLabel,
  periodStarts,
  RANGES,
  reasonText,
  since,
  sumBy,
  when,
} from "./format.js";

const $ = (id) => document.getElementById(id);
const NOISE_GPU_H = 1e-4; // 0.36 GPU-seconds

function leaseGpus(lease) {
  const want = lease.min_gpus < lease.gpus ? `${lease.min_gpus}-${lease.gpus}` : `${lease.gpus}`;
  return lease.held_gpus ? `${lease.held_gpus} of ${want}` : want;
}

export class TenantView {
  constructor(api, who) {
    this.api = api;
    this.name = who.tenant;
    this.root = $("tenant-view");
    this.quota = new LiveTable($("t-quota-table"), [
      { key: "gpu_type", label: "GPU type" },
      { key: "nominal", label: "guaranteed", num: true },
      { key: "borrowing_limit", label: "may borrow", num: true },
      { key: "lending_limit", label: "may lend", num: true },
      { key: "allocated", label: "allocated" },
      { key: "pending", label: "waiting", num: true },
      { key: "free", label: "free in cluster", num: true },
    ]);
    this.waiting = new LiveTable($("t-waiting-table"), [
      { key: "id", label: "lease" },
      { key: "gpus", label: "GPUs", num: true },
      { key: "gpu_type", label: "type" },
      { key: "waited", label: "waiting for" },
      { key: "reason", label: "why" },
      { key: "reason_detail", label: "detail" },
    ]);
    this.leases = new LiveTable($("t-lease-table"), [
      { key: "id", label: "lease" },
      { key: "state", label: "state" },
      { key: "gpus", label: "GPUs", num: true },
      { key: "gpu_type", label: "type" },
      { key: "created_at", label: "requested" },
      { key: "expires_at", label: "ends" },
      { key: "workload", label: "workload" },
      { key: "reason", label: "reason" },
      { key: "reason_detail", label: "detail" },
    ]);
    this.usage = new LiveTable($("t-usage-table"), [
      { key: "gpu_type", label: "GPU type" },
      { key: "gpu_hours", label: "GPU-hours", num: true },
      { key: "cost", label: "cost", num: true },
    ]);
    this.jobs = new LiveTable($("t-job-table"), [
      { key: "id", label: "job" },
      { key: "status", label: "status" },
      { key: "entrypoint", label: "entrypoint" },
      { key: "message", label: "message" },
      { key: "start_time", label: "started" },
      { key: "end_time", label: "ended" },
    ]);
    const range = $("t-range");
    range.replaceChildren(...Object.entries(RANGES).map(([k, r]) => el("option", { value: k }, r.label)));
    this.onChange = () => this.refresh();
    range.addEventListener("change", this.onChange);
    $("t-ended").addEventListener("change", this.onChange);
    show(this.root, true);
  }

  close() {
    $("t-range").removeEventListener("change", this.onChange);
    $("t-ended").removeEventListener("change", this.onChange);
    $("t-ended").checked = false;
    show(this.root, false);
    this.closed = true;
    for (const t of [this.quota, this.waiting, this.leases, this.usage, this.jobs]) t.close();
    $("t-budget-body").replaceChildren();
    $("usage-chart").replaceChildren();
    $("t-usage-total").textContent = "";
  }

  /** One refresh of every card; resolves to the errors met (null where a card was fine). */
  async refresh() {
    const tenant = this.api.get(`/tenants/${encodeURIComponent(this.name)}`);
    const leases = this.api.all("/leases", $("t-ended").checked ? {} : { live: true });
    return Promise.all([
      guarded($("t-alloc"), async () => this.renderQuota(await this.api.get("/status"))),
      guarded($("t-budget"), async () => this.renderBudget(await tenant)),
      guarded($("t-waiting"), async () => this.renderWaiting(await leases)),
      guarded($("t-leases"), async () => this.renderLeases(await leases)),
      guarded($("t-usage"), () => this.loadUsage()),
      guarded($("t-jobs"), () => this.loadJobs()),
    ]);
  }

  renderQuota(status) {
    const free = new Map(status.gpu_types.map((t) => [t.gpu_type, t]));
    const rows = status.tenants.filter((r) => r.tenant === this.name);
    this.quota.update(
      rows.map((r) => {
        const ceiling = r.borrowing_limit === null ? Math.max(r.nominal, r.allocated) : r.nominal + r.borrowing_limit;
        const cluster = free.get(r.gpu_type);
        return {
          key: r.gpu_type,
          cells: {
            gpu_type: r.gpu_type,
            nominal: r.nominal,
            borrowing_limit: r.borrowing_limit === null ? "no limit" : r.borrowing_limit,
            lending_limit: r.lending_limit === null ? "all idle" : r.lending_limit,
            allocated: { text: `${r.allocated} of ${r.nominal} guaranteed`, meter: [r.allocated, ceiling] },
            pending: r.pending,
            free: cluster ? `${cluster.free} of ${cluster.total}` : "",
          },
        };
      }),
    );
  }

  async renderBudget(tenant) {
    const body = $("t-budget-body");
    const b = tenant.budget;
    if (this.closed) return;
    const facts = el(
      "p",
      { class: "muted" },
      `weight ${num(tenant.weight)}, priority ${tenant.priority}, queueing ${tenant.queueing}`,
    );
    if (!b) {
      body.replaceChildren(el("p", { id: "t-budget-text" }, "No budget: usage is not capped."), facts);
      return;
    }
    // The server's numbers (GET /tenants/{name}/budget): spend, limits, warnings, projection.
    const s = await this.api.get(`/tenants/${encodeURIComponent(this.name)}/budget`);
    if (this.closed) return;
    const lines = [];
    const meter = (unit, spent, limit, text) =>
      el(
        "div",
        { class: "budget", dataset: { unit, spent: String(spent), limit: String(limit) } },
        el("meter", { min: 0, max: limit, value: Math.min(spent, limit), high: limit * 0.8 }),
        text,
      );
    if (s.limit.gpu_hours !== null) {
      lines.push(
        meter("gpu_hours", s.spent.gpu_hours, s.limit.gpu_hours,
          ` ${num(s.spent.gpu_hours, 3)} of ${num(s.limit.gpu_hours)} GPU-hours used this ${s.period}`),
      );
    }
    if (s.limit.money !== null) {
      lines.push(
        meter("money", s.spent.money, s.limit.money,
          ` ${money(s.spent.money)} of ${money(s.limit.money)} spent this ${s.period}`),
      );
    }
    const stateText = { ok: "within budget", warning: "warning", exhausted: "budget reached" }[s.state] || s.state;
    const atCap =
      s.action === "stop"
        ? "At the cap, new leases wait and running preemptible leases are preempted (non-preemptible ones run to their end)."
        : "At the cap, new leases wait with the reason budget_exhausted; running leases run on.";
    const projection = s.runs_out_at
      ? `At the current burn (${s.burn.gpus_held} GPUs, ${money(s.burn.money_per_hour)}/h) the budget runs out ${when(s.runs_out_at)}.`
      : s.state === "exhausted"
        ? "The budget is used up for this period."
        : `At the current burn (${s.burn.gpus_held} GPUs) the budget lasts this period.`;
    const warnings = s.thresholds
      .filter((t) => t.crossed)
      .map((t) => el("li", { class: "budget-warning", dataset: { percent: String(t.percent) } },
        `${num(t.percent)} % reached ${t.crossed_at ? when(t.crossed_at) : ""}`));
    const events = s.events
      .filter((e) => e.kind === "stop" || e.kind === "kept")
      .map((e) => el("li", { class: "budget-event", dataset: { kind: e.kind } }, `${when(e.at)}: ${e.detail}`));
    body.replaceChildren(
      el("p", { id: "t-budget-text" }, `Budget per ${s.period} (UTC), since ${when(s.period_start)}:`),
      ...lines,
      el("p", { id: "t-budget-state", class: `state-${s.state}`, dataset: { state: s.state } },
        `${stateText} (${num(s.used_pct, 1)} % used)`),
      el("p", { id: "t-budget-projection", dataset: { runsOutAt: s.runs_out_at || "" } }, projection),
      warnings.length ? el("ul", { id: "t-budget-warnings" }, ...warnings) : el("p", { class: "muted" }, "No warnings this period."),
      events.length ? el("ul", { id: "t-budget-events" }, ...events) : "",
      el("p", { class: "muted" }, atCap),
      facts,
    );
  }

  renderWaiting(leases) {
    const pending = leases.filter((l) => l.state === "PENDING");
    show($("t-waiting-none"), pending.length === 0);
    this.waiting.update(
      pending.map((l) => ({
        key: l.id,
        cells: {
          id: l.id,
          gpus: leaseGpus(l),
          gpu_type: l.gpu_type,
          waited: duration(since(l.created_at)),
          reason: { text: reasonText(l.reason), title: l.reason || "" },
          reason_detail: l.reason_detail || "",
        },
      })),
    );
  }

  renderLeases(leases) {
    // Newest first; ended leases after the live ones.
    const shown = [...leases].reverse().sort((a, b) => Boolean(a.ended_at) - Boolean(b.ended_at));
    this.leases.update(
      shown.map((l) => ({
        key: l.id,
        cls: l.ended_at ? "ended" : l.state === "PENDING" ? "pending" : "",
        cells: {
          id: l.id,
          state: { text: l.state, cls: `state ${l.state.toLowerCase()}` },
          gpus: leaseGpus(l),
          gpu_type: l.gpu_type,
          created_at: when(l.created_at),
          expires_at: when(l.ended_at || l.expires_at),
          workload: l.workload || "",
          reason: l.state === "PENDING" ? reasonText(l.reason) : l.reason || "",
          reason_detail: l.reason_detail || "",
        },
      })),
    );
  }

  async loadUsage() {
    const range = RANGES[$("t-range").value] || RANGES.hour;
    const now = Date.now();
    const starts = periodStarts(range, now);
    // Total since each period start, per GPU type.
    const totals = await Promise.all(
      starts.map(async (s) => sumBy(await this.api.all("/usage", { since: iso(s) }), (r) => r.gpu_type)),
    );
    if (this.closed) return;
    const types = [...new Set(totals.flatMap((m) => [...m.keys()]))].sort();
    const buckets = starts.map((s, k) => {
      const parts = {};
      for (const t of types) {
        const here = (totals[k].get(t) || { gpu_hours: 0 }).gpu_hours;
        const later = k + 1 < totals.length ? (totals[k + 1].get(t) || { gpu_hours: 0 }).gpu_hours : 0;
        // Totals are rounded (1e-6 GPU-h) and each call sees the server's clock a few ms
        // apart: a difference under NOISE_GPU_H is not usage.
        const v = here - later;
        parts[t] = v < NOISE_GPU_H ? 0 : v;
      }
      const end = k + 1 < starts.length ? starts[k + 1] : now;
      return { label: periodLabel(range, s), tip: `${when(iso(s))} to ${when(iso(end))}`, parts };
    });
    drawBars($("usage-chart"), buckets, types, "GPU-h");
    const first = totals[0];
    let hours = 0;
    let cost = 0;
    this.usage.update(
      types.map((t) => {
        const v = first.get(t);
        hours += v.gpu_hours;
        cost += v.cost;
        return { key: t, cells: { gpu_type: t, gpu_hours: num(v.gpu_hours, 4), cost: money(v.cost) } };
      }),
    );
    $("t-usage-total").textContent = ` ${num(hours, 4)} GPU-hours, cost ${money(cost)}, since ${when(iso(starts[0]))}`;
  }

  async loadJobs() {
    const jobs = await this.api.all("/jobs");
    const t = (s) => (s ? when(iso(s > 1e11 ? s : s * 1000)) : "");
    this.jobs.update(
      [...jobs].reverse().map((j) => ({
        key: j.id,
        cells: {
          id: j.id,
          status: { text: j.status, cls: `state ${String(j.status).toLowerCase()}` },
          entrypoint: j.entrypoint || "",
          message: j.message || "",
          start_time: t(j.start_time),
          end_time: t(j.end_time),
        },
      })),
    );
  }
}
