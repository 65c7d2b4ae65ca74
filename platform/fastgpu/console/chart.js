// A bar chart drawn as inline SVG (no library): one bar per period, stacked by GPU type.

import { svg } from "./dom.js";

const W = 640;
const H = 220;
const PAD = { left: 52, right: 8, top: 24, bottom: 28 };

function niceMax(value) {
  if (!(value > 0)) return 1;
  const exp = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (value <= m * exp) return m * exp;
  return 10 * exp;
}

function fmt(value) {
  if (value === 0) return "0";
  if (value >= 100) return value.toFixed(0);
  if (value >= 1) return value.toFixed(2);
  return value.toPrecision(2);
}

/**
 * Draw `buckets` ([{label, tip, parts: {gpu_type: value}}]) into the <svg> `target`, replacing
 * what was there in one step (no flicker). Each bar is a <g class="bar" data-value=...>.
 */
export function drawBars(target, buckets, types, unit) {
  const totals = buckets.map((b) => Object.values(b.parts).reduce((a, v) => a + v, 0));
  const top = niceMax(Math.max(0, ...totals));
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const y = (v) => PAD.top + plotH - (v / top) * plotH;
  const slot = plotW / Math.max(buckets.length, 1);
  const nodes = [];
  for (const frac of [0, 0.5, 1]) {
    const v = top * frac;
    nodes.push(
      svg("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }),
      svg("text", { class: "axis", x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end" }, fmt(v)),
    );
  }
  nodes.push(svg("text", { class: "axis", x: 4, y: 11 }, unit));
  buckets.forEach((b, i) => {
    const x = PAD.left + i * slot + slot * 0.12;
    const w = slot * 0.76;
    let base = 0;
    const rects = [];
    types.forEach((t, k) => {
      const v = b.parts[t] || 0;
      if (v <= 0) return;
      rects.push(
        svg("rect", { class: `series s${k % 6}`, x, width: w, y: y(base + v), height: y(base) - y(base + v) }),
      );
      base += v;
    });
    const tip = `${b.tip}: ${fmt(totals[i])} ${unit}` + types.map((t) => (b.parts[t] ? `\n${t}: ${fmt(b.parts[t])}` : "")).join("");
    nodes.push(
      svg(
        "g",
        { class: "bar", dataset: { value: totals[i].toFixed(6), label: b.label } },
        svg("title", null, tip),
        // An invisible full-height target, so that an empty period still has a tooltip.
        svg("rect", { class: "hit", x: PAD.left + i * slot, width: slot, y: PAD.top, height: plotH }),
        rects,
      ),
    );
    const every = Math.ceil(buckets.length / 6);
    if (i % every === 0 || i === buckets.length - 1) {
      nodes.push(svg("text", { class: "axis", x: x + w / 2, y: H - 8, "text-anchor": "middle" }, b.label));
    }
  });
  types.forEach((t, k) => {
    const lx = W - PAD.right - (types.length - k) * 70;
    nodes.push(
      svg("rect", { class: `series s${k % 6}`, x: lx, y: 2, width: 10, height: 10 }),
      svg("text", { class: "axis", x: lx + 14, y: 11 }, t),
    );
  });
  target.replaceChildren(...nodes);
}
