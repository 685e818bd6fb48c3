// mace report: draws the page from the embedded data (the same JSON `mace report --json` prints).
"use strict";
const D = JSON.parse(document.getElementById("mace-data").textContent);
const COLORS = {
  PENDING: "#9aa5b1", RUNNING: "#3b82f6", COMPLETED: "#86efac", FAILED: "#dc2626", TIMEOUT: "#f97316",
  CANCELLED: "#52606d", MERGED: "#16a34a", ARCHIVED: "#0d9488", PENDING_MERGE: "#f59e0b", KEPT: "#64748b",
  QUARANTINED: "#7c3aed", SKIPPED: "#e5e7eb",
};
const GOOD = new Set(["COMPLETED", "MERGED", "ARCHIVED", "KEPT"]), BAD_RUN = new Set(["FAILED", "TIMEOUT", "CANCELLED"]);
// an element kept or archived after a failed run is shown by how its run ended
const shown = e => BAD_RUN.has(e.run_state) ? e.run_state : e.state;
const needsAttention = e => !GOOD.has(e.state) || BAD_RUN.has(e.run_state) || e.attempts > 1 || e.conflicts;
const $ = id => document.getElementById(id);
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const color = s => COLORS[s] || "#cbd2d9";
const fmt = v => v === null || v === undefined ? "–" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : String(+v.toPrecision(6))) : String(v);
const when = t => t ? new Date(t * 1000).toLocaleString() : "–";
const fileUrl = p => "file://" + encodeURI(p);
const minOf = xs => xs.reduce((a, b) => (b < a ? b : a), Infinity), maxOf = xs => xs.reduce((a, b) => (b > a ? b : a), -Infinity);
const elements = D.elements.rows.map(r => Object.fromEntries(D.elements.columns.map((c, i) => [c, r[i]])));

function header() {
  document.title = `${D.plan}: mace report`;
  $("title").textContent = `${D.plan}: ${D.total} elements`;
  const asked = D.scheduler_queries ? `scheduler asked once${D.scheduler_error ? " (" + D.scheduler_error + ")" : ""}` : "from the state files (no scheduler query; --refresh asks it)";
  $("meta").innerHTML = [D.description && esc(D.description), `backend ${esc(D.backend)}`, `built ${esc(when(D.generated_at))} ${esc(asked)}`,
    `shared database <code>${esc(D.shared_database)}</code>`].filter(Boolean).join(" · ");
}

function counts() {
  const order = D.state_order.filter(s => D.summary[s]).concat(Object.keys(D.summary).filter(s => !D.state_order.includes(s)));
  const chip = (s, n, kind) => `<span class="chip" data-${kind}="${esc(s)}"><span class="dot" style="background:${color(s)}"></span><b>${n}</b> ${esc(s)}</span>`;
  $("counts").innerHTML = `<span class="total">${D.total}</span>` + order.map(s => chip(s, D.summary[s], "state")).join("");
  const failedRuns = {};
  elements.filter(e => BAD_RUN.has(e.run_state) && e.state !== e.run_state).forEach(e => { failedRuns[e.run_state] = (failedRuns[e.run_state] || 0) + 1; });
  if (Object.keys(failedRuns).length) $("counts").insertAdjacentHTML("beforeend", `<span class="muted" style="align-self:center">of which the run ended</span>` +
    Object.entries(failedRuns).map(([s, n]) => chip(s, n, "run")).join(""));
  const stages = Object.entries(D.stages || {});
  if (stages.length) $("counts").insertAdjacentHTML("afterend", `<table class="stages" id="stage-counts"><tbody>` +
    stages.map(([name, c]) => `<tr data-stage="${esc(name)}"><th>stage ${esc(name)}</th><td>` +
      D.state_order.filter(s => c[s]).map(s => chip(s, c[s], "stage-state")).join("") + `</td></tr>`).join("") + `</tbody></table>`);
}

function grid() {
  const n = elements.length;
  $("grid").style.setProperty("--cell", n > 3000 ? "7px" : n > 600 ? "11px" : "18px");
  $("grid").innerHTML = elements.map((e, k) =>
    `<div class="cell" data-k="${k}" style="background:${color(shown(e))}" title="#${e.index} ${esc(e.workflow_id)}: ${esc(e.state)}${BAD_RUN.has(e.run_state) && e.run_state !== e.state ? " after a " + esc(e.run_state) + " run" : ""}${e.message ? " – " + esc(e.message) : ""}"></div>`).join("");
  $("grid").addEventListener("click", ev => { const k = ev.target.dataset.k; if (k !== undefined) detail(elements[+k]); });
}

function contextLinks(e) {
  const c = e.context_dir;
  return `<a href="${fileUrl(c)}">context</a> · <a href="${fileUrl(c + "/logs")}">logs</a> · <a href="${fileUrl(c + "/calculations")}">step outputs</a>`;
}

function detail(e) {
  const run = e.started_at && e.finished_at ? `ran ${fmt(e.finished_at - e.started_at)} s` : "";
  const mem = e.peak_rss_bytes ? `peak ${fmt(e.peak_rss_bytes / 1048576)} MiB` : "";
  $("detail").innerHTML = `<span class="state" style="color:${color(e.state)}">${esc(e.state)}</span> #${e.index} <b>${esc(e.workflow_id)}</b> · attempts ${e.attempts} ` +
    [run, mem, e.host && "on " + esc(e.host), e.job_id && "job " + esc(e.job_id)].filter(Boolean).join(" · ") +
    ` · ${contextLinks(e)}<br>${esc(e.message || "")} <code>${esc(e.context_dir)}</code>` +
    (e.stages ? `<br>stages: ` + Object.entries(e.stages).map(([n, st]) => `${esc(n)} <span style="color:${color(st)}">${esc(st)}</span>`).join(" → ") : "");
}

function why(e) {
  if (e.conflicts) return `${e.conflicts} merge conflict(s): the shared database kept its version. ${e.message || ""}`;
  const decided = (e.retries || []).length ? e.retries[e.retries.length - 1] : "";  // the retry policy's last word
  if (decided && !(GOOD.has(e.state) && !BAD_RUN.has(e.run_state))) return decided + (e.message ? ` – ${e.message}` : "");
  if (e.attempts > 1 && GOOD.has(e.state) && !BAD_RUN.has(e.run_state)) return `retried: ${e.attempts} attempts` + (decided ? ` (${decided})` : "");
  if (e.state === "PENDING") return e.message || (e.job_id ? `queued as job ${e.job_id}` : "not started yet");
  if (e.state === "RUNNING" && !e.message) return `running${e.host ? " on " + e.host : ""} since ${when(e.started_at)}`;
  return e.message || `${e.state}, no message recorded` + (e.run_state && e.run_state !== e.state ? ` (last run ${e.run_state})` : "");
}

function attention() {
  const bad = elements.filter(needsAttention);
  if (!bad.length) { $("attention").innerHTML = `<span class="muted">nothing: every element finished and its results are home</span>`; return; }
  const listed = bad.slice(0, 300);
  $("attention").innerHTML = `<div class="scroll"><table><thead><tr><th>#</th><th>workflow id</th><th>state</th><th>attempts</th><th>why</th><th>files</th></tr></thead><tbody>` +
    listed.map(e => `<tr><td class="num">${e.index}</td><td>${esc(e.workflow_id)}</td><td><span class="dot" style="background:${color(shown(e))}"></span> ${esc(e.state)}${e.state !== shown(e) ? " (run " + esc(e.run_state) + ")" : ""}</td>` +
      `<td class="num">${e.attempts}</td><td style="white-space:normal">${esc(why(e))}</td><td>${contextLinks(e)}</td></tr>`).join("") +
    `</tbody></table></div>` + (bad.length > listed.length ? `<p class="muted">… and ${bad.length - listed.length} more (mace status ${esc(D.plan)})</p>` : "");
}

function timeline() {
  const cv = $("timeline"), W = cv.clientWidth || 1000, H = 220, dpr = window.devicePixelRatio || 1;
  cv.width = W * dpr; cv.height = H * dpr;
  const g = cv.getContext("2d"); g.scale(dpr, dpr);
  const ts = elements.flatMap(e => [e.queued_at, e.started_at, e.finished_at]).filter(Boolean);
  if (!ts.length) { g.fillStyle = "#616e7c"; g.fillText("no element has started yet", 10, 20); return; }
  const t0 = minOf(ts), t1 = Math.max(maxOf(ts), t0 + 1e-3), n = elements.length;
  const x = t => 40 + (t - t0) / (t1 - t0) * (W - 50), rowH = (H - 24) / n;
  g.strokeStyle = "#e4e7eb"; g.beginPath(); g.moveTo(40, H - 20); g.lineTo(W - 10, H - 20); g.stroke();
  elements.forEach((e, k) => {
    const y = 2 + k * rowH, h = Math.max(rowH - (rowH > 3 ? 1 : 0), 0.6);
    if (e.queued_at) { g.fillStyle = "#d9e2ec"; g.fillRect(x(e.queued_at), y, x(e.started_at || e.finished_at || t1) - x(e.queued_at), h); }
    if (e.started_at) { g.fillStyle = color(shown(e)); g.fillRect(x(e.started_at), y, Math.max(x(e.finished_at || t1) - x(e.started_at), 1), h); }
  });
  g.fillStyle = "#616e7c"; g.font = "11px system-ui,sans-serif";
  for (let i = 0; i <= 5; i++) { const t = t0 + (t1 - t0) * i / 5; g.fillText(fmt(+(t - t0).toPrecision(3)) + " s", x(t) - (i === 5 ? 30 : 0), H - 6); }
  g.fillText("#0", 4, 12); g.fillText("#" + (n - 1), 4, H - 24);
  $("timeline-axis").textContent = `from ${when(t0)} to ${when(t1)}`;
}

function width(el, min) { return Math.max(min, Math.min(el.clientWidth - 10 || 600, 1400)); }

function histogram(target, values, unit, colour) {
  const el = $(target);
  if (!values.length) { el.innerHTML = `<span class="muted">no element has recorded it yet</span>`; return; }
  const lo = minOf(values), hi = maxOf(values), nb = Math.min(30, Math.max(5, Math.ceil(Math.sqrt(values.length))));
  const step = (hi - lo) / nb || 1, centers = [], counts = new Array(nb).fill(0);
  for (let i = 0; i < nb; i++) centers.push(lo + step * (i + 0.5));
  values.forEach(v => counts[Math.min(nb - 1, Math.floor((v - lo) / step))]++);
  new uPlot({
    width: width(el, 320), height: 200, legend: { show: false }, cursor: { drag: { x: false, y: false } },
    scales: { x: { time: false, range: [lo, lo + step * nb] }, y: { range: (u, a, b) => [0, Math.max(1, b) * 1.08] } },
    axes: [{ label: unit, size: 40 }, { label: "elements", size: 50 }],
    series: [{}, { label: "elements", fill: colour + "cc", stroke: colour, paths: uPlot.paths.bars({ size: [0.92, 100] }) }],
  }, [centers, counts], el);
  el.insertAdjacentHTML("beforeend", `<div class="muted" style="font-size:12px">${values.length} elements · min ${fmt(lo)} · median ${fmt(values.slice().sort((a, b) => a - b)[values.length >> 1])} · max ${fmt(hi)} ${esc(unit)}</div>`);
}

function scatter(el, title, xLabel, yLabel, points, curve, colour) {
  // uPlot wants one ascending x array: points and curve share it, each null where the other has a value
  const all = points.map(p => [p[0], p[1], null]).concat((curve || []).map(p => [p[0], null, p[1]])).sort((a, b) => a[0] - b[0]);
  const data = [all.map(p => p[0]), all.map(p => p[1])];
  const series = [{ label: xLabel }, { label: yLabel, stroke: colour, paths: () => null, points: { show: true, size: 8, fill: colour, stroke: colour } }];
  if (curve) { data.push(all.map(p => p[2])); series.push({ label: "fit", stroke: "#102a43", width: 1.5, spanGaps: true, points: { show: false } }); }
  const box = document.createElement("div"); box.className = "plot"; el.appendChild(box);
  new uPlot({ title, width: curve ? Math.min(width(el, 420), 760) : 420, height: curve ? 320 : 260, scales: { x: { time: false } },
    axes: [{ label: xLabel, size: 44 }, { label: yLabel, size: 70 }], series }, data, box);
}

function analysis() {
  const a = D.analysis;
  if (!a) return;
  $("analysis-section").hidden = false;
  $("analysis-title").textContent = `Analysis: ${a.function}`;
  if (a.error) { $("analysis-summary").innerHTML = `<span class="err">${esc(a.error)}</span>`; return; }
  $("analysis-summary").innerHTML = Object.entries(a.summary).map(([k, v]) =>
    `<div class="big"><div class="k">${esc(k)}</div><div class="v">${esc(fmt(v))} <span class="muted" style="font-size:14px">${esc((a.units || {})[k] || "")}</span></div></div>`).join("");
  a.plots.forEach(p => scatter($("analysis-plots"), p.title || "", p.x_label || "x", p.y_label || "y", p.points || [], p.curve || null, "#2563eb"));
}

const R = D.results;
let view = R.rows.slice(), sortCol = -1, sortDir = 1;
function resultsTable() {
  const num = R.columns.map((c, i) => R.rows.some(r => typeof r[i] === "number"));
  $("results").tHead.innerHTML = "<tr>" + R.columns.map((c, i) =>
    `<th data-col="${i}" class="${num[i] ? "num" : ""}">${esc(c)}${R.units[c] ? ` <span class="unit">${esc(R.units[c])}</span>` : ""}</th>`).join("") + "</tr>";
  $("results").tHead.addEventListener("click", ev => { const th = ev.target.closest("th"); if (th) sortBy(+th.dataset.col); });
  $("filter").addEventListener("input", () => { filterRows(); drawRows(); });
  drawRows();
  function drawRows() {
    const wid = R.columns.indexOf("workflow_id"), byId = Object.fromEntries(elements.map(e => [e.workflow_id, e]));
    $("results").tBodies[0].innerHTML = view.map(r => "<tr>" + r.map((v, i) =>
      i === wid && byId[v] ? `<td><a href="${fileUrl(byId[v].context_dir)}" title="${esc(byId[v].context_dir)}">${esc(v)}</a></td>` : `<td class="${num[i] ? "num" : ""}">${esc(fmt(v))}</td>`).join("") + "</tr>").join("");
    $("results-note").textContent = `${view.length} of ${R.rows.length} materials from the shared database · click a header to sort`;
  }
  resultsTable.redraw = drawRows;
}
function filterRows() {
  const q = $("filter").value.trim().toLowerCase();
  view = q ? R.rows.filter(r => r.some(v => fmt(v).toLowerCase().includes(q))) : R.rows.slice();
  if (sortCol >= 0) sortView();
}
function sortView() {
  const i = sortCol;
  view.sort((a, b) => {
    const x = a[i], y = b[i];
    if (x === null || x === undefined) return 1; if (y === null || y === undefined) return -1;
    return (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true })) * sortDir;
  });
}
function sortBy(i) {
  sortDir = sortCol === i ? -sortDir : 1; sortCol = i; sortView();
  document.querySelectorAll("#results th").forEach(th => th.removeAttribute("aria-sort"));
  document.querySelector(`#results th[data-col="${i}"]`).setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
  resultsTable.redraw();
}

function propertyPlots() {
  const el = $("plots"), numeric = R.properties.filter(p => R.rows.some(r => typeof r[R.columns.indexOf(p)] === "number"));
  if (!D.parameters.length || !numeric.length) { el.innerHTML = `<span class="muted">${D.parameters.length ? "no numeric property merged yet" : "the plan has no sweep parameter"}</span>`; return; }
  const palette = ["#2563eb", "#16a34a", "#dc2626", "#7c3aed", "#0d9488", "#f59e0b"];
  let k = 0;
  D.parameters.forEach(p => numeric.forEach(q => {
    const px = R.columns.indexOf(p), qy = R.columns.indexOf(q);
    const pts = R.rows.filter(r => typeof r[px] === "number" && typeof r[qy] === "number").map(r => [r[px], r[qy]]);
    const lx = R.labels[p] || p, ly = R.labels[q] || q;
    if (pts.length && !pts.every(([a, b]) => a === b)) scatter(el, `${ly.split(" (")[0]} against ${lx.split(" (")[0]}`, lx, ly, pts, null, palette[k++ % palette.length]);
  }));
}

function selftest() {
  // the browser tests open the page with #selftest: count what is drawn, sort the first numeric
  // property column both ways, click a cell, filter, all through real events; the answer goes in the DOM
  const out = { cells: document.querySelectorAll("#grid .cell").length, rows: $("results").tBodies[0].rows.length };
  const col = R.columns.indexOf(R.properties.find(p => R.rows.some(r => typeof r[R.columns.indexOf(p)] === "number")));
  const read = () => Array.from($("results").tBodies[0].rows, tr => parseFloat(tr.cells[col].textContent));
  if (col >= 0) {
    const th = document.querySelector(`#results th[data-col="${col}"]`);
    th.click(); const up = read(); th.click(); const down = read();
    out.sorted_column = R.columns[col];
    out.ascending = up.every((v, i) => i === 0 || up[i - 1] <= v);
    out.descending = down.every((v, i) => i === 0 || down[i - 1] >= v);
    out.first_after_ascending = up[0];
    th.click();
  }
  const cell = document.querySelector("#grid .cell");
  if (cell) { cell.click(); out.detail = $("detail").textContent; }  // a click shows the element and its context
  if (R.rows.length) {  // the filter keeps the rows mentioning the first material only
    $("filter").value = String(R.rows[0][0]); $("filter").dispatchEvent(new Event("input"));
    out.filtered = Array.from($("results").tBodies[0].rows, tr => tr.cells[0].textContent);
    $("filter").value = ""; $("filter").dispatchEvent(new Event("input"));
  }
  out.plots = document.querySelectorAll(".uplot").length;
  out.problems = window.maceProblems;
  $("selftest").textContent = JSON.stringify(out);
  $("selftest").hidden = false;
}

header(); counts(); grid(); attention(); analysis(); timeline();
// the scheduler's accounting (`mace report --refresh`: sacct Elapsed / MaxRSS) where it has a figure,
// else what the runner recorded in the state file
const runtime = e => e.sacct_elapsed_s != null ? e.sacct_elapsed_s : (e.started_at && e.finished_at ? e.finished_at - e.started_at : null);
const memory = e => e.sacct_max_rss_bytes || e.peak_rss_bytes || null;
for (const [id, some] of [["hist-runtime", elements.some(e => e.sacct_elapsed_s != null)], ["hist-memory", elements.some(e => e.sacct_max_rss_bytes)]])
  $(id).previousElementSibling.querySelector("small").textContent = some ? "per element (sacct, else state files)" : "per element (state files)";
histogram("hist-runtime", elements.map(runtime).filter(v => v != null), "s", "#2563eb");
histogram("hist-memory", elements.map(memory).filter(v => v != null).map(v => v / 1048576), "MiB", "#7c3aed");
resultsTable(); propertyPlots();
if (location.hash === "#selftest") selftest();
