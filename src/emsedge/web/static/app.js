// emsedge status page: one server-sent event stream of JSON snapshots, rendered into four views.
// Read-only: the page only GETs what the gateway serves. No framework, no build step.
"use strict";

const E58 = { 1: "productive", 2: "standby", 3: "engineering", 4: "scheduled_down", 5: "unscheduled_down", 6: "non_scheduled" };
let snapshot = null;
let source = null;
let streamKey = null;
let signalFilter = "";
let boardSearch = "";

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function route() {
  const h = location.hash.replace(/^#\/?/, "");
  const [tab, ...rest] = h.split("/");
  if (tab === "machine") return { tab: "line", machine: decodeURIComponent(rest.join("/")) };
  if (tab === "boards" || tab === "delivery") return { tab };
  return { tab: "line" };
}
function age(seconds) {
  if (seconds == null || isNaN(seconds)) return "–";
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return seconds + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
  const h = Math.floor(seconds / 3600);
  return h + " h " + Math.floor((seconds % 3600) / 60) + " min";
}
function isoAge(iso) { return iso ? (Date.now() - Date.parse(iso)) / 1000 : null; }
function clock(iso) {
  if (!iso) return "–";
  const d = typeof iso === "number" ? new Date(iso * 1000) : new Date(iso);
  return d.toLocaleTimeString([], { hour12: false });
}
function bytes(n) {
  if (n == null) return "–";
  const u = ["B", "KiB", "MiB", "GiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(Math.abs(v) >= 100 ? 1 : 2);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

// ------------------------------------------------------------------------------------------------
// Stream

function connect() {
  const r = route();
  const params = new URLSearchParams();
  if (r.machine) params.set("machine", r.machine);
  if (r.tab === "boards" && boardSearch) params.set("q", boardSearch);
  const key = params.toString();
  if (source && key === streamKey) return;
  if (source) source.close();
  streamKey = key;
  source = new EventSource("events" + (key ? "?" + key : ""));
  source.onmessage = ev => { snapshot = JSON.parse(ev.data); setLive(true); render(); };
  source.onerror = () => setLive(false);
}
function setLive(on) {
  const el = document.getElementById("live");
  el.className = "live" + (on ? "" : " off");
  el.textContent = on ? "● live" : "reconnecting…";
}

// ------------------------------------------------------------------------------------------------
// Views

function e58Block(e58) {
  if (!e58) return `<div class="e58 none" data-e58="none"><span class="state">E58 state not reported</span></div>`;
  const cat = E58[Math.floor((e58.code || 0) / 1000)] || "non_scheduled";
  const since = e58.for_s != null ? e58.for_s + (Date.now() / 1000 - snapshot.now) : isoAge(e58.since);
  return `<div class="e58 ${cat}" data-e58="${esc(e58.name)}" title="SEMI E58 state ${esc(e58.code)} since ${esc(clock(e58.since))}">
    <span class="state">${esc(String(e58.name).replace(/_/g, " "))} <small>(${esc(e58.code)})</small></span>
    <span>for ${age(since)}</span></div>`;
}
function alarmsBlock(alarms) {
  if (!alarms.length) return `<div class="noalarm">No active alarms</div>`;
  return `<ul class="alarms">${alarms.map(a => `<li data-alarm="${esc(a.code)}">⚠ ${esc(a.code)} ${esc(a.text)} <small>since ${esc(clock(a.since))}</small></li>`).join("")}</ul>`;
}
function connBadge(m) {
  return `<span class="conn ${esc(m.state)}" data-state="${esc(m.state)}">${esc(m.state)}</span>
    <span class="muted" title="since ${esc(clock(m.state_since))}">since ${esc(clock(m.state_since))} (${age(Date.now() / 1000 - m.state_since)})</span>`;
}
function card(m) {
  return `<div class="card" data-machine="${esc(m.id)}" onclick="location.hash='#/machine/${encodeURIComponent(m.id)}'">
    <div class="head"><span class="name">${esc(m.id)}</span><span class="kind">${esc(m.type)} · ${esc(m.adapter)}</span></div>
    <div>${connBadge(m)}</div>
    ${m.last_error && m.state !== "connected" ? `<div class="err">Last error: ${esc(m.last_error)}</div>` : ""}
    ${e58Block(m.e58)}
    ${alarmsBlock(m.alarms)}
    <div class="stats">
      <div>Polls<b>${m.polls}</b></div>
      <div>Poll errors<b class="${m.poll_errors ? "fail" : ""}">${m.poll_errors}</b></div>
      <div>Values read<b>${m.values}</b></div>
      <div>Last good read<b>${m.last_good_read ? age(isoAge(m.last_good_read)) + " ago" : "never"}</b></div>
    </div>
  </div>`;
}
function stripHtml(s) {
  const d = s.delivery;
  const parts = d.outputs.map(o => `<span data-strip-output="${esc(o.name)}">${esc(o.name.toUpperCase())}: <b class="${o.connected ? "" : "bad"}">${o.connected ? "connected" : "disconnected"}</b>, backlog <b>${o.backlog ?? "–"}</b></span>`);
  parts.push(`<span>Buffer ${d.writable ? "writable" : '<b class="bad">NOT WRITABLE</b>'}, ${bytes(d.disk_bytes ?? d.bytes)} on disk</span>`);
  if (d.dropped || d.dead_letters) parts.push(`<span class="bad">${d.dropped} dropped, ${d.dead_letters} dead-lettered</span>`);
  const alarms = s.machines.reduce((n, m) => n + m.alarms.length, 0);
  parts.push(`<span>${s.machines.length} machines, ${s.machines.filter(m => m.state === "connected").length} connected${alarms ? `, <b class="bad">${alarms} active alarm(s)</b>` : ""}</span>`);
  return parts.join("");
}
function lineView(s) {
  return `<h2>Line overview <span class="muted" style="font-size:13px">— click a machine for its signals and events</span></h2>
    <div class="cards">${s.machines.map(card).join("") || '<p class="muted">No machines configured.</p>'}</div>`;
}
function spark(values) {
  if (!values || values.length < 2) return "";
  const min = Math.min(...values), max = Math.max(...values), span = max - min;
  const y = v => span ? 22 - (v - min) / span * 20 : 12;  // a steady value is a line through the middle
  const pts = values.map((v, i) => `${(i / (values.length - 1) * 118 + 1).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  return `<svg class="spark" viewBox="0 0 120 24" preserveAspectRatio="none"><title>min ${fmt(min)} · max ${fmt(max)}</title><polyline points="${pts}"/></svg>`;
}
function machineView(s, id) {
  const m = s.machines.find(x => x.id === id);
  const d = s.machine && s.machine.id === id ? s.machine : null;
  if (!m) return `<a class="back" href="#/">← Line overview</a><p>No machine called ${esc(id)}.</p>`;
  const f = signalFilter.toLowerCase();
  const rows = d ? d.signals.filter(x => !f || x.name.toLowerCase().includes(f)).map(x => `
    <tr class="q-${esc(x.quality)}" data-signal="${esc(x.name)}">
      <td>${esc(x.name)}</td><td class="num value">${esc(fmt(x.value))}</td><td>${esc(x.unit || "")}</td>
      <td><span class="q ${esc(x.quality)}">${esc(x.quality)}</span>${x.status ? ` <small>${esc(x.status)}</small>` : ""}</td>
      <td class="muted">${esc(clock(x.ts))}</td><td>${spark(x.spark)}</td></tr>`).join("") : "";
  const events = d ? d.events.map(e => `<li><span class="t">${esc(clock(e.ts))}</span><b>${esc(e.type.replace(/_/g, " "))}</b> ${esc(e.detail)}</li>`).join("") : "";
  return `<a class="back" href="#/">← Line overview</a>
    <div class="summary" data-machine-detail="${esc(m.id)}"><div><div class="name" style="font-size:20px;font-weight:600">${esc(m.id)}</div>
      <div class="muted">${esc(m.type)} · ${esc(m.adapter)}</div></div><div>${connBadge(m)}</div>${e58Block(m.e58)}${alarmsBlock(m.alarms)}
      ${m.last_error && m.state !== "connected" ? `<div class="err">Last error: ${esc(m.last_error)}</div>` : ""}</div>
    <div class="grid2"><div>
      <div class="toolbar"><h3 style="margin:0">Signals (${d ? d.signals.length : 0}${d && d.not_shown ? ` of ${d.signals.length + d.not_shown}` : ""})</h3>
        <input type="search" id="signal-filter" placeholder="Filter signals…" value="${esc(signalFilter)}"></div>
      <table><thead><tr><th>Signal</th><th class="num">Value</th><th>Unit</th><th>Quality</th><th>Source time</th><th>Last minutes</th></tr></thead>
      <tbody>${rows || '<tr><td colspan="6" class="muted">No values yet.</td></tr>'}</tbody></table></div>
      <div><h3>Recent events</h3><ul class="events">${events || '<li class="muted">None yet.</li>'}</ul></div></div>`;
}
function boardRow(b) {
  const p = b.placement || {};
  const slots = [...new Set([...Object.keys(p.reels || {}), ...Object.keys(p.parts || {})])];
  const feeders = slots.map(k => `<span class="tag" title="${esc(k)}">${esc(k.replace(/_/g, " "))}: ${p.parts && p.parts[k] ? `<b>${esc(p.parts[k])}</b> ` : ""}${p.reels && p.reels[k] ? `reel ${esc(p.reels[k])}` : ""}</span>`).join("");
  const placement = p.station ? `${esc(p.station)} ${esc(clock(p.ts))}${p.placed_components != null ? ` · ${esc(p.placed_components)} parts placed` : ""}<br>${feeders}` : '<span class="muted">–</span>';
  const r = b.reflow || {};
  const reflow = r.station ? `${esc(r.station)} ${esc(clock(r.ts))}<br>${r.peak != null ? `peak <b>${esc(r.peak)} °C</b> (${esc(r.peak_zone)})` : "profile seen"}${Object.keys(r).filter(k => k.includes("liquidus")).map(k => `<br>${esc(k.replace(/_/g, " "))}: ${esc(fmt(r[k]))}`).join("")}` : '<span class="muted">–</span>';
  const results = list => list.length ? list.map(i => `<span class="${/^pass/i.test(i.result) ? "pass" : "fail"}">${esc(String(i.result).toUpperCase())}</span> ${esc(i.station)}
    ${i.defects.map(d => `<span class="tag defect">${esc(d)}</span>`).join("")}`).join("<br>") : '<span class="muted">–</span>';
  return `<tr data-serial="${esc(b.serial)}"><td><b>${esc(b.serial)}</b><br><small class="muted">${esc(clock(b.first_seen))} – ${esc(clock(b.last_seen))}</small></td>
    <td class="placement">${placement}</td><td class="reflow">${reflow}</td><td class="inspection">${results(b.inspections)}</td><td class="test">${results(b.tests)}</td></tr>`;
}
function boardsView(s) {
  return `<h2>Boards <span class="muted" style="font-size:13px">— newest first, joined by serial number across the line</span></h2>
    <div class="toolbar"><input type="search" id="board-search" placeholder="Search a serial number…" value="${esc(boardSearch)}">
    <span class="muted">${s.boards.length} shown</span></div>
    <table><thead><tr><th>Serial</th><th>Placement (reels, parts)</th><th>Reflow profile</th><th>Inspection</th><th>Test</th></tr></thead>
    <tbody>${s.boards.map(boardRow).join("") || '<tr><td colspan="5" class="muted">No boards seen yet.</td></tr>'}</tbody></table>`;
}
function deliveryView(s) {
  const d = s.delivery;
  const rows = d.outputs.map(o => `<tr data-output="${esc(o.name)}"><td><b>${esc(o.name.toUpperCase())}</b><br><small class="muted">${esc(o.url || "")}</small></td>
    <td><span class="conn ${o.connected ? "connected" : "failed"}">${o.connected ? "connected" : "disconnected"}</span></td>
    <td class="num backlog">${o.backlog ?? "–"}</td><td class="num">${age(o.oldest_age_s)}</td>
    <td class="num">${o.drain_eta_s == null ? (o.connected ? "–" : "after reconnect") : age(o.drain_eta_s)}</td>
    <td class="num">${fmt(o.drain_rate)} msg/s</td><td class="num">${o.replay_rate ? fmt(o.replay_rate) + " msg/s" : "unlimited"}</td></tr>`).join("");
  return `<h2>Delivery to MES</h2>
    <table><thead><tr><th>Output</th><th>Connection</th><th class="num">Backlog</th><th class="num">Oldest waiting</th><th class="num">Drain ETA</th><th class="num">Delivering</th><th class="num">Replay limit</th></tr></thead><tbody>${rows}</tbody></table>
    <h3>Buffer (on disk)</h3>
    <dl class="kv"><dt>Writable</dt><dd>${d.writable ? "yes" : '<span class="fail">NO</span>'}</dd>
      <dt>Records waiting</dt><dd>${d.records ?? "–"}</dd><dt>Disk use</dt><dd>${bytes(d.disk_bytes)} (records ${bytes(d.bytes)})</dd>
      <dt>Dropped (evicted)</dt><dd class="${d.dropped ? "fail" : ""}" data-dropped>${d.dropped}</dd>
      <dt>Dead-lettered</dt><dd class="${d.dead_letters ? "fail" : ""}">${d.dead_letters}</dd>
      <dt>Published since start</dt><dd>${d.published.published}</dd>
      ${d.last_error ? `<dt>Last error</dt><dd class="fail">${esc(d.last_error)}</dd>` : ""}</dl>
    <h3>Gateway</h3>
    <dl class="kv"><dt>Running since</dt><dd>${esc(new Date(s.started_at).toLocaleString())} (${age(s.uptime_s)})</dd>
      ${s.loop_lag ? `<dt>Event loop delay</dt><dd>now ${(s.loop_lag.latest_s * 1000).toFixed(0)} ms, longest ${(s.loop_lag.max_s * 1000).toFixed(0)} ms</dd>` : ""}</dl>`;
}

function render() {
  if (!snapshot) return;
  const s = snapshot, r = route();
  document.getElementById("gateway").textContent = `${s.gateway} · v${s.version}`;
  const st = document.getElementById("status");
  st.className = "pill " + s.status; st.textContent = s.status;
  document.getElementById("strip").innerHTML = stripHtml(s);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.tab === r.tab);
  const active = document.activeElement && document.activeElement.id;
  const caret = active && document.activeElement.selectionStart;
  let html;
  if (r.machine) html = machineView(s, r.machine);
  else if (r.tab === "boards") html = boardsView(s);
  else if (r.tab === "delivery") html = deliveryView(s);
  else html = lineView(s);
  document.getElementById("view").innerHTML = html;
  document.title = `emsedge · ${s.gateway} · ${s.status}`;
  if (active) {
    const el = document.getElementById(active);
    if (el) { el.focus(); if (caret != null) el.setSelectionRange(caret, caret); }
  }
}

document.addEventListener("input", ev => {
  if (ev.target.id === "signal-filter") { signalFilter = ev.target.value; render(); }
  if (ev.target.id === "board-search") { boardSearch = ev.target.value.trim(); connect(); }
});
window.addEventListener("hashchange", () => { connect(); render(); });
connect();
