// The run page: polls /api/runs/NAME once a second and redraws in place (no reload).
"use strict";
const POLL_MS = 1000;
const runName = (() => {
  const m = location.pathname.match(/^\/runs\/([^/]+)/);
  return m ? decodeURIComponent(m[1]) : "latest";
})();
const charts = {};
const $ = (id) => document.getElementById(id);

function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${r}s` : `${r}s`;
}
function ago(now, t) { return t ? duration(now - t) + " ago" : "never"; }
function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  return td;
}

// One uPlot per chart; rebuilt when its series change, else given the new data.
function draw(id, x, series, yLabel) {
  const el = $(id);
  const names = series.map((s) => s.label).join("|");
  const data = [x, ...series.map((s) => s.values)];
  el.dataset.points = String(x.length);
  const old = charts[id];
  if (old && old.names === names) { old.plot.setData(data); return; }
  if (old) old.plot.destroy();
  const colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"];
  const opts = {
    width: 420, height: 220,
    scales: { x: { time: false } },
    axes: [{ label: "round" }, { label: yLabel }],
    series: [{ label: "round" }, ...series.map((s, i) => ({
      label: s.label, stroke: colors[i % colors.length], width: i ? 1 : 2,
      points: { show: true },
    }))],
  };
  charts[id] = { names, plot: new uPlot(opts, data, el) };
}

function showRun(run, now) {
  $("run-name").textContent = run.name;
  document.title = `FedUNI-KD ${run.name}`;
  $("state").textContent = run.state + (run.error ? `: ${run.error}` : "");
  $("state").className = "badge " + run.state;
  $("files-link").href = `/runs/${encodeURIComponent(run.name)}/files/`;
  const member = run.phase === "teacher" && run.member !== null
    ? ` (member ${run.member + 1} of ${run.members})` : "";
  $("phase").textContent = (run.phase || "–") + member;
  $("round").textContent = run.total ? `${run.round} / ${run.total}` : "–";
  $("round").dataset.round = String(run.round);
  $("round").dataset.total = String(run.total);
  $("round").dataset.phase = run.phase;
  $("exchanges").textContent = run.exchanges;
  $("elapsed").textContent = duration(run.elapsed);
  $("eta").textContent = run.state === "running" ? duration(run.eta) : "–";
  const mf1 = run.evals.mf1;
  $("mf1").textContent = mf1.length ? mf1[mf1.length - 1].toFixed(2) : "–";
  const perClient = Object.keys(run.evals.per_client).sort().map((c) => ({
    label: `edge client ${c}`, values: run.evals.per_client[c] }));
  draw("mf1-chart", run.evals.round, [{ label: "all edges", values: mf1 }, ...perClient], "MF1 %");
  draw("acc-chart", run.evals.round, [{ label: "accuracy", values: run.evals.acc }], "acc %");
  const mb = (xs) => xs.map((b) => b / 1e6);
  draw("bytes-chart", run.rounds.round, [
    { label: "up", values: mb(run.rounds.bytes_up) },
    { label: "down", values: mb(run.rounds.bytes_down) },
  ], "MB");
  $("rejected-total").textContent = run.rejected_total;
  $("rejected").replaceChildren(...run.rejected.map((r) => {
    const li = document.createElement("li");
    li.textContent = `round ${r.round}: ${r.reason}`;
    return li;
  }));
  $("epsilon").tBodies[0].replaceChildren(...Object.keys(run.epsilon).sort().map((c) => {
    const tr = document.createElement("tr");
    tr.append(cell(`client ${c}`), cell(run.epsilon[c].toFixed(3)));
    return tr;
  }));
}

function showEdges(edges, why, now) {
  $("edges-error").hidden = !why;
  $("edges-error").textContent = why ? `edges unknown: ${why}` : "";
  $("edges").tBodies[0].replaceChildren(...edges.map((e) => {
    const tr = document.createElement("tr");
    const state = e.connected ? "connected" : "gone";
    tr.className = state;
    tr.dataset.node = e.node_id;
    tr.dataset.state = state;
    tr.append(cell(e.name || "–"), cell(e.node_id), cell(state, "state"),
      cell(ago(now, e.last_contact)), cell(e.client), cell(e.windows),
      cell(e.latency === null || e.latency === undefined ? null : e.latency.toFixed(2) + " s"),
      cell(e.version === null || e.version === undefined ? null : "v" + e.version));
    return tr;
  }));
}

function showRuns(runs) {
  $("runs").tBodies[0].replaceChildren(...runs.map((r) => {
    const tr = document.createElement("tr");
    const name = document.createElement("td");
    const a = document.createElement("a");
    a.href = `/runs/${encodeURIComponent(r.name)}`;
    a.textContent = r.name;
    name.append(a);
    const files = document.createElement("td");
    const f = document.createElement("a");
    f.href = `/runs/${encodeURIComponent(r.name)}/files/`;
    f.textContent = "files";
    files.append(f);
    tr.dataset.state = r.state;
    tr.append(name, cell(r.state), cell(r.phase), cell(r.total ? `${r.round} / ${r.total}` : null),
      cell(r.mf1 === null || r.mf1 === undefined ? null : r.mf1.toFixed(2)), files);
    return tr;
  }));
}

async function poll() {
  try {
    const res = await fetch(`/api/runs/${encodeURIComponent(runName)}`, { cache: "no-store" });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error || res.statusText);
    $("error").hidden = true;
    if (body.run) showRun(body.run, body.now);
    showEdges(body.edges, body.edges_error, body.now);
    showRuns(body.runs);
    document.body.dataset.updated = String(body.now);
  } catch (err) {
    $("error").hidden = false;
    $("error").textContent = `cannot read the run: ${err.message}`;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}
poll();
