// spikestream view: draws what decoder_runtime/view/server.py sends over its WebSocket.
// The server decides what a restart, a silence or a missing bin is (view/state.py); this
// page keeps the last WINDOW_S seconds, scrolls them on every animation frame, and exposes
// window.spikeview (fps, frames, JS ms per frame) for tests and benchmarks. It draws at most
// MAX_FPS frames per second (30, or ?fps=N): smooth for a person, half the CPU of 60.
"use strict";

const WINDOW_S = 10, STALE_S = 0.5;
const STATES = (1 << 1) | (1 << 10);  // adapt, imputed: lasting states (counted, not marked on every bin)
const MAX_FPS = Number(new URLSearchParams(location.search).get("fps")) || 30;
const MARK_COLOURS = {restart: "#6a1b9a", silence: "#c62828", missing: "#e65100"};
const view = window.spikeview = {fps: 0, frames: 0, connected: false, updates: 0, frameMs: 0};

const T = [], VX = [], VY = [], LAT = [], FLAGGED = [];  // columns; null rows break the lines
let markers = [], trail = [];
let upto = 0, lastSeq = null, clockOffset = 0, dirty = true, lastFrame = -Infinity;
let msg0 = {run: {}, restarts: 0, last_rx: null, endpoints: []}, status = null, task = null;
const drawTimes = [];

const $ = (id) => document.getElementById(id);
const serverNow = () => performance.now() / 1000 + clockOffset;
function setText(id, text) { const el = $(id); if (el.textContent !== text) el.textContent = text; }

function addBins(rows) {
  for (const [i, rx, seq, , vx, vy, lat, flags] of rows) {
    if (i <= upto) continue;  // already had it in a snapshot
    upto = i;
    const n = T.length;
    if (n && (rx - T[n - 1] > 0.3 || seq !== lastSeq + 1)) {  // restart, silence or missing bins: break the lines
      T.push((rx + T[n - 1]) / 2); VX.push(null); VY.push(null); LAT.push(null); FLAGGED.push(null);
    }
    T.push(rx); VX.push(vx); VY.push(vy); LAT.push(lat); FLAGGED.push(flags & ~STATES ? lat : null);
    lastSeq = seq;
    const s = $("seq"); s.textContent = String(seq); s.dataset.value = String(seq);
    for (const [id, v] of [["vx", vx], ["vy", vy]]) {
      const el = $(id); el.textContent = v === null ? "–" : v.toFixed(4); el.dataset.value = String(v);
    }
  }
}

function handle(msg) {
  clockOffset = msg.now - performance.now() / 1000;
  view.updates++;
  if (msg.type === "snapshot") {
    for (const col of [T, VX, VY, LAT, FLAGGED]) col.length = 0;
    markers = []; upto = 0; lastSeq = null;
  }
  addBins(msg.bins);
  if (msg.type === "snapshot") upto = Math.max(upto, msg.upto);
  const known = new Set(markers.map((m) => m.i));
  for (const m of msg.markers) if (!known.has(m.i)) markers.push(m);
  if ("status" in msg) status = msg.status;
  if ("task" in msg && msg.task) { task = msg.task; trail.push(task.cursor); if (trail.length > 80) trail.shift(); }
  msg0 = msg;
  dirty = true;
}

function trim(now) {
  const from = now - WINDOW_S - 1;
  let k = 0;
  while (k < T.length && T[k] < from) k++;
  if (k) for (const col of [T, VX, VY, LAT, FLAGGED]) col.splice(0, k);
  markers = markers.filter((m) => m.t >= from);
}

function drawMarkers(u) {
  const ctx = u.ctx, {left, top, width, height} = u.bbox, dpr = devicePixelRatio;
  ctx.save();
  ctx.font = `${11 * dpr}px sans-serif`;
  for (const m of markers) {
    const x = u.valToPos(m.t, "x", true);
    if (x < left || x > left + width) continue;
    ctx.strokeStyle = ctx.fillStyle = MARK_COLOURS[m.kind] || "#333";
    ctx.setLineDash([4 * dpr, 3 * dpr]);
    ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
    ctx.fillText(m.text, x + 3 * dpr, top + 12 * dpr);
  }
  const last = msg0.last_rx, now = serverNow();
  if (last !== null && now - last > STALE_S) {  // the silence going on now
    const x = Math.max(left, u.valToPos(last, "x", true));
    ctx.fillStyle = "rgba(198, 40, 40, 0.12)";
    ctx.fillRect(x, top, left + width - x, height);
    ctx.fillStyle = "#c62828";
    ctx.fillText(`no data for ${(now - last).toFixed(1)} s`, x + 4 * dpr, top + height - 6 * dpr);
  }
  ctx.restore();
}

function countDraw() {
  const t = performance.now();
  drawTimes.push(t);
  while (drawTimes[0] < t - 1000) drawTimes.shift();
  view.frames++;
  view.fps = drawTimes.length;
}

function makePlot(el, series, yLabel, onDraw = []) {
  return new uPlot({
    width: el.clientWidth, height: 210, legend: {show: true},
    scales: {x: {time: true, range: () => { const n = serverNow(); return [n - WINDOW_S, n]; }}},
    series: [{}, ...series], axes: [{}, {label: yLabel, size: 60}],
    hooks: {draw: [drawMarkers, ...onDraw]}, cursor: {drag: {x: false, y: false}},
  }, [[], ...series.map(() => [])], el);
}

const velPlot = makePlot($("vel-plot"), [{label: "vx", stroke: "#1f77b4", width: 1.5},
                                         {label: "vy", stroke: "#d62728", width: 1.5}], "velocity", [countDraw]);
const latPlot = makePlot($("lat-plot"), [{label: "latency µs", stroke: "#455a64", width: 1},
                                         {label: "flagged", stroke: "#e65100", fill: "#e65100", paths: () => null,
                                          points: {show: true, size: 7}}], "µs");

function pct(sorted, q) { return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]; }

function updateLatency() {
  const lat = LAT.filter((v) => v !== null).sort((a, b) => a - b);
  if (!lat.length) return;
  setText("lat-p50", pct(lat, 0.5).toFixed(0));
  setText("lat-p99", pct(lat, 0.99).toFixed(0));
  setText("lat-max", lat[lat.length - 1].toFixed(0));
}

function updateRun(now) {
  const run = msg0.run || {}, flags = Object.entries(run.flags || {});
  setText("flags", flags.length ? flags.map(([k, v]) => `${k} ${v}`).join(", ") : "none");
  setText("run", run.model ? `${run.model}: ${run.bins} bins, ${run.missing} missing` : "–");
  setText("restarts", String(msg0.restarts || 0));
  const list = $("markers");
  const recent = markers.slice(-5).reverse();
  const html = recent.map((m) => `<li class="${m.kind}">${new Date(m.t * 1000).toLocaleTimeString()} ${m.text}</li>`).join("");
  if (list.innerHTML !== html) list.innerHTML = html;
  const banner = $("banner"), last = msg0.last_rx;
  let cls, text;
  if (!view.connected) { cls = "stale"; text = "view server disconnected: reconnecting"; }
  else if (last === null) { cls = "waiting"; text = `waiting for data on ${(msg0.endpoints || []).join(", ")}`; }
  else if (now - last > STALE_S) { cls = "stale"; text = `no data for ${(now - last).toFixed(1)} s`; }
  else {
    const n = T.filter((t) => t > now - 1).length;
    cls = "live"; text = `live · ${n} bins/s`;
  }
  banner.className = cls; setText("banner", text);
}

function updateStatus(now) {
  if (!status) return;
  const s = status, src = s.source || {};
  setText("model", s.model);
  setText("backend", `${s.backend} / ${s.device}`);
  setText("artifact", (s.artifact || "–").slice(0, 16));
  $("artifact").title = s.artifact || "";
  setText("code", s.code);
  setText("bins", `${s.bins.toLocaleString()} · ${s.rate.toFixed(1)} bins/s (status ${(now - s.rx).toFixed(0)} s ago)`);
  setText("source", [src.kind, src.session || src.query, src.speed && `speed ${src.speed}`].filter(Boolean).join(" · "));
  setText("adapt", s.adapt);
  const h = s.health, grid = $("health");
  if (!h) { setText("health-text", "adaptation has no channel health stage (--adapt health to see it)"); grid.textContent = ""; return; }
  setText("health-text", `${h.n_channels} channels: dead [${h.dead}] stuck [${h.stuck}] noisy [${h.noisy}] · masked ${h.masked.length}`);
  if (grid.children.length !== h.n_channels) grid.innerHTML = "<div></div>".repeat(h.n_channels);
  const cls = new Array(h.n_channels).fill("");
  for (const kind of ["dead", "stuck", "noisy"]) for (const c of h[kind]) cls[c] = kind;
  for (const c of h.masked) cls[c] += " masked";
  [...grid.children].forEach((el, c) => { el.className = cls[c]; el.title = `channel ${c} ${cls[c] || "ok"}`; });
}

function drawTask(now) {
  const cv = $("task"), ctx = cv.getContext("2d");
  if (!task) return;
  const [x0, x1, y0, y1] = task.workspace, pad = 10;
  const k = Math.min((cv.width - 2 * pad) / (x1 - x0), (cv.height - 2 * pad) / (y1 - y0));
  const X = (x) => pad + (x - x0) * k, Y = (y) => cv.height - pad - (y - y0) * k;
  ctx.clearRect(0, 0, cv.width, cv.height);
  ctx.strokeStyle = "#bbb"; ctx.strokeRect(X(x0), Y(y1), (x1 - x0) * k, (y1 - y0) * k);
  if (task.target) {
    ctx.fillStyle = task.state === "hold" ? "rgba(46,125,50,0.5)" : "rgba(46,125,50,0.25)";
    ctx.beginPath(); ctx.arc(X(task.target[0]), Y(task.target[1]), task.target_radius * k, 0, 2 * Math.PI); ctx.fill();
  }
  ctx.strokeStyle = "#90caf9"; ctx.beginPath();
  trail.forEach(([x, y], j) => (j ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y)))); ctx.stroke();
  ctx.fillStyle = "#1565c0"; ctx.beginPath(); ctx.arc(X(task.cursor[0]), Y(task.cursor[1]), 5, 0, 2 * Math.PI); ctx.fill();
  const age = now - task.rx, rate = task.success_rate === null ? "–" : `${(100 * task.success_rate).toFixed(0)}%`;
  setText("task-text", `trial ${task.trial} · ${task.state} · last outcome ${task.outcome ?? "–"} · ` +
          `success ${task.n_success}/${task.n_trials} (${rate})` + (age > 2 ? ` · no task data for ${age.toFixed(0)} s` : ""));
}

function frame(ts) {
  requestAnimationFrame(frame);
  if (ts - lastFrame < 1000 / MAX_FPS - 4) return;  // 4 ms slack: a 60 Hz display gives every other frame
  lastFrame = ts;
  const t0 = performance.now(), now = serverNow();
  trim(now);
  velPlot.setData([T, VX, VY]);
  latPlot.setData([T, LAT, FLAGGED]);
  if (dirty) { updateLatency(); updateStatus(now); dirty = false; }
  updateRun(now);
  drawTask(now);
  setText("fps", `${view.fps} fps`);
  view.frameMs = 0.95 * view.frameMs + 0.05 * (performance.now() - t0);
}

function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.onopen = () => { view.connected = true; setText("conn", "view server: connected"); };
  ws.onmessage = (ev) => handle(JSON.parse(ev.data));
  ws.onclose = () => { view.connected = false; setText("conn", "view server: disconnected"); setTimeout(connect, 1000); };
}

window.addEventListener("resize", () => {
  for (const [p, id] of [[velPlot, "vel-plot"], [latPlot, "lat-plot"]]) p.setSize({width: $(id).clientWidth, height: 210});
});
connect();
requestAnimationFrame(frame);
