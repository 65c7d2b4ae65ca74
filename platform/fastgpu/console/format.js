// Numbers, times and wait reasons in words; usage periods. No DOM here.

/** What each PendingReason code (fastgpu.domain.lease) means, for people. */
export const REASONS = {
  over_quota: "over quota: beyond the guaranteed GPUs plus what this tenant may borrow",
  no_capacity: "no capacity: the GPUs of this type are in use",
  fragmentation: "fragmentation: enough GPUs are free, but not on few enough nodes",
  infeasible: "infeasible: it can never fit (cluster, quota ceiling or borrowing rule)",
  budget_exhausted: "budget used up for this period",
  fair_share_rank: "fair share: tenants that used less go first",
  backfill_window: "backfill: waits so a larger request ahead of it can start",
  lower_priority: "priority: higher-priority requests go first",
  reserving: "reserving: admitted, its GPUs are being set up",
};

export function reasonText(code) {
  if (!code) return "not scheduled yet";
  return REASONS[code] || code;
}

export function num(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return "";
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function money(value) {
  return Number(value || 0).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}

/** 4000 -> "1h 6m". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !(seconds >= 0)) return "";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

/** Seconds from an ISO time until now (positive: in the past). */
export function since(isoTime) {
  if (!isoTime) return null;
  return (Date.now() - Date.parse(isoTime)) / 1000;
}

/** "2026-11-02 14:03:05 UTC". */
export function when(isoTime) {
  if (!isoTime) return "";
  const d = new Date(isoTime);
  if (Number.isNaN(d.getTime())) return String(isoTime);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

export function iso(ms) {
  return new Date(ms).toISOString();
}

/** Start (UTC, ms) of the budget period holding `now`: as fastgpu.domain.usage.period_start. */
export function periodStart(nowMs, period) {
  const d = new Date(nowMs);
  let start = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate());
  if (period === "week") start -= ((d.getUTCDay() + 6) % 7) * 86400e3; // ISO week: Monday
  else if (period === "month") start = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1);
  return start;
}

/** Chart ranges: `n` periods of `step` ms, the last one ending now. */
export const RANGES = {
  hour: { label: "last hour (5-minute bars, UTC)", step: 5 * 60e3, n: 12 },
  day: { label: "last 24 hours (hourly bars, UTC)", step: 3600e3, n: 24 },
  week: { label: "last 7 days (daily bars, UTC)", step: 86400e3, n: 7 },
};

/** The starts (ms) of a range's periods, aligned to whole periods (UTC), oldest first. */
export function periodStarts(range, nowMs) {
  const last = Math.floor(nowMs / range.step) * range.step;
  return Array.from({ length: range.n }, (_, i) => last - (range.n - 1 - i) * range.step);
}

export function periodLabel(range, startMs) {
  const s = new Date(startMs).toISOString();
  return range.step >= 86400e3 ? s.slice(5, 10) : s.slice(11, 16);
}

/** Sum usage rows ({tenant, gpu_type, gpu_hours, cost}) per key(row). */
export function sumBy(rows, key) {
  const out = new Map();
  for (const r of rows) {
    const k = key(r);
    const acc = out.get(k) || { gpu_hours: 0, cost: 0 };
    acc.gpu_hours += r.gpu_hours;
    acc.cost += r.cost;
    out.set(k, acc);
  }
  return out;
}
