// Safe DOM building and flicker-free tables.
//
// Every string from the API (tenant names, reasons, workloads, entrypoints) becomes a text
// node or an attribute value here, never markup: nothing in the console assigns innerHTML,
// and the page's CSP requires Trusted Types, so such an assignment would throw anyway.

import { describe } from "./api.js";

const SVG_NS = "http://www.w3.org/2000/svg";

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child)); // a string is a text node
  }
}

function setProps(node, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.setAttribute("class", value);
    else if (key === "text") node.textContent = String(value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else node.setAttribute(key, value === true ? "" : String(value));
  }
}

/** An HTML element: el("td", {class: "num"}, "3"). */
export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  setProps(node, props);
  append(node, children);
  return node;
}

/** An SVG element, same calling convention as el(). */
export function svg(tag, props, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setProps(node, props);
  append(node, children);
  return node;
}

export function show(node, visible) {
  node.hidden = !visible;
}

/**
 * Run `load` for one card of the page: its error, in words, replaces the card's [data-error]
 * line, and the rest of the page carries on. Resolves to the error, or null.
 */
export async function guarded(card, load) {
  const line = card.querySelector("[data-error]");
  try {
    await load();
    line.hidden = true;
    line.textContent = "";
    return null;
  } catch (err) {
    line.textContent = describe(err);
    line.hidden = false;
    return err;
  }
}

/** A cell: a string or number is its text; {text, cls, title, meter: [value, max]} more. */
function setCell(td, spec) {
  const cell = spec !== null && typeof spec === "object" ? spec : { text: spec };
  const text = cell.text === null || cell.text === undefined ? "" : String(cell.text);
  const cls = cell.cls || "";
  if ((td.getAttribute("class") || "") !== cls) td.setAttribute("class", cls);
  if (cell.title) td.title = String(cell.title);
  else td.removeAttribute("title");
  if (cell.meter) {
    const [value, max] = cell.meter;
    let meter = td.querySelector("meter");
    let label = td.querySelector("span");
    if (!meter) {
      td.replaceChildren();
      meter = el("meter", { min: 0 });
      label = el("span");
      td.append(meter, label);
    }
    meter.max = Math.max(max, 1e-9);
    meter.value = Math.min(value, meter.max);
    if (label.textContent !== text) label.textContent = text;
  } else if (td.childElementCount !== 0 || td.textContent !== text) {
    td.textContent = text;
  }
}

/**
 * A table whose rows are updated in place, matched by key: a refresh rewrites only the cells
 * whose text changed, so it neither flickers nor loses a selection or the scroll position.
 * Rows are <tr data-key=...>, cells <td data-col=...> (the browser tests read them).
 */
export class LiveTable {
  constructor(table, columns) {
    this.table = table;
    this.columns = columns; // [{key, label, num?}]
    const head = el("tr", null, columns.map((c) => el("th", { class: c.num ? "num" : "" }, c.label)));
    // New rows are clones of this one (cheaper than building each cell: 1,000 tenants).
    this.prototype = el("tr", null, columns.map((c) => el("td", { dataset: { col: c.key } })));
    this.body = el("tbody");
    table.replaceChildren(el("thead", null, head), this.body);
  }

  /** Empty it for good: a refresh still in flight when the user signs out renders nothing. */
  close() {
    this.update([]);
    this.closed = true;
  }

  /** rows: [{key, cells: {column key: cell}}], in display order. */
  update(rows) {
    if (this.closed) return;
    const old = new Map();
    for (const tr of this.body.rows) old.set(tr.dataset.key, tr);
    let prev = null;
    for (const row of rows) {
      const key = String(row.key);
      let tr = old.get(key);
      if (tr) old.delete(key);
      else {
        tr = this.prototype.cloneNode(true);
        tr.dataset.key = key;
      }
      if (row.cls !== undefined && (tr.getAttribute("class") || "") !== row.cls) {
        tr.setAttribute("class", row.cls);
      }
      this.columns.forEach((c, i) => {
        const spec = row.cells[c.key];
        setCell(tr.cells[i], c.num && (typeof spec !== "object" || spec === null) ? { text: spec, cls: "num" } : spec);
      });
      const want = prev ? prev.nextSibling : this.body.firstChild;
      if (want !== tr) this.body.insertBefore(tr, want);
      prev = tr;
    }
    for (const tr of old.values()) tr.remove();
    this.table.hidden = rows.length === 0;
  }
}
