// obsflow serve: the index and the live view page. No build step, no dependency but uPlot.
"use strict";

const TIME = (s) => Date.parse(s.slice(0, 23) + "Z") / 1000; // ISO (ns) -> epoch seconds

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
}

async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

async function index() {
  const views = await getJSON("/api/views");
  const vbody = document.querySelector("#views tbody");
  for (const v of views) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    const a = document.createElement("a");
    a.href = "/views/" + encodeURIComponent(v.name);
    a.textContent = v.name;
    td.appendChild(a);
    tr.appendChild(td);
    const d = v.definition;
    cell(tr, v.capture);
    cell(tr, d.kind);
    cell(tr, d.size ? `${d.size / 1e9} s` : "");
    cell(tr, d.aggregates.join(", "));
    vbody.appendChild(tr);
  }
  const captures = await getJSON("/api/captures");
  const cbody = document.querySelector("#captures tbody");
  for (const c of captures) {
    const tr = document.createElement("tr");
    cell(tr, c.name);
    cell(tr, (c.rows ?? 0).toLocaleString(), "num");
    cell(tr, c.first ?? "");
    cell(tr, c.last ?? "");
    cell(tr, String(c.sources ?? ""), "num");
    cbody.appendChild(tr);
  }
}

// The view page: one EventSource carries every series; rows are kept by window key, so an
// event that repeats a row (a provisional row becoming final) replaces it.
const rows = new Map();
const charts = new Map();
let value = "mean";

function keyOf(r) {
  return `${r.source}\u0000${r.channel}\u0000${r.window_start}`;
}

function seriesOf(r) {
  return `${r.source} / ${r.channel}`;
}

function apply(msg) {
  if (msg.reset) rows.clear();
  for (const r of msg.rows) rows.set(keyOf(r), r);
}

function render() {
  const all = [...rows.values()];
  document.getElementById("count").textContent = all.length;
  document.getElementById("provisional").textContent = all.filter((r) => !r.final).length;
  const bySeries = new Map();
  for (const r of all) {
    const s = seriesOf(r);
    if (!bySeries.has(s)) bySeries.set(s, []);
    bySeries.get(s).push(r);
  }
  const box = document.getElementById("series");
  for (const s of [...bySeries.keys()].sort()) {
    if (box.querySelector(`input[value="${CSS.escape(s)}"]`)) continue;
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = s;
    input.checked = box.querySelectorAll("input").length < 4; // the first few, charted
    input.addEventListener("change", render);
    label.appendChild(input);
    label.appendChild(document.createTextNode(" " + s));
    box.appendChild(label);
  }
  const shown = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  for (const [s, chart] of charts) {
    if (!shown.has(s)) {
      chart.destroy();
      charts.get(s)?.root?.remove();
      charts.delete(s);
    }
  }
  for (const s of shown) chart(s, bySeries.get(s) || []);
  latest(all);
}

function chart(name, series) {
  series.sort((a, b) => (a.window_start < b.window_start ? -1 : 1));
  const xs = series.map((r) => TIME(r.window_start));
  const final = series.map((r) => (r.final ? r[value] : null));
  const open = series.map((r) => (r.final ? null : r[value]));
  const data = [xs, final, open];
  if (charts.has(name)) {
    charts.get(name).setData(data);
    return;
  }
  const div = document.createElement("div");
  document.getElementById("charts").appendChild(div);
  const opts = {
    title: name,
    width: Math.min(900, window.innerWidth - 60),
    height: 220,
    series: [
      {},
      { label: `${value} (final)`, stroke: "#1f5fa8", width: 1.5 },
      {
        label: `${value} (open window)`,
        stroke: "#d98200",
        width: 0,
        points: { show: true, size: 7, fill: "#d98200" },
      },
    ],
  };
  charts.set(name, new uPlot(opts, data, div));
}

function latest(all) {
  const table = document.getElementById("latest");
  const newest = all
    .slice()
    .sort((a, b) => (a.window_start < b.window_start ? 1 : -1))
    .slice(0, 20);
  const columns = newest.length ? Object.keys(newest[0]).filter((c) => c !== "view_hash") : [];
  const head = table.querySelector("thead");
  head.replaceChildren();
  const htr = document.createElement("tr");
  for (const c of columns) {
    const th = document.createElement("th");
    th.textContent = c;
    htr.appendChild(th);
  }
  head.appendChild(htr);
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const r of newest) {
    const tr = document.createElement("tr");
    if (!r.final) tr.className = "provisional";
    for (const c of columns) {
      const v = r[c];
      const num = typeof v === "number";
      const text = !num ? String(v) : Number.isInteger(v) ? v.toLocaleString() : v.toPrecision(6);
      cell(tr, text, num ? "num" : "");
    }
    body.appendChild(tr);
  }
}

async function counts(name) {
  try {
    const late = await getJSON(`/api/views/${encodeURIComponent(name)}/late`);
    document.getElementById("late").textContent = late.length;
    const dead = await getJSON("/api/deadletters?limit=100000");
    document.getElementById("dead").textContent = dead.length;
  } catch (e) {
    /* counts are a courtesy: the rows matter */
  }
}

function view() {
  const name = decodeURIComponent(location.pathname.split("/").pop());
  document.getElementById("title").textContent = name;
  document.title = `obsflow · ${name}`;
  getJSON("/api/views").then((views) => {
    const v = views.find((x) => x.name === name);
    if (v && !v.definition.aggregates.includes("mean")) value = v.definition.aggregates[0];
  });
  const status = document.getElementById("status");
  const source = new EventSource(`/api/views/${encodeURIComponent(name)}/events${location.search}`);
  let pending = false;
  const received = []; // [event type, id, rows]: what came, in order (tests read it)
  const onRows = (e) => {
    const msg = JSON.parse(e.data);
    received.push([e.type, e.lastEventId, msg.rows.length]);
    apply(msg);
    if (e.lastEventId) document.getElementById("position").textContent = e.lastEventId;
    if (!pending) {
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        render();
      });
    }
  };
  source.addEventListener("snapshot", onRows);
  source.addEventListener("rows", (e) => {
    onRows(e);
    counts(name);
  });
  source.onopen = () => (status.textContent = "live");
  source.onerror = () => (status.textContent = "reconnecting…");
  counts(name);
  window.obsflowRows = () => [...rows.values()]; // for tests and the console
  window.obsflowReceived = () => received.slice();
}

if (document.body.dataset.page === "index") index();
else view();
