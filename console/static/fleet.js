// The fleet page: every node (online, last seen, labels, each job's version on it, cameras and
// rollout fields when the cloud gives them) and each job's rollout; refreshed on live events.
"use strict";

const utc = (t) => (typeof t === "number" ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "-");
// Fields the cloud may add later are shown as they come: "key value" pairs, objects as JSON.
const pairs = (object) => Object.entries(object || {}).map(
  ([k, v]) => `${k} ${typeof v === "object" && v !== null ? JSON.stringify(v) : v}`).join(", ");

function cell(className, ...children) {
  const td = document.createElement("td");
  td.className = className;
  for (const child of children) td.append(child);
  return td;
}

function servingCell(jobs) {
  const td = cell("serving");
  for (const j of jobs) {
    const wants = j.desired !== null && j.desired !== undefined && j.desired !== j.serving ? ` (wants v${j.desired})` : "";
    const line = text("div", `${j.job}: ${j.serving === null || j.serving === undefined ? "none" : "v" + j.serving}${wants}`
      + (Object.keys(j.extra).length ? ` · ${pairs(j.extra)}` : ""), { "data-job": j.job });
    td.append(line);
  }
  return td;
}

function camerasCell(cameras) {
  const td = cell("cameras");
  if (cameras === null || cameras === undefined) { td.textContent = "-"; return td; }
  const list = Array.isArray(cameras) ? cameras : Object.entries(cameras).map(
    ([name, v]) => (typeof v === "object" && v !== null ? { camera: name, ...v } : { camera: name, value: v }));
  for (const camera of list) td.append(text("div", typeof camera === "object" ? pairs(camera) : camera));
  return td;
}

function renderNodes(nodes) {
  const body = document.querySelector("#nodes tbody");
  body.replaceChildren();
  for (const node of nodes) {
    const row = document.createElement("tr");
    row.dataset.node = node.name;
    const live = cell("live");
    if (node.live_view) live.append(text("a", "open", { href: node.live_view, target: "_blank", rel: "noopener" }));
    else live.textContent = "-";
    row.append(cell("name", node.name), cell(`state ${node.state}`, node.state), cell("seen", utc(node.updated)),
               cell("labels", pairs(node.labels)), cell("agent", node.agent_version || "-"),
               cell("backlog", String(node.outbox_backlog ?? "-")), servingCell(node.jobs),
               camerasCell(node.cameras), live, cell("extra", pairs(node.extra)));
    body.append(row);
  }
}

function renderRollouts(jobs) {
  const body = document.querySelector("#rollouts tbody");
  body.replaceChildren();
  for (const job of jobs) {
    const row = document.createElement("tr");
    row.dataset.job = job.job;
    for (const key of ["job", "stage", "state", "round", "deployed_version"]) row.append(text("td", job[key], { class: key }));
    row.append(text("td", Object.keys(job.rollout).length ? pairs(job.rollout) : "-", { class: "rollout" }));
    body.append(row);
  }
}

let refreshing = null, again = false;
async function refresh() {
  if (refreshing) { again = true; return refreshing; }  // one request at a time, then once more
  refreshing = (async () => {
    try {
      const data = await api("/api/fleet");
      renderNodes(data.nodes);
      renderRollouts(data.jobs);
      document.querySelector("#updated").textContent = `updated ${utc(Date.now() / 1000)}`;
      document.querySelector("#message").textContent = "";
      document.body.dataset.ready = "1";
    } catch (error) {
      document.querySelector("#message").textContent = error.message;
    } finally {
      refreshing = null;
      if (again) { again = false; refresh(); }
    }
  })();
  return refreshing;
}

whoami().then(() => { refresh(); live((event) => { if (event.type === "jobs" || event.type === "nodes") refresh(); }); });
