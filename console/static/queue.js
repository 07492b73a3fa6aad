// The review queue: a list of hard examples and a box editor on a canvas.
"use strict";
const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4"];
const HANDLE = 8; // CSS pixels around a corner that grab it
const q = {
  job: "", items: [], current: null, example: null, boxes: [], selected: -1, scale: 1,
  image: null, drag: null, classNames: [],
};
const $ = (s) => document.querySelector(s);
const canvas = $("#canvas");
const context = canvas.getContext("2d");

function say(message, ok = false, problems = []) {
  const box = $("#message");
  box.className = ok ? "ok" : "error";
  box.textContent = message + (problems.length > 1 ? "\n" + problems.join("\n") : "");
}

function filters() {
  const params = new URLSearchParams({ job: q.job });
  for (const key of ["node", "camera", "mining", "since", "until", "show"]) {
    const value = $(`#f-${key}`).value;
    if (value) params.set(key, value);
  }
  return params;
}

function fillSelect(select, values, keep = true) {
  const chosen = select.value;
  const first = keep ? [select.options[0]] : [];
  select.replaceChildren(...first);
  for (const v of values) select.append(text("option", v, { value: v }));
  if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
}

async function loadJobs() {
  const { items } = await api("/api/jobs");
  const refs = items.map((j) => `${j.namespace}/${j.name}`);
  fillSelect($("#job"), refs, false);
  q.job = new URLSearchParams(location.search).get("job") || consoleState.defaultJob || refs[0] || "";
  $("#job").value = q.job;
  showJobStatus(items);
}

function showJobStatus(items) {
  const job = items.find((j) => `${j.namespace}/${j.name}` === q.job);
  $("#jobstatus").textContent = job ?
    `${q.job}: ${job.stage} ${job.state}, round ${job.round}, ${job.new_samples ?? "?"} new samples` : "";
}

async function loadQueue(keepCurrent = true) {
  if (!q.job) { say("no job: apply one first"); return; }
  const data = await api(`/api/queue?${filters()}`);
  q.items = data.items;
  q.classNames = data.class_names;
  fillSelect($("#f-node"), data.choices.nodes);
  fillSelect($("#f-camera"), data.choices.cameras);
  fillSelect($("#f-mining"), data.choices.minings);
  $("#counts").textContent = `${data.items.length} shown, ${data.todo} to label, ${data.total} in all`;
  const body = $("#items tbody");
  body.replaceChildren();
  for (const item of q.items) {
    const row = document.createElement("tr");
    row.dataset.id = item.id;
    row.append(text("td", item.id.slice(0, 12)), text("td", item.node), text("td", item.mining),
               text("td", item.state));
    row.onclick = () => open(item.id);
    if (q.current === item.id) row.className = "current";
    body.append(row);
  }
  const still = keepCurrent && q.items.some((i) => i.id === q.current);
  if (!still) await open(q.items.length ? q.items[0].id : null);
}

async function open(id) {
  q.current = id; q.selected = -1; q.boxes = []; q.example = null;
  for (const row of document.querySelectorAll("#items tbody tr")) {
    row.className = row.dataset.id === id ? "current" : "";
  }
  $("#noobjects").checked = false;
  if (!id) {
    $("#title").textContent = "Nothing to label here.";
    canvas.width = canvas.height = 10; canvas.dataset.id = "";
    renderBoxes(); return;
  }
  const example = await api(`/api/example?job=${encodeURIComponent(q.job)}&id=${id}`);
  const image = new Image();
  image.src = `/api/image?job=${encodeURIComponent(q.job)}&id=${id}`;
  await image.decode();
  q.example = example; q.image = image;
  q.boxes = example.boxes.map((b) => b.slice());
  fillSelect($("#newclass"), [], false);
  example.class_names.forEach((n, i) => $("#newclass").append(text("option", `${i + 1} ${n}`, { value: i })));
  q.scale = Math.min(8, 900 / example.width, 600 / example.height);
  canvas.width = Math.round(example.width * q.scale);
  canvas.height = Math.round(example.height * q.scale);
  canvas.dataset.scale = q.scale;
  canvas.dataset.id = id;
  $("#title").textContent = `${id.slice(0, 12)} from ${example.node} (${example.camera || "camera ?"}), ` +
    `${example.mining}, model v${example.model_version ?? "?"}, ${example.width}x${example.height}` +
    (example.dropped.length ? ` (${example.dropped.length} proposals left out)` : "");
  draw(); renderBoxes();
}

function draw() {
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!q.example) return;
  context.drawImage(q.image, 0, 0, canvas.width, canvas.height);
  q.boxes.forEach(([x1, y1, x2, y2, cls], i) => {
    const s = q.scale;
    context.strokeStyle = COLOURS[cls % COLOURS.length];
    context.lineWidth = i === q.selected ? 3 : 2;
    context.strokeRect(x1 * s, y1 * s, (x2 - x1) * s, (y2 - y1) * s);
    context.fillStyle = context.strokeStyle;
    context.font = "12px sans-serif";
    context.fillText(q.classNames[cls] ?? `class ${cls}`, x1 * s + 2, y1 * s + 12);
    if (i === q.selected) {
      for (const [cx, cy] of corners(q.boxes[i])) context.fillRect(cx * s - 4, cy * s - 4, 8, 8);
    }
  });
}

function corners([x1, y1, x2, y2]) { return [[x1, y1], [x2, y1], [x1, y2], [x2, y2]]; }

function renderBoxes() {
  const body = $("#boxes tbody");
  body.replaceChildren();
  q.boxes.forEach((box, i) => {
    const row = document.createElement("tr");
    row.dataset.box = box.join(",");
    if (i === q.selected) row.className = "selected";
    const select = document.createElement("select");
    q.classNames.forEach((n, c) => select.append(text("option", `${c + 1} ${n}`, { value: c })));
    select.value = box[4];
    select.onchange = () => { box[4] = Number(select.value); draw(); renderBoxes(); };
    const remove = text("button", "delete");
    remove.onclick = () => { q.selected = i; deleteSelected(); };
    row.append(text("td", i + 1), document.createElement("td"), text("td", box.slice(0, 4).join(",")),
               document.createElement("td"));
    row.children[1].append(select); row.children[3].append(remove);
    row.onclick = (event) => { if (event.target.tagName === "TD") { q.selected = i; draw(); renderBoxes(); } };
    body.append(row);
  });
}

function at(event) {
  const r = canvas.getBoundingClientRect();
  return [(event.clientX - r.left) / q.scale, (event.clientY - r.top) / q.scale];
}

function hit(x, y) {
  const reach = HANDLE / q.scale;
  const order = [...q.boxes.keys()].reverse();
  if (q.selected >= 0) order.unshift(q.selected);
  for (const i of order) {
    const cs = corners(q.boxes[i]);
    for (let c = 0; c < 4; c++) {
      if (Math.abs(cs[c][0] - x) <= reach && Math.abs(cs[c][1] - y) <= reach) return { i, corner: c };
    }
  }
  for (const i of order) {
    const [x1, y1, x2, y2] = q.boxes[i];
    if (x >= x1 && x <= x2 && y >= y1 && y <= y2) return { i, corner: -1 };
  }
  return null;
}

const clamp = (v, hi) => Math.max(0, Math.min(hi, Math.round(v)));

canvas.addEventListener("mousedown", (event) => {
  if (!q.example) return;
  const [x, y] = at(event);
  const found = hit(x, y);
  if (found) {
    q.selected = found.i;
    q.drag = { mode: found.corner >= 0 ? "corner" : "move", corner: found.corner, x, y,
               start: q.boxes[found.i].slice() };
  } else {
    q.boxes.push([clamp(x, q.example.width), clamp(y, q.example.height),
                  clamp(x, q.example.width), clamp(y, q.example.height), Number($("#newclass").value)]);
    q.selected = q.boxes.length - 1;
    q.drag = { mode: "corner", corner: 3, x, y, start: q.boxes[q.selected].slice(), fresh: true };
  }
  $("#noobjects").checked = false;
  draw(); renderBoxes();
});

window.addEventListener("mousemove", (event) => {
  if (!q.drag) return;
  const [x, y] = at(event);
  const box = q.boxes[q.selected];
  const [x1, y1, x2, y2] = q.drag.start;
  const w = q.example.width, h = q.example.height;
  if (q.drag.mode === "move") {
    const dx = Math.max(-x1, Math.min(w - x2, Math.round(x - q.drag.x)));
    const dy = Math.max(-y1, Math.min(h - y2, Math.round(y - q.drag.y)));
    box.splice(0, 4, x1 + dx, y1 + dy, x2 + dx, y2 + dy);
  } else {
    const c = q.drag.corner;
    const nx = clamp(x, w), ny = clamp(y, h);
    const xs = c % 2 === 0 ? [nx, x2] : [x1, nx];
    const ys = c < 2 ? [ny, y2] : [y1, ny];
    box.splice(0, 4, Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys));
  }
  draw();
});

window.addEventListener("mouseup", () => {
  if (!q.drag) return;
  const box = q.boxes[q.selected];
  if (q.drag.fresh && (box[2] - box[0] < 2 || box[3] - box[1] < 2)) { // a click, not a box
    q.boxes.splice(q.selected, 1); q.selected = -1;
  }
  q.drag = null;
  draw(); renderBoxes();
});

function deleteSelected() {
  if (q.selected < 0) return;
  q.boxes.splice(q.selected, 1);
  q.selected = -1;
  draw(); renderBoxes();
}

function setClass(cls) {
  if (cls >= q.classNames.length) return;
  if (q.selected >= 0) q.boxes[q.selected][4] = cls;
  else $("#newclass").value = cls;
  draw(); renderBoxes();
}

function nextId() {
  const i = q.items.findIndex((item) => item.id === q.current);
  const rest = q.items.filter((_, j) => j !== i);
  return rest.length ? (q.items[i + 1] || rest[0]).id : null;
}

async function accept() {
  if (!q.example) return;
  const id = q.current;
  try {
    const result = await api("/api/accept", {
      job: q.job, id, no_objects: $("#noobjects").checked,
      boxes: q.boxes.map(([x1, y1, x2, y2, cls]) => ({ x1, y1, x2, y2, cls })),
    });
    say(`saved ${id.slice(0, 12)}: ${result.boxes.length} boxes added to ${result.dataset}`, true);
    const next = nextId();
    q.items = q.items.filter((item) => item.id !== id);
    await open(next);
    await loadQueue();
  } catch (error) {
    say(error.message, false, error.problems || []);
  }
}

async function mark(path, body) {
  if (!q.current) return;
  try {
    await api(path, { job: q.job, id: q.current, ...body });
    const next = nextId();
    await open(next);
    await loadQueue();
  } catch (error) { say(error.message); }
}

const skip = () => mark("/api/skip", {});
const flag = () => mark("/api/difficult", { difficult: true });
const next = () => open(nextId());

function noObjects() {
  $("#noobjects").checked = !$("#noobjects").checked;
  if ($("#noobjects").checked) { q.boxes = []; q.selected = -1; draw(); renderBoxes(); }
}

document.addEventListener("keydown", (event) => {
  if (["INPUT", "SELECT"].includes(event.target.tagName) && event.target.type !== "checkbox") return;
  const actions = { n: next, a: accept, s: skip, d: flag, e: noObjects,
                    Delete: deleteSelected, Backspace: deleteSelected,
                    Escape: () => { q.selected = -1; draw(); renderBoxes(); } };
  if (actions[event.key]) { event.preventDefault(); actions[event.key](); }
  else if (/^[1-9]$/.test(event.key)) setClass(Number(event.key) - 1);
});

$("#accept").onclick = accept; $("#skip").onclick = skip; $("#flag").onclick = flag; $("#next").onclick = next;
$("#noobjects").onchange = () => { if ($("#noobjects").checked) { q.boxes = []; q.selected = -1; draw(); renderBoxes(); } };
$("#job").onchange = () => { q.job = $("#job").value; q.current = null; loadQueue(false); };
for (const key of ["node", "camera", "mining", "since", "until", "show"]) {
  $(`#f-${key}`).onchange = () => loadQueue().catch((e) => say(e.message));
}

async function start() {
  await whoami();
  await loadJobs();
  await loadQueue(false);
  document.body.dataset.ready = "1";
  live(async (event) => {
    if (event.type === "jobs") showJobStatus(event.items);
    if (event.type === "queue" && event.job === q.job && event.by !== consoleState.user) {
      if (event.id === q.current && event.state !== "todo") say(`${event.by} took ${event.id.slice(0, 12)} (${event.state})`);
      await loadQueue();
    }
  });
}
start().catch((error) => say(error.message));
