// The jobs page: every job's stage and state, and one job's triggers, versions and conditions.
"use strict";
let shownJob = new URLSearchParams(location.search).get("job");

function renderJobs(items) {
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren();
  for (const job of items) {
    const ref = `${job.namespace}/${job.name}`;
    const row = document.createElement("tr");
    row.dataset.job = ref;
    const name = text("td", "");
    const link = text("a", ref, { href: `/jobs?job=${encodeURIComponent(ref)}` });
    name.append(link);
    row.append(name);
    for (const key of ["stage", "state", "round", "new_samples", "deployed_version",
                       "serving_version", "paused", "reason"]) {
      row.append(text("td", job[key], { class: key }));
    }
    const queue = text("td", "");
    queue.append(text("a", "review queue", { href: `/queue?job=${encodeURIComponent(ref)}` }));
    row.append(queue);
    body.append(row);
  }
}

function table(headers, rows) {
  const t = document.createElement("table");
  const head = document.createElement("tr");
  for (const h of headers) head.append(text("th", h));
  t.append(head);
  for (const r of rows) {
    const tr = document.createElement("tr");
    for (const v of r) tr.append(text("td", typeof v === "object" && v !== null ? JSON.stringify(v) : v));
    t.append(tr);
  }
  return t;
}

// Each version's metrics against its round, one line per metric (nested per-domain metrics,
// when an eval gives them, become lines of their own: "domain.metric"). Plain SVG, no library.
function flatMetrics(metrics, prefix = "") {
  const out = {};
  for (const [k, v] of Object.entries(metrics || {})) {
    if (typeof v === "number") out[prefix + k] = v;
    else if (v && typeof v === "object") Object.assign(out, flatMetrics(v, `${prefix}${k}.`));
  }
  return out;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, content) {
  const element = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) element.setAttribute(k, v);
  if (content !== undefined) element.textContent = content;
  return element;
}

function metricsPlot(versions) {
  const points = versions.map((v) => ({ round: v.round, version: v.version, m: flatMetrics(v.metrics) }));
  const names = [...new Set(points.flatMap((p) => Object.keys(p.m)))].sort();
  if (!points.length || !names.length) return text("p", "No version with metrics yet.", { class: "keys" });
  const W = 560, H = 220, L = 40, R = 130, T = 10, B = 30;
  const rounds = points.map((p) => p.round);
  const x0 = Math.min(...rounds), x1 = Math.max(...rounds);
  const top = Math.max(1, ...points.flatMap((p) => Object.values(p.m)));
  const x = (r) => L + (x1 === x0 ? (W - L - R) / 2 : ((r - x0) / (x1 - x0)) * (W - L - R));
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const plot = svg("svg", { class: "plot", id: "metrics-plot", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  plot.append(svg("line", { x1: L, y1: y(0), x2: W - R, y2: y(0), stroke: "#999" }),
              svg("line", { x1: L, y1: T, x2: L, y2: y(0), stroke: "#999" }),
              svg("text", { x: 4, y: y(top) + 4 }, top.toFixed(top > 1 ? 0 : 1)), svg("text", { x: 4, y: y(0) }, "0"),
              svg("text", { x: (W - R) / 2, y: H - 4 }, "round"));
  for (const r of [...new Set(rounds)]) plot.append(svg("text", { x: x(r) - 3, y: y(0) + 14 }, r));
  const colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"];
  names.forEach((name, i) => {
    const colour = colours[i % colours.length];
    const mine = points.filter((p) => typeof p.m[name] === "number");
    plot.append(svg("polyline", { fill: "none", stroke: colour, "stroke-width": 2, "data-metric": name,
                                  points: mine.map((p) => `${x(p.round)},${y(p.m[name])}`).join(" ") }));
    for (const p of mine) {
      const dot = svg("circle", { cx: x(p.round), cy: y(p.m[name]), r: 3, fill: colour });
      dot.append(svg("title", {}, `version ${p.version} (round ${p.round}): ${name} ${p.m[name].toFixed(3)}`));
      plot.append(dot);
    }
    plot.append(svg("rect", { x: W - R + 10, y: T + i * 16, width: 10, height: 10, fill: colour }),
                svg("text", { x: W - R + 26, y: T + i * 16 + 9 }, name));
  });
  return plot;
}

async function renderDetail() {
  const detail = document.querySelector("#detail");
  if (!shownJob) { detail.replaceChildren(); return; }
  const data = await api(`/api/job?job=${encodeURIComponent(shownJob)}`);
  const status = data.status || {};
  const spec = ((data.resource || {}).manifest || {}).spec || {};
  const train = ((spec.trainSpec || {}).trigger) || {};
  const condition = train.condition || {};
  const timer = train.timer;
  const deploy = (((spec.deploySpec || {}).trigger) || {}).condition || {};
  const when = (t) => new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19);
  detail.replaceChildren(
    text("h3", shownJob),
    table(["", ""], [
      ["Stage", `${status.stage} ${status.state} (round ${status.round})`],
      ["Samples", `${status.samples} (train when ${condition.metric} ${condition.operator} ${condition.threshold})`],
      ["Timer window", timer ? `${timer.start}-${timer.end}` : "none"],
      ["Deploy when", `${deploy.metric} ${deploy.operator} ${deploy.threshold}`],
      ["Deployed version", status.deployed_version || "-"],
    ]),
    text("h4", "Versions"),
    metricsPlot(data.versions || []),
    table(["Version", "Round", "Metrics", "Deploy decision"], (data.versions || []).map(
      (v) => [v.version, v.round, v.metrics, v.decision])),
    text("h4", "Conditions"),
    table(["Time (UTC)", "Round", "Stage", "State", "Reason"], (status.conditions || []).slice().reverse().map(
      (c) => [when(c.time), c.round, c.stage, c.state, c.reason])),
  );
}

async function refresh(items) {
  try {
    renderJobs(items || (await api("/api/jobs")).items);
    await renderDetail();
    document.querySelector("#message").textContent = "";
  } catch (error) {
    document.querySelector("#message").textContent = error.message;
  }
}

whoami().then(() => { refresh(); live((event) => { if (event.type === "jobs") refresh(event.items); }); });
