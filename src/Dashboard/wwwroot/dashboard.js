// DistGpt's training page. Data: /api/runs (how each run was set up) and /api/events (server-sent events: every
// metrics.jsonl record of every run, then new ones as training writes them). Every string from the server reaches the
// page through textContent or a canvas, never as HTML.
"use strict";

const COLORS = ["#1f6fb4", "#d62728", "#2ca02c", "#9467bd", "#e07b00", "#8c564b"];
const PARTS = [["compute", "#4e79a7"], ["comm", "#f28e2b"], ["wait", "#c9c3bd"]];
const WINDOW = 20; // steps averaged in the workers panel
const runs = [];   // { info, records: [], state }
let renderPending = false;
const drawn = {};  // what each slow-changing panel last showed: it is rebuilt only when that changes

const $ = id => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

// ---- data -------------------------------------------------------------------------------------------------------

async function start() {
  const infos = await (await fetch("api/runs")).json();
  infos.forEach((info, i) => { runs[i] = runs[i] || { records: [], state: "" }; runs[i].info = info; });
  const select = $("run-select");
  infos.forEach((info, i) => select.append(new Option(info.label, String(i))));
  select.addEventListener("change", render);
  $("log-scale").addEventListener("change", render);
  $("smoothing").addEventListener("input", () => { $("smoothing-value").textContent = Number($("smoothing").value).toFixed(2); render(); });
  window.addEventListener("resize", scheduleRender);
  document.addEventListener("visibilitychange", scheduleRender);
  connect();
  scheduleRender();
}

function connect() {
  const events = new EventSource("api/events");
  const badge = $("connection");
  events.onopen = () => { badge.textContent = "connected"; badge.className = "badge live"; };
  events.onerror = () => {
    const over = runs.length > 0 && runs.every(r => r.state && r.state !== "live");
    badge.textContent = over ? "server stopped" : "reconnecting…";
    badge.className = "badge lost";
  };
  events.addEventListener("record", e => {
    const { run, record } = JSON.parse(e.data);
    runOf(run).records.push(record);
    scheduleRender();
  });
  events.addEventListener("state", e => {
    const { run, state } = JSON.parse(e.data);
    runOf(run).state = state;
    scheduleRender();
  });
}

function runOf(i) { return runs[i] || (runs[i] = { records: [], state: "", info: { label: "run " + i } }); }

// Redraws at most once a second, and not while the tab is hidden: the page must not take the cores training uses
// (bench/dashboard-overhead.sh). The controls redraw at once.
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  setTimeout(() => { renderPending = false; if (!document.hidden) render(); }, 1000);
}

// ---- the page ---------------------------------------------------------------------------------------------------

function render() {
  const shown = runs.filter(r => r && r.info);
  const selected = runs[Number($("run-select").value) || 0] || shown[0];
  renderLatest(shown);
  renderLoss(shown);
  lineChart($("lr-chart"), shown.map((r, i) => series(r, i, "lr", m => m.lr)), { format: v => v.toExponential(1) });
  lineChart($("tps-chart"), shown.map((r, i) => series(r, i, "tokens/s", m => m.tokens_per_s)), {});
  if (selected) {
    renderWorkers(selected);
    renderMembership(selected);
    renderSteps(selected);
    renderSamples(selected);
  }
  renderRuns(shown);
}

// True when `value` differs from what panel `key` shows now (and remembers it).
function changed(key, value) {
  if (drawn[key] === value) return false;
  drawn[key] = value;
  return true;
}

function renderLatest(shown) {
  const latest = $("latest");
  const r = shown.find(x => x.state === "live") || shown[0];
  const last = r && r.records[r.records.length - 1];
  if (!last) { latest.textContent = "waiting for the first step…"; return; }
  latest.textContent = `${r.info.label} (${r.state || r.info.mode}): step ${last.step} · loss ${last.loss}`;
  latest.dataset.step = String(last.step);
  latest.dataset.loss = String(last.loss);
}

function series(run, i, name, value) {
  return { name: `${run.info.label} ${name}`, color: COLORS[i % COLORS.length], points: run.records.filter(m => value(m) != null).map(m => [m.step, value(m)]) };
}

function renderLoss(shown) {
  const alpha = Number($("smoothing").value);
  const all = [];
  const legend = $("loss-legend");
  legend.replaceChildren();
  shown.forEach((r, i) => {
    const color = COLORS[i % COLORS.length];
    const raw = r.records.map(m => [m.step, m.loss]);
    all.push({ name: "raw", color: color + "40", points: raw, width: 1 });
    all.push({ name: `${r.info.label} loss`, color, points: smooth(raw, alpha), width: 2 });
    all.push({ name: `${r.info.label} val loss`, color, points: r.records.filter(m => m.val_loss != null).map(m => [m.step, m.val_loss]), width: 1.5, dash: [5, 4], dots: true });
    const item = el("span");
    const swatch = el("span", null, "swatch");
    swatch.style.background = color;
    const lastVal = r.records.filter(m => m.val_loss != null).pop();
    item.append(swatch, el("span", `${r.info.label}: loss (smoothed), val loss dashed` + (lastVal ? ` — val ${lastVal.val_loss.toFixed(4)} at step ${lastVal.step}` : "")));
    legend.append(item);
  });
  lineChart($("loss-chart"), all, { log: $("log-scale").checked });
}

// Exponential moving average with bias correction (as TensorBoard's smoothing slider).
function smooth(points, alpha) {
  if (alpha <= 0) return points;
  let avg = 0, n = 0;
  return points.map(([x, y]) => { avg = alpha * avg + (1 - alpha) * y; n++; return [x, avg / (1 - Math.pow(alpha, n))]; });
}

function workerTimes(run) {
  const recent = run.records.filter(m => m.worker_compute_ms).slice(-WINDOW);
  const times = new Map();
  for (const m of recent) {
    const gather = (m.compute_ms || 0) + (m.comm_ms || 0);
    for (const [name, compute] of Object.entries(m.worker_compute_ms)) {
      const comm = (m.worker_comm_ms && m.worker_comm_ms[name]) || 0;
      const t = times.get(name) || { compute: 0, comm: 0, wait: 0, steps: 0 };
      t.compute += compute; t.comm += comm; t.wait += Math.max(0, gather - compute - comm); t.steps++;
      times.set(name, t);
    }
  }
  for (const t of times.values()) { t.compute /= t.steps; t.comm /= t.steps; t.wait /= t.steps; }
  return times;
}

function renderWorkers(run) {
  const times = workerTimes(run);
  const body = $("worker-table").tBodies[0];
  body.replaceChildren();
  for (const [name, t] of times) {
    const row = el("tr");
    row.append(el("td", name, "worker-name"), el("td", t.compute.toFixed(1)), el("td", t.comm.toFixed(1)), el("td", t.wait.toFixed(1)), el("td", t.steps));
    body.append(row);
  }
  if (times.size === 0) {
    const row = el("tr");
    const cell = el("td", run.info.mode === "train" ? "single process: no workers" : "no worker has reported a step yet");
    cell.colSpan = 5;
    row.append(cell);
    body.append(row);
  }
  stackedBars($("worker-chart"), [...times].map(([name, t]) => ({ name, parts: PARTS.map(([k, c]) => [k, c, t[k]]) })));
  lineChart($("lag-chart"), [{ name: "straggler lag", color: "#b42318", points: run.records.filter(m => m.straggler_lag_ms != null).map(m => [m.step, m.straggler_lag_ms]) }], {});
}

// Joins, losses, rejoins, departures between steps, rejected payloads and dropped stragglers, from the records.
function membershipEvents(run) {
  const events = [], seen = new Set();
  const add = (step, names, what) => (names || []).forEach(n => events.push([step, n, typeof what === "function" ? what(n) : what]));
  for (const m of run.records) {
    add(m.step, m.joined_workers, n => seen.has(n) ? "rejoined" : "joined");
    (m.joined_workers || []).forEach(n => seen.add(n));
    add(m.step, m.left_workers, "left between steps");
    add(m.step, m.lost_workers, "lost (share recomputed)");
    add(m.step, m.rejected_payloads, "payload rejected (share recomputed)");
    add(m.step, m.stragglers, "dropped as straggler");
  }
  return events;
}

function renderMembership(run) {
  const events = membershipEvents(run);
  if (changed("events", run.info.label + "#" + events.length)) {
    const body = $("events").tBodies[0];
    body.replaceChildren();
    for (const [step, name, what] of events.slice(-50).reverse()) {
      const row = el("tr");
      row.append(el("td", step), el("td", name, "worker-name"), el("td", what));
      body.append(row);
    }
  }
  // One lane per worker: a bar over every stretch of consecutive steps it computed in.
  const lanes = new Map(), previous = new Map();
  for (const m of run.records) for (const name of Object.keys(m.worker_compute_ms || {})) {
    if (!lanes.has(name)) lanes.set(name, []);
    const stretches = lanes.get(name);
    if (previous.get(name) === m.step - 1) stretches[stretches.length - 1][1] = m.step;
    else stretches.push([m.step, m.step]);
    previous.set(name, m.step);
  }
  timeline($("membership-chart"), lanes, events, run.records.length ? run.records[run.records.length - 1].step : 1);
}

function renderSteps(run) {
  const body = $("steps").tBodies[0];
  body.replaceChildren();
  const template = run.info.trace_link;
  for (const m of run.records.slice(-12).reverse()) {
    const row = el("tr");
    const trace = el("td");
    if (template && m.trace_id && /^https?:\/\//.test(template)) {
      const a = el("a", "trace");
      a.href = template.replaceAll("{trace_id}", encodeURIComponent(m.trace_id)).replaceAll("{step}", String(m.step));
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      trace.append(a);
    }
    row.append(el("td", m.step), el("td", m.loss), el("td", m.val_loss != null ? m.val_loss : ""), el("td", m.lr.toExponential(2)),
      el("td", m.step_ms.toFixed(1)), el("td", Math.round(m.tokens_per_s)), trace);
    body.append(row);
  }
}

function renderSamples(run) {
  const evals = run.records.filter(m => m.sample != null).slice(-5).reverse();
  if (!changed("samples", run.info.label + "#" + (evals.length ? evals[0].step : 0))) return;
  const box = $("samples");
  box.replaceChildren();
  if (evals.length === 0) box.append(el("p", "no evaluation step yet", "note"));
  for (const m of evals) {
    box.append(el("h3", `step ${m.step}` + (m.val_loss != null ? `, val loss ${m.val_loss.toFixed(4)}` : "")), el("pre", m.sample));
  }
}

function renderRuns(shown) {
  const worldSizeOf = r => r.info.world_size != null ? r.info.world_size : Math.max(0, ...r.records.map(m => m.workers || 0)) || 1;
  if (!changed("runs", shown.map(r => `${r.info.label}|${r.state}|${worldSizeOf(r)}`).join())) return;
  const box = $("runs");
  box.replaceChildren();
  shown.forEach((r, i) => {
    const title = el("h3", `${r.info.label} — ${r.state || r.info.mode}`);
    title.style.color = COLORS[i % COLORS.length];
    const dl = el("dl");
    const rows = [["run id", r.info.run_id], ["mode", r.info.mode], ["world size", worldSizeOf(r)], ["wire dtype", r.info.wire_dtype || (r.info.mode === "train" ? "none (one process)" : "not recorded")]];
    // (shares and replicas_per_share are 0 until a distributed run's coordinator fixes them: not worth a row then)
    for (const group of [r.info.config, r.info.settings]) if (group) for (const [k, v] of Object.entries(group)) if (v !== 0 || !/^(shares|replicas_per_share)$/.test(k)) rows.push([k, v]);
    for (const [k, v] of rows) if (v !== undefined && v !== null) dl.append(el("dt", k), el("dd", v));
    box.append(title, dl);
  });
}

// ---- charts on canvas -------------------------------------------------------------------------------------------

function setup(canvas, rows) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = rows === undefined ? Number(canvas.dataset.height || (canvas.dataset.height = canvas.getAttribute("height"))) : rows;
  // Resizing a canvas reallocates its bitmap: only when its size changed; otherwise it is cleared below.
  if (canvas.style.height !== height + "px") canvas.style.height = height + "px";
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  g.font = "11px system-ui, sans-serif";
  return { g, width, height };
}

function niceTicks(lo, hi, count) {
  const span = hi - lo || Math.abs(hi) || 1;
  const step0 = Math.pow(10, Math.floor(Math.log10(span / count)));
  const step = [1, 2, 5, 10].map(k => k * step0).find(s => span / s <= count) || step0 * 10;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function fmt(v) {
  const a = Math.abs(v);
  return a >= 1e5 ? (v / 1000).toFixed(0) + "k" : a >= 100 ? v.toFixed(0) : a >= 1 ? Number(v.toPrecision(3)).toString() : a === 0 ? "0" : v.toPrecision(2);
}

// Lines over steps; more points than pixels are thinned to about one per pixel column.
function lineChart(canvas, all, { log = false, format = fmt }) {
  const { g, width, height } = setup(canvas);
  const pad = { l: 52, r: 10, t: 8, b: 22 };
  const pts = all.flatMap(s => s.points).filter(([, y]) => Number.isFinite(y) && (!log || y > 0));
  if (pts.length === 0) { g.fillStyle = "#98a2b3"; g.fillText("no data yet", pad.l, height / 2); return; }
  const ty = log ? Math.log10 : (y => y);
  let x0 = Math.min(...pts.map(p => p[0])), x1 = Math.max(...pts.map(p => p[0]));
  let y0 = Math.min(...pts.map(p => ty(p[1]))), y1 = Math.max(...pts.map(p => ty(p[1])));
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const margin = (y1 - y0) * 0.05; y0 -= margin; y1 += margin;
  const X = x => pad.l + (x - x0) / (x1 - x0) * (width - pad.l - pad.r);
  const Y = y => pad.t + (1 - (ty(y) - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  g.strokeStyle = "#eef0f3"; g.fillStyle = "#667085"; g.lineWidth = 1;
  const yTicks = log ? niceTicks(Math.pow(10, y0), Math.pow(10, y1), 5).filter(v => v > 0) : niceTicks(y0, y1, 5);
  for (const v of yTicks) { const y = Y(v); g.beginPath(); g.moveTo(pad.l, y); g.lineTo(width - pad.r, y); g.stroke(); g.fillText(format(v), 4, y + 4); }
  for (const v of niceTicks(x0, x1, 8)) { const x = X(v); g.fillText(fmt(v), x - 8, height - 6); }
  for (const s of all) {
    const points = thin(s.points.filter(([, y]) => Number.isFinite(y) && (!log || y > 0)), width);
    if (points.length === 0) continue;
    g.strokeStyle = s.color; g.fillStyle = s.color; g.lineWidth = s.width || 1.5; g.setLineDash(s.dash || []);
    g.beginPath();
    points.forEach(([x, y], i) => i ? g.lineTo(X(x), Y(y)) : g.moveTo(X(x), Y(y)));
    g.stroke();
    g.setLineDash([]);
    if (s.dots) for (const [x, y] of points) { g.beginPath(); g.arc(X(x), Y(y), 2.5, 0, 2 * Math.PI); g.fill(); }
  }
}

function thin(points, width) {
  if (points.length <= width) return points;
  const every = points.length / width, out = [];
  for (let i = 0; i < points.length; i += every) out.push(points[Math.floor(i)]);
  out.push(points[points.length - 1]);
  return out;
}

// One horizontal bar per worker, its parts stacked: the slow worker has the longest compute and no wait.
function stackedBars(canvas, bars) {
  const pad = 110, rowH = 22;
  const { g, width } = setup(canvas, Math.max(60, bars.length * rowH + 30));
  const total = Math.max(1e-9, ...bars.map(b => b.parts.reduce((a, p) => a + p[2], 0)));
  bars.forEach((b, row) => {
    let x = pad;
    const y = 4 + row * rowH;
    g.fillStyle = "#1d2330"; g.fillText(b.name.length > 16 ? b.name.slice(0, 15) + "…" : b.name, 4, y + 13);
    for (const [, color, v] of b.parts) {
      const w = v / total * (width - pad - 60);
      g.fillStyle = color; g.fillRect(x, y, w, rowH - 6);
      x += w;
    }
    g.fillStyle = "#667085"; g.fillText(b.parts.reduce((a, p) => a + p[2], 0).toFixed(1) + " ms", x + 4, y + 13);
  });
  let x = pad;
  const y = 8 + bars.length * rowH;
  for (const [name, color] of PARTS) { g.fillStyle = color; g.fillRect(x, y, 12, 8); g.fillStyle = "#667085"; g.fillText(name, x + 16, y + 8); x += 90; }
}

function timeline(canvas, lanes, events, lastStep) {
  const pad = 110, rowH = 18, names = [...lanes.keys()];
  const { g, width } = setup(canvas, Math.max(40, names.length * rowH + 24));
  const X = s => pad + (s - 1) / Math.max(1, lastStep - 1) * (width - pad - 10);
  names.forEach((name, row) => {
    const y = 4 + row * rowH;
    g.fillStyle = "#1d2330"; g.fillText(name.length > 16 ? name.slice(0, 15) + "…" : name, 4, y + 11);
    g.fillStyle = "#9ec5e8";
    for (const [from, to] of lanes.get(name)) g.fillRect(X(from), y + 2, Math.max(2, X(to) - X(from)), rowH - 6);
    for (const [step, who, what] of events) if (who === name && !/joined/.test(what)) { g.fillStyle = "#b42318"; g.fillRect(X(step) - 1, y, 3, rowH - 2); }
  });
  g.fillStyle = "#667085";
  g.fillText("step 1", pad, 10 + names.length * rowH + 8);
  g.fillText("step " + lastStep, width - 70, 10 + names.length * rowH + 8);
}

start().catch(e => { $("connection").textContent = "could not load: " + e.message; $("connection").className = "badge lost"; });
