// obsflow serve: the index and the live view page. No build step, no dependency but uPlot.
"use strict";

const TIME = (s) => Date.parse(s.slice(0, 23) + "Z") / 1000; // ISO (ns) -> epoch seconds
const PER_PAGE = 12; // charts per page of the grid
const p2 = (n) => String(n).padStart(2, "0");

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
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

// -- time: one formatter for the axes' ticks and the table, in UTC or the browser's zone ------

const zone = { utc: true };
const LOCAL_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "local";

function fields(t) {
  const d = new Date(Math.round(t * 1000));
  return zone.utc
    ? [d.getUTCFullYear(), d.getUTCMonth() + 1, d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds(), d.getUTCMilliseconds()]
    : [d.getFullYear(), d.getMonth() + 1, d.getDate(), d.getHours(), d.getMinutes(), d.getSeconds(), d.getMilliseconds()];
}

function dateText(t) {
  const [y, mo, d] = fields(t);
  return `${y}-${p2(mo)}-${p2(d)}`;
}

// A tick's text: as precise as the step between ticks (incr, seconds) needs, 24-hour; the
// date under the first tick and under the first tick of each new day.
function tickText(t, incr, prev) {
  const [, , , h, mi, s, ms] = fields(t);
  if (incr >= 86400) return dateText(t);
  let text = incr >= 60 ? `${p2(h)}:${p2(mi)}` : `${p2(h)}:${p2(mi)}:${p2(s)}`;
  if (incr < 1) text += "." + String(ms).padStart(3, "0");
  return prev == null || dateText(prev) !== dateText(t) ? `${text}\n${dateText(t)}` : text;
}

// A table's time: date and second, and the fraction only when there is one (ns timestamps
// no longer wrap); the full ISO text stays in the <time> element's datetime and title.
function timeText(iso) {
  const frac = (iso.match(/\.(\d+)/) || ["", ""])[1].replace(/0+$/, "");
  const [y, mo, d, h, mi, s] = fields(TIME(iso));
  const text = `${y}-${p2(mo)}-${p2(d)} ${p2(h)}:${p2(mi)}:${p2(s)}`;
  return frac ? `${text}.${frac}` : text;
}

const zoneName = () => (zone.utc ? "UTC" : LOCAL_ZONE);

// -- the view page -----------------------------------------------------------------------
// Rows are kept by window key, so an event that repeats a row (a provisional row becoming
// final) replaces it. The events come from the SharedWorker's one stream (feed.js), or from
// the tab's own EventSource where there is no SharedWorker.

const rows = new Map();
const charts = new Map(); // series -> {plot, figure}
const state = { name: "", listing: null, listed: false, value: "mean", page: 0, filter: "" };

const keyOf = (r) => `${r.source}\u0000${r.channel}\u0000${r.window_start}`;
const seriesOf = (r) => `${r.source} / ${r.channel}`;

function apply(msg) {
  if (msg.reset) rows.clear();
  for (const r of msg.rows) rows.set(keyOf(r), r);
}

function aggregates() {
  return state.listing ? state.listing.definition.aggregates : [];
}

// The unit of a channel, if the view listing gives one ({"units": {channel: unit}}: what a
// live EPICS session recorded); none is made up.
function unitOf(channel) {
  const unit = state.listing?.units?.[channel];
  if (!unit || state.value === "count") return "";
  return state.value === "var" ? ` (${unit})²` : ` (${unit})`;
}

// The display limits of a channel ([low, high]), if the listing gives them: a hint for the
// y range of aggregates in the channel's unit (never clipping the data).
function limitsOf(channel) {
  const lim = state.listing?.limits?.[channel];
  return lim && ["count", "std", "var"].indexOf(state.value) < 0 ? lim : null;
}

// -- gaps: time a live session could not see (GET /api/captures/NAME/gaps) -----------------
// A PV's disconnect is its channel's, from the PV's last update received (what the IOC sent
// after it never arrived) until the reconnect, or now while it lasts; time no session ran is
// every channel's.

const gaps = { list: [], fetched: 0 };
const GAP_FILL = "rgba(190, 40, 40, 0.14)";

function gapRange(g) {
  return [TIME(g.last_update || g.since), g.until ? TIME(g.until) : Date.now() / 1000];
}

const gapsOf = (channel) => gaps.list.filter((g) => !g.channel || g.channel === channel);

// The x range: the data's, widened to the gaps that touch it (a gap after the last window
// shows where the data stops).
function xRange(meta, lo, hi) {
  if (lo == null || hi == null) return [lo, hi];
  const end = Math.max(hi, meta.end);
  for (const g of gapsOf(meta.channel)) {
    const [a, b] = gapRange(g);
    if (a <= end && b >= lo) {
      lo = Math.min(lo, a);
      hi = Math.max(hi, b);
    }
  }
  return lo === hi ? [lo - 1, hi + 1] : [lo, hi];
}

// Shade the channel's gaps under the series (at least 2 px: a short gap stays visible).
function shade(u, meta) {
  const { left, top, width, height } = u.bbox;
  const drawn = [];
  u.ctx.save();
  u.ctx.fillStyle = GAP_FILL;
  for (const g of gapsOf(meta.channel)) {
    const [a, b] = gapRange(g);
    if (b < u.scales.x.min || a > u.scales.x.max) continue;
    const x0 = Math.max(left, u.valToPos(a, "x", true));
    const x1 = Math.min(left + width, u.valToPos(b, "x", true));
    u.ctx.fillRect(x0, top, Math.max(2, x1 - x0), height);
    drawn.push([g.kind, a, b]);
  }
  u.ctx.restore();
  meta.drawn = drawn;
}

async function loadGaps() {
  const capture = state.listing?.capture;
  if (!capture || Date.now() - gaps.fetched < 5000) return;
  gaps.fetched = Date.now();
  try {
    const list = await getJSON(`/api/captures/${encodeURIComponent(capture)}/gaps`);
    if (JSON.stringify(list) === JSON.stringify(gaps.list)) return;
    gaps.list = list;
  } catch (e) {
    console.warn(`obsflow: no gaps (${e.message})`);
    return;
  }
  listGaps();
  for (const c of charts.values()) c.plot.setData(c.plot.data); // (ranges and shading anew)
}

// The gaps as a short list, newest last, in the page's time zone.
function listGaps() {
  const box = document.getElementById("gaps");
  const ul = box.querySelector("ul");
  ul.replaceChildren();
  for (const g of gaps.list.slice(-20)) {
    const li = document.createElement("li");
    const [a, b] = gapRange(g);
    const what = g.kind === "disconnected" ? `${g.pv || g.channel} disconnected` : g.kind;
    const from = timeText(g.last_update || g.since);
    const until = g.until ? timeText(g.until) : "now";
    li.textContent = `${what} ${from} – ${until} ${zoneName()}`;
    li.title = `since ${g.since}${g.last_update ? `, last update ${g.last_update}` : ""}`;
    Object.assign(li.dataset, { kind: g.kind, from: a, until: b, channel: g.channel || "" });
    ul.appendChild(li);
  }
  const more = gaps.list.length > 20 ? ` (the last 20 of ${gaps.list.length})` : "";
  document.getElementById("gaps-title").textContent = `gaps${more}`;
  box.hidden = gaps.list.length === 0;
  document.getElementById("gap-note").hidden = gaps.list.length === 0;
}

const hasBand = () =>
  state.value === "mean" && aggregates().includes("min") && aggregates().includes("max");

let scheduled = false;
function schedule() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    render();
  });
}

function render() {
  const all = [...rows.values()];
  document.getElementById("count").textContent = all.length.toLocaleString();
  document.getElementById("provisional").textContent = all.filter((r) => !r.final).length;
  const bySeries = new Map();
  for (const r of all) {
    const s = seriesOf(r);
    if (!bySeries.has(s)) bySeries.set(s, []);
    bySeries.get(s).push(r);
  }
  const needle = state.filter.toLowerCase();
  const names = [...bySeries.keys()].sort().filter((s) => s.toLowerCase().includes(needle));
  const pages = Math.max(1, Math.ceil(names.length / PER_PAGE));
  state.page = Math.min(state.page, pages - 1);
  const shown = names.slice(state.page * PER_PAGE, (state.page + 1) * PER_PAGE);
  pager(names.length, pages, bySeries.size);
  document.getElementById("band-note").hidden = !hasBand();

  for (const [s, c] of charts) {
    if (!shown.includes(s)) {
      c.plot.destroy();
      c.figure.remove();
      charts.delete(s);
    }
  }
  const grid = document.getElementById("charts");
  for (const s of state.listed ? shown : []) {  // (labels and band need the view's definition)
    const c = chart(s, bySeries.get(s));
    grid.appendChild(c.figure); // (moved into page order)
  }
  latest(all);
}

function pager(n, pages, total) {
  const first = n ? state.page * PER_PAGE + 1 : 0;
  const last = Math.min(n, (state.page + 1) * PER_PAGE);
  const of = n === total ? `${n}` : `${n} (of ${total})`;
  document.getElementById("page-info").textContent =
    `series ${first}–${last} of ${of} · page ${state.page + 1} of ${pages}`;
  document.getElementById("prev").disabled = state.page === 0;
  document.getElementById("next").disabled = state.page >= pages - 1;
}

function chartData(series) {
  series.sort((a, b) => (a.window_start < b.window_start ? -1 : 1));
  const v = state.value;
  const data = [
    series.map((r) => TIME(r.window_start)),
    series.map((r) => (r.final ? r[v] : null)),
    series.map((r) => (r.final ? null : r[v])),
  ];
  if (hasBand()) data.push(series.map((r) => r.min), series.map((r) => r.max));
  return data;
}

function chart(name, series) {
  const data = chartData(series);
  const end = Math.max(...series.map((r) => TIME(r.window_end || r.window_start)));
  if (charts.has(name)) {
    charts.get(name).meta.end = end;
    charts.get(name).plot.setData(data);
    return charts.get(name);
  }
  const channel = name.slice(name.indexOf(" / ") + 3);
  const meta = { channel, end, drawn: [] };
  const limits = limitsOf(channel);
  const yLabel = `${state.value} · ${channel}${unitOf(channel)}`;
  const xLabel = `time (${zoneName()})`;
  const figure = document.createElement("figure");
  figure.className = "chart";
  figure.dataset.series = name;
  const caption = document.createElement("figcaption");
  caption.textContent = name;
  figure.appendChild(caption);
  const box = document.createElement("div");
  box.setAttribute("role", "img");
  box.setAttribute("aria-label", `${name}: ${yLabel} against ${xLabel}`);
  figure.appendChild(box);
  document.getElementById("charts").appendChild(figure);

  const v = state.value;
  const seriesOpts = [
    {},
    { label: `${v} (final)`, stroke: "#1f5fa8", width: 1.5 },
    {
      label: `${v} (open window)`,
      stroke: "#d98200",
      width: 0,
      points: { show: true, size: 6, fill: "#d98200" },
    },
  ];
  const bands = [];
  if (hasBand()) {
    const edge = { stroke: "rgba(31, 95, 168, 0.35)", width: 0.5, points: { show: false } };
    seriesOpts.push({ label: "min", ...edge }, { label: "max", ...edge });
    bands.push({ series: [4, 3], fill: "rgba(31, 95, 168, 0.12)" });
  }
  const opts = {
    width: Math.max(240, box.clientWidth || figure.clientWidth || 320),
    height: 190,
    tzDate: zone.utc ? (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC") : undefined,
    scales: {
      x: { time: true, range: (u, lo, hi) => xRange(meta, lo, hi) },
      ...(limits && {
        y: {
          range: (u, lo, hi) =>
            lo == null ? [...limits] : [Math.min(lo, limits[0]), Math.max(hi, limits[1])],
        },
      }),
    },
    series: seriesOpts,
    bands,
    legend: { show: false },
    axes: [
      {
        label: xLabel,
        labelSize: 20,
        size: 44,
        values: (u, splits, axis, space, incr) =>
          splits.map((t, i) => (t == null ? null : tickText(t, incr, i ? splits[i - 1] : null))),
      },
      { label: yLabel, labelSize: 20, size: 56 },
    ],
    hooks: { drawClear: [(u) => shade(u, meta)], draw: [(u) => expose(u, figure, meta)] },
  };
  const c = { plot: new uPlot(opts, data, box), figure, meta };
  charts.set(name, c);
  return c;
}

// What a chart draws, as uPlot drew it (its series, axis labels, tick positions and texts),
// in the figure's data attributes: a test compares them with the API's series and UTC ticks.
function expose(u, figure, meta) {
  const x = u.axes[0];
  const ticks = (x._splits || []).map((t, i) => [t, x._values ? x._values[i] : null]);
  figure.dataset.drawn = JSON.stringify(u.series.slice(1).filter((s) => s.show).map((s) => s.label));
  figure.dataset.bands = JSON.stringify(
    (u.bands || []).map((b) => b.series.map((i) => u.series[i].label)),
  );
  figure.dataset.xLabel = x.label;
  figure.dataset.yLabel = u.axes[1].label;
  figure.dataset.xTicks = JSON.stringify(ticks.filter(([, text]) => text != null));
  figure.dataset.gaps = JSON.stringify(meta.drawn); // [kind, from, until] (epoch s), shaded
  figure.dataset.yRange = JSON.stringify([u.scales.y.min, u.scales.y.max]);
}

function redraw() {
  for (const c of charts.values()) {
    c.plot.destroy();
    c.figure.remove();
  }
  charts.clear();
  render();
}

function latest(all) {
  const table = document.getElementById("latest");
  const newest = all
    .slice()
    .sort((a, b) => (a.window_start < b.window_start ? 1 : -1))
    .slice(0, 20);
  const columns = ["source", "channel", "window_start", ...aggregates(), "final", "run"];
  const head = table.querySelector("thead");
  head.replaceChildren();
  const htr = document.createElement("tr");
  for (const c of columns) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = c === "window_start" ? `window (${zoneName()})` : c;
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
      if (c === "window_start") {
        const time = document.createElement("time");
        time.dateTime = v;
        time.title = v;
        time.textContent = timeText(v);
        cell(tr, "").appendChild(time);
      } else if (c === "final") {
        cell(tr, v ? "final" : "open");
      } else if (c === "run") {
        cell(tr, String(v ?? "").slice(-6), "run").title = v ?? "";
      } else {
        const num = typeof v === "number";
        const text = v == null ? "" : !num ? String(v) : Number.isInteger(v) ? v.toLocaleString() : v.toPrecision(6);
        cell(tr, text, num ? "num" : "");
      }
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

function controls() {
  const select = document.getElementById("aggregate");
  select.replaceChildren();
  for (const a of aggregates()) select.add(new Option(a, a, false, a === state.value));
  select.onchange = () => {
    state.value = select.value;
    redraw();
  };
  for (const input of document.querySelectorAll("input[name=zone]")) {
    input.checked = (input.value === "utc") === zone.utc;
    input.onchange = () => {
      zone.utc = input.value === "utc";
      listGaps();
      redraw();
    };
  }
  document.getElementById("prev").onclick = () => {
    state.page -= 1;
    render();
  };
  document.getElementById("next").onclick = () => {
    state.page += 1;
    render();
  };
  onresize = () => {
    for (const c of charts.values()) {
      c.plot.setSize({ width: Math.max(240, c.figure.clientWidth), height: 190 });
    }
  };
  document.getElementById("filter").oninput = (e) => {
    state.filter = e.target.value;
    state.page = 0;
    render();
  };
}

// The stream: one EventSource for every tab through the SharedWorker, or this tab's own.
function follow(url, onEvent, onStatus) {
  if (typeof SharedWorker === "function") {
    try {
      const worker = new SharedWorker("/static/feed.js", { name: "obsflow-feed-1" });
      worker.port.onmessage = (m) => {
        const msg = m.data;
        if (msg.type === "event") onEvent(msg.kind, msg.id, msg.data);
        else if (msg.type === "status") onStatus(msg.state, msg.tabs);
        else if (msg.type === "error") console.error(`obsflow feed worker: ${msg.message}`);
      };
      worker.port.postMessage({ type: "follow", url });
      addEventListener("pagehide", () => worker.port.postMessage({ type: "leave" }));
      addEventListener("pageshow", (e) => {
        if (e.persisted) worker.port.postMessage({ type: "follow", url }); // back from bfcache
      });
      return "shared-worker";
    } catch (e) {
      /* no worker here (a sandboxed frame, a blocked script): this tab's own stream */
    }
  }
  const source = new EventSource(url);
  const on = (e) => onEvent(e.type, e.lastEventId, e.data);
  source.addEventListener("snapshot", on);
  source.addEventListener("rows", on);
  source.onopen = () => onStatus("live", 1);
  source.onerror = () => onStatus("reconnecting…", 1);
  return "per-tab";
}

function view() {
  const name = decodeURIComponent(location.pathname.split("/").pop());
  state.name = name;
  document.getElementById("title").textContent = name;
  document.title = `obsflow · ${name}`;
  const received = []; // [event type, id, rows]: what came, in order (tests read it)
  getJSON("/api/views")
    .then((views) => {
      state.listing = views.find((x) => x.name === name) || null;
      if (state.listing && !aggregates().includes("mean")) state.value = aggregates()[0];
    })
    .catch((e) => console.warn(`obsflow: no view definition (${e.message}): charting mean`))
    .finally(() => {
      state.listed = true;
      controls();
      redraw();
      loadGaps();
    });
  controls();
  const status = document.getElementById("status");
  const url = `/api/views/${encodeURIComponent(name)}/events${location.search}`;
  const transport = follow(
    url,
    (kind, id, data) => {
      const msg = JSON.parse(data);
      received.push([kind, id, msg.rows.length]);
      apply(msg);
      if (id) document.getElementById("position").textContent = id;
      if (kind === "rows") {
        counts(name);
        loadGaps();
      }
      schedule();
    },
    (text, tabs) => {
      status.textContent = text;
      document.getElementById("tabs").textContent =
        transport === "per-tab"
          ? "this tab's own connection"
          : `one connection for ${tabs} tab${tabs === 1 ? "" : "s"}`;
    },
  );
  document.body.dataset.transport = transport;
  counts(name);
  window.obsflowTransport = transport;
  window.obsflowRows = () => [...rows.values()]; // for tests and the console
  window.obsflowReceived = () => received.slice();
}

if (document.body.dataset.page === "index") index();
else view();
