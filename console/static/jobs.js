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
