// The operator console (api/routes/console.py). Plain JS, no build step; charts are uPlot's.
// Every name shown comes from config or Redis: text nodes only, never HTML.
"use strict";

const $ = id => document.getElementById(id);
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
                 "#475569", "#ea580c"];
const CAUSES = {upstream_4xx: "#d97706", upstream_5xx: "#dc2626", timeout: "#7c3aed", rate_limit: "#0891b2",
                budget: "#db2777", admission: "#475569"};
const view = {window: "1h", tenant: "", model: "", deployment: "", failed: false, by: "tenant", month: ""};
const charts = {};  // by chart id, for the page's tests and for resizing
window.consoleCharts = charts;
const openRows = new Set();  // request-log rows whose detail is open, kept across refreshes

async function api(path, options) {
  // From the origin: a page opened as http://user:key@host/ would resolve a relative URL with the
  // credentials in it, which fetch refuses; the browser sends its stored Basic credentials anyway.
  const response = await fetch(location.origin + path, {credentials: "same-origin", cache: "no-store", ...options});
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error && body.error.message) || "status " + response.status);
  return body;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

const ms = v => v === null || v === undefined ? "–" : v >= 1000 ? (v / 1000).toFixed(2) + " s" : Math.round(v) + " ms";
const usd = v => v === null || v === undefined ? "–" : "$" + (v >= 100 ? v.toFixed(2) : v >= 1 ? v.toFixed(3) : v.toFixed(6));
const dollars = v => v === 0 ? "$0" : "$" + (Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(2));
const num = v => v === null || v === undefined ? "–" : v >= 1e6 ? (v / 1e6).toFixed(1) + "M" : v >= 1e4 ? (v / 1e3).toFixed(1) + "k" : String(Math.round(v * 100) / 100);

// Points only where a value stands alone between gaps: a line needs two, and a minute of traffic is one.
function isolated(u, si, show) {
  if (show) return null;
  const ys = u.data[si], found = [];
  for (let i = 0; i < ys.length; i++) {
    if (ys[i] !== null && (i === 0 || ys[i - 1] === null) && (i === ys.length - 1 || ys[i + 1] === null)) found.push(i);
  }
  return found.length ? found : null;
}

// One uPlot per chart element, rebuilt only when its series change; data swapped in place otherwise.
function plot(id, series, data, extra = {}) {
  const box = $(id);
  const spec = series.map(s => s.label).join("|") + "|" + (extra.kind || "");
  let chart = charts[id];
  const filled = data.slice(1).some(ys => ys.some(v => v !== null && v !== undefined));
  if (chart && chart.spec === spec) {
    chart.setData(data);
  } else {
    if (chart) chart.destroy();
    box.replaceChildren();
    chart = new uPlot({
      width: Math.max(240, box.clientWidth), height: 210,
      cursor: {drag: {x: false, y: false}},
      scales: {x: {time: true}, y: {range: (u, lo, hi) => [Math.min(0, lo), hi > 0 ? hi * 1.1 : 1]}},
      axes: [{stroke: "#6b7280", grid: {stroke: "#eef0f3"}},
             {stroke: "#6b7280", grid: {stroke: "#eef0f3"}, size: 64, values: (u, vals) => vals.map(extra.axis || num)}],
      series: [{value: extra.x || ((u, v) => v === null ? "–" : new Date(v * 1000).toLocaleString())},
               ...series.map(s => ({width: 1.6, points: {show: false, filter: isolated, size: 7}, spanGaps: false, ...s}))],
    }, data, box);
    chart.spec = spec;
    charts[id] = chart;
  }
  chart.filled = filled;
  return chart;
}

const resizer = new ResizeObserver(entries => {
  for (const entry of entries) {
    const chart = charts[entry.target.id];
    if (chart && Math.abs(chart.width - entry.target.clientWidth) > 4) {
      chart.setSize({width: Math.max(240, entry.target.clientWidth), height: 210});
    }
  }
});

// ------------------------------------------------------------------ traffic

function tile(label, value, bad) {
  const box = el("div", null, "tile" + (bad ? " bad" : ""));
  box.append(el("div", value, "v"), el("div", label, "k"));
  return box;
}

function last(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
  return null;
}

async function loadSeries() {
  const s = await api("/console/series" + query({window: view.window, tenant: view.tenant, model: view.model,
                                                 deployment: view.deployment}));
  const t = s.t, total = s.totals;
  const refused = total.rate_limit + total.budget + total.admission;
  const failed = total.upstream_4xx + total.upstream_5xx + total.timeout + refused;
  const asked = total.requests + refused;
  const rate = asked ? failed / asked : 0;
  $("tiles").replaceChildren(
    tile("requests in " + s.window, num(asked)),
    tile("error rate", (100 * rate).toFixed(2) + " %", rate > 0.05),
    tile("refused at the door", num(refused), refused > 0),
    tile("latest p99 latency", ms(last(s.latency_ms.p99))),
    tile("latest p50 TTFT", ms(last(s.ttft_ms.p50))),
    tile("tokens in / out", num(total.input_tokens) + " / " + num(total.output_tokens)));
  plot("c-requests", [{label: "requests/s", stroke: PALETTE[0], fill: "rgba(37,99,235,.10)"}], [t, s.requests_per_s]);
  plot("c-latency", [{label: "p50", stroke: PALETTE[0], value: (u, v) => ms(v)},
                     {label: "p99", stroke: PALETTE[1], value: (u, v) => ms(v)}],
       [t, s.latency_ms.p50, s.latency_ms.p99], {axis: ms});
  plot("c-ttft", [{label: "p50", stroke: PALETTE[2], value: (u, v) => ms(v)},
                  {label: "p99", stroke: PALETTE[3], value: (u, v) => ms(v)}],
       [t, s.ttft_ms.p50, s.ttft_ms.p99], {axis: ms});
  const causes = Object.keys(CAUSES);
  plot("c-errors", causes.map(c => ({label: c.replace("_", " "), stroke: CAUSES[c],
                                     value: (u, v) => v === null ? "–" : v.toFixed(2) + " %"})),
       [t, ...causes.map(c => s.errors_per_s[c].map((e, i) => s.requests_per_s[i] ? 100 * e / s.requests_per_s[i] : null))],
       {axis: v => v.toFixed(1) + "%"});
  plot("c-tokens", [{label: "input", stroke: PALETTE[4]}, {label: "output", stroke: PALETTE[5]}],
       [t, s.tokens_per_s.input, s.tokens_per_s.output]);
  // The lanes that had work; if none had, those sampled (a flat zero says the queues were watched and empty).
  const sampled = Object.entries(s.queues).filter(([, q]) => q.depth.some(v => v !== null));
  const busy = sampled.filter(([, q]) => q.depth.some(v => v) || q.oldest_s.some(v => v));
  let lanes = busy.length ? busy : sampled.filter(([name]) => name.endsWith("/default"));
  const none = lanes.length === 0;
  if (none) lanes = [["no worker sampled yet", {depth: t.map(() => null), oldest_s: t.map(() => null)}]];
  plot("c-depth", lanes.map(([name], i) => ({label: name, stroke: PALETTE[i % PALETTE.length]})),
       [t, ...lanes.map(([, q]) => q.depth)], {kind: none ? "none" : ""});
  plot("c-wait", lanes.map(([name], i) => ({label: name, stroke: PALETTE[i % PALETTE.length],
                                             value: (u, v) => v === null ? "–" : v.toFixed(1) + " s"})),
       [t, ...lanes.map(([, q]) => q.oldest_s)], {kind: none ? "none" : ""});
}

// ------------------------------------------------------------------ spend

function budgetsFor(d, groups, field) {
  // Budget lines for what is shown: a tenant's own by tenant (or by model, for one tenant); a key's by key.
  return d.budgets.filter(b => b[field] !== null && (
    view.by === "key" ? b.key !== null && groups.includes(b.key)
      : b.key === null && (view.by === "tenant" ? groups.includes(b.tenant) : view.tenant === b.tenant)));
}

async function loadSpend() {
  const d = await api("/console/spend" + query({month: view.month, tenant: view.tenant}));
  const rows = d.rows.filter(r => !view.model || r.model === view.model);
  const xs = d.days.map(day => Date.parse(day + "T00:00:00Z") / 1000);
  const own = new Map();  // group → nano-dollars per day
  const requests = new Map();
  for (const r of rows) {
    const g = r[view.by];
    if (!own.has(g)) { own.set(g, d.days.map(() => 0)); requests.set(g, 0); }
    own.get(g)[d.days.indexOf(r.day)] += r.cost_nanos;
    requests.set(g, requests.get(g) + r.requests);
  }
  const groups = [...own.keys()].sort((a, b) => own.get(b).reduce((x, y) => x + y, 0) - own.get(a).reduce((x, y) => x + y, 0));
  const toUsd = nanos => nanos / 1e9;
  // Stacked bars: series i is the sum of groups i.. so each later (smaller) bar is painted over the one before;
  // its legend shows the group's own figure.
  const stacks = groups.map((g, i) => d.days.map((_, day) => toUsd(groups.slice(i).reduce((sum, h) => sum + own.get(h)[day], 0))));
  const bars = uPlot.paths.bars({size: [0.7, 48]});
  const daily = budgetsFor(d, groups, "daily_usd");
  const monthly = budgetsFor(d, groups, "monthly_usd");
  const budgetLabel = b => (b.key ? "key " + b.key : b.tenant) + " budget";
  const dayLabel = {x: (u, v) => v === null ? "–" : new Date(v * 1000).toISOString().slice(0, 10)};
  plot("c-spend",
       [...groups.map((g, i) => ({label: g, stroke: PALETTE[i % PALETTE.length], fill: PALETTE[i % PALETTE.length] + "cc",
                                  paths: bars, points: {show: false}, value: (u, v, si, di) => di === null ? "–" : usd(toUsd(own.get(g)[di]))})),
        ...daily.map(b => ({label: budgetLabel(b), stroke: "#111827", dash: [6, 4], value: () => usd(b.daily_usd)}))],
       [xs, ...stacks, ...daily.map(b => xs.map(() => b.daily_usd))], {axis: dollars, kind: "spend", ...dayLabel});
  const running = g => { let sum = 0; return own.get(g).map(v => toUsd(sum += v)); };
  plot("c-cumulative",
       [...groups.map((g, i) => ({label: g, stroke: PALETTE[i % PALETTE.length], value: (u, v) => usd(v)})),
        ...monthly.map(b => ({label: budgetLabel(b), stroke: "#111827", dash: [6, 4], value: () => usd(b.monthly_usd)}))],
       [xs, ...groups.map(running), ...monthly.map(b => xs.map(() => b.monthly_usd))], {axis: dollars, kind: "cum", ...dayLabel});
  $("s-col").textContent = view.by;
  const budgetOf = (g, field) => {
    const b = d.budgets.find(b => (view.by === "key" ? b.key === g : view.by === "tenant" && b.key === null && b.tenant === g));
    return b && b[field] !== null ? usd(b[field]) : "–";
  };
  let total = 0;
  $("spend-table").tBodies[0].replaceChildren(...groups.map(g => {
    const nanos = own.get(g).reduce((x, y) => x + y, 0);
    total += nanos;
    const tr = el("tr");
    tr.append(el("td", g), el("td", String(requests.get(g)), "num"), el("td", usd(toUsd(nanos)), "num"),
              el("td", budgetOf(g, "daily_usd"), "num"), el("td", budgetOf(g, "monthly_usd"), "num"));
    tr.dataset.nanos = String(nanos);
    return tr;
  }));
  $("s-total").textContent = usd(toUsd(total)) + " in " + d.month;
}

// ------------------------------------------------------------------ request log

function detail(r) {
  const tr = el("tr", null, "detail");
  const td = el("td");
  td.colSpan = 14;
  const lines = r.error
    ? [["error", r.error], ["cause", r.cause || "–"]]
    : [["answer", r.outcome === "cancelled" ? "the client left before the answer" : "no error"]];
  lines.push(["path", [...r.path, r.deployment + (r.error ? " " + r.status : "")].join("  →  ")],
             ["request id", r.request_id], ["outcome", r.outcome]);
  const box = el("div", null, "detail-box");  // pinned to the visible part of a table scrolled sideways
  for (const [k, v] of lines) {
    const pre = el("pre");
    pre.append(el("b", k + ": "), document.createTextNode(v));
    box.append(pre);
  }
  td.append(box);
  tr.append(td);
  return tr;
}

async function loadLog() {
  const d = await api("/console/log" + query({tenant: view.tenant, model: view.model, deployment: view.deployment,
                                              failed: view.failed ? "1" : "", limit: 100}));
  const body = $("log").tBodies[0];
  const rows = [];
  for (const r of d.data) {
    const failed = r.outcome === "error" || r.outcome === "refused";
    const tr = el("tr", null, "row" + (failed ? " failed" : ""));
    tr.dataset.id = r.id;
    const status = (r.status === null ? "–" : String(r.status)) + (r.cause ? " " + r.cause.replace("_", " ") : "")
      + (r.outcome === "cache_hit" ? " cache" : "");
    tr.append(el("td", new Date(r.at * 1000).toLocaleTimeString()), el("td", status, failed ? "" : "status-ok"),
              el("td", r.tenant), el("td", r.key), el("td", r.model), el("td", r.deployment), el("td", r.lane || "–"),
              el("td", ms(r.latency_ms), "num"), el("td", ms(r.ttft_ms), "num"),
              el("td", r.input_tokens + " / " + r.output_tokens, "num"), el("td", usd(r.cost_usd), "num"),
              el("td", String(r.calls || "–"), "num"), el("td", r.path.length ? r.path.join(" → ") + " →" : "–"),
              el("td", r.request_id));
    tr.addEventListener("click", () => {
      if (openRows.has(r.id)) { openRows.delete(r.id); tr.nextSibling.remove(); }
      else { openRows.add(r.id); tr.after(detail(r)); }
    });
    rows.push(tr);
    if (openRows.has(r.id)) rows.push(detail(r));
  }
  body.replaceChildren(...rows);
  $("r-count").textContent = d.data.length + " shown";
}

// ------------------------------------------------------------------ keys

const LIMITS = ["rpm", "tpm", "max_concurrent", "daily_budget_usd", "monthly_budget_usd"];

async function loadKeys() {
  const d = await api("/admin/keys");
  $("keys-table").tBodies[0].replaceChildren(...d.data.map(k => {
    const tr = el("tr");
    tr.dataset.name = k.name;
    tr.append(el("td", k.name), el("td", k.tenant), el("td", k.id), el("td", k.source),
              ...LIMITS.map(f => el("td", k[f] === null || k[f] === undefined ? "–" : String(k[f]), "num")),
              el("td", k.created_at ? new Date(k.created_at * 1000).toLocaleString() : "–"));
    const cell = el("td");
    if (k.source === "redis") {
      const button = el("button", "revoke", "revoke");
      button.type = "button";
      button.addEventListener("click", async () => {
        if (button.dataset.armed !== "1") { button.dataset.armed = "1"; button.textContent = "confirm revoke"; return; }
        button.disabled = true;
        try { await api("/admin/keys/" + encodeURIComponent(k.name), {method: "DELETE"}); await loadKeys(); }
        catch (err) { showError(err); button.disabled = false; }
      });
      cell.append(button);
    }
    tr.append(cell);
    return tr;
  }));
}

async function createKey(event) {
  event.preventDefault();
  const spec = {tenant: $("k-tenant").value};
  if ($("k-name").value) spec.name = $("k-name").value;
  for (const f of LIMITS) {
    const v = $("k-" + f).value;
    if (v !== "") spec[f] = f.endsWith("_usd") ? parseFloat(v) : parseInt(v, 10);
  }
  try {
    const made = await api("/admin/keys", {method: "POST", headers: {"content-type": "application/json"},
                                           body: JSON.stringify(spec)});
    $("k-secret").textContent = made.key;
    $("k-made").hidden = false;
    $("k-form").reset();
    await loadKeys();
    showError(null);
  } catch (err) { showError(err); }
}

// ------------------------------------------------------------------ wiring

function showError(err) {
  $("error").textContent = err ? "cannot read the broker's figures: " + err.message : "";
}

function options(select, values) {
  for (const v of values) select.append(new Option(v, v));
}

async function refresh(parts) {
  try {
    await Promise.all(parts.map(part => part()));
    showError(null);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) { showError(err); }
}

async function start() {
  const meta = await api("/console/meta");
  view.month = meta.month;
  $("s-month").value = meta.month;
  options($("f-tenant"), meta.tenants);
  options($("f-model"), meta.models);
  options($("f-deployment"), meta.deployments);
  options($("k-tenant"), meta.tenants);
  $("rollups-off").hidden = meta.rollups;
  for (const w of meta.windows) {
    const b = el("button", w, w === view.window ? "on" : "");
    b.type = "button";
    b.dataset.window = w;
    b.addEventListener("click", () => {
      view.window = w;
      document.querySelectorAll("#window button").forEach(x => x.classList.toggle("on", x === b));
      refresh([loadSeries]);
    });
    $("window").append(b);
  }
  for (const f of ["tenant", "model", "deployment"]) {
    $("f-" + f).addEventListener("change", e => { view[f] = e.target.value; refresh([loadSeries, loadSpend, loadLog]); });
  }
  $("s-month").addEventListener("change", e => { view.month = e.target.value; refresh([loadSpend]); });
  $("s-by").addEventListener("change", e => { view.by = e.target.value; refresh([loadSpend]); });
  $("r-failed").addEventListener("change", e => { view.failed = e.target.checked; refresh([loadLog]); });
  $("k-form").addEventListener("submit", createKey);
  document.querySelectorAll(".chart").forEach(box => resizer.observe(box));
  await refresh([loadSeries, loadSpend, loadLog, loadKeys]);
  document.body.dataset.ready = "1";
  let tick = 0;
  setInterval(() => {
    tick += 1;
    const parts = [loadLog];
    if (view.window === "1h" || tick % 6 === 0) parts.push(loadSeries);
    if (tick % 6 === 0) parts.push(loadSpend);
    refresh(parts);
  }, 5000);
}

start().catch(showError);
