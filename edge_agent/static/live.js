// The live-view page: one websocket, one panel per task; boxes are drawn here, on a canvas.
"use strict";

const COLORS = ["#4caf50", "#f44336", "#2196f3", "#ffc107", "#e91e63", "#00bcd4"];
const panels = new Map(); // task id -> {root, canvas, lastSeq, shown}

function panel(taskId) {
  let p = panels.get(taskId);
  if (p) return p;
  const root = document.getElementById("task-template").content.firstElementChild.cloneNode(true);
  root.dataset.task = taskId;
  root.querySelector("h2").textContent = taskId;
  document.getElementById("tasks").appendChild(root);
  document.getElementById("empty").hidden = true;
  p = { root, canvas: root.querySelector("canvas"), lastSeq: 0, shown: 0 };
  panels.set(taskId, p);
  return p;
}

function set(p, cls, value) {
  p.root.querySelector("." + cls).textContent = value ?? "–";
}

function drawFrame(p, msg) {
  const image = new Image();
  image.onload = () => {
    if (msg.seq < p.lastSeq) return; // an older frame decoded late
    p.lastSeq = msg.seq;
    const { canvas } = p;
    canvas.width = msg.width;
    canvas.height = msg.height;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(image, 0, 0, msg.width, msg.height);
    ctx.lineWidth = 2;
    ctx.font = "12px system-ui, sans-serif";
    for (const [x1, y1, x2, y2, score, cls] of msg.boxes) {
      const color = COLORS[cls % COLORS.length];
      const name = msg.class_names[cls] ?? `class ${cls}`;
      const label = `${name} ${(score * 100).toFixed(0)}%`;
      ctx.strokeStyle = color;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const w = ctx.measureText(label).width + 6;
      const top = y1 >= 16 ? y1 - 16 : y1;
      ctx.fillStyle = color;
      ctx.fillRect(x1, top, w, 16);
      ctx.fillStyle = "#000";
      ctx.fillText(label, x1 + 3, top + 12);
    }
    p.shown += 1;
    set(p, "shown", p.shown);
    set(p, "frame-index", msg.frame_index);
  };
  image.src = "data:image/jpeg;base64," + msg.jpeg_b64;
}

function handle(msg) {
  if (msg.type === "node") {
    document.getElementById("node").textContent = msg.node;
    document.getElementById("backlog").textContent = msg.backlog ?? "?";
    document.getElementById("viewers").textContent = msg.viewers;
    document.getElementById("uploads").textContent = msg.uploads ? "uploads: " + msg.uploads : "";
    return;
  }
  if (msg.type === "gone") {
    panels.get(msg.task_id)?.root.remove();
    panels.delete(msg.task_id);
    document.getElementById("empty").hidden = panels.size > 0;
    return;
  }
  const p = panel(msg.task_id);
  if (msg.model_version !== undefined) set(p, "version", msg.model_version);
  if (msg.type === "task") {
    set(p, "fps", msg.fps.toFixed(1));
    set(p, "frames", msg.frames);
    set(p, "hardex", msg.hard_examples);
    set(p, "mining", miningText(msg));
  } else if (msg.type === "frame") {
    set(p, "fps", msg.fps.toFixed(1));
    drawFrame(p, msg);
  } else if (msg.type === "swapped") {
    const note = p.root.querySelector(".swap");
    note.classList.toggle("failed", !msg.ok);
    note.textContent = msg.ok
      ? `now serving version ${msg.version} (was ${msg.previous ?? "–"})`
      : `swap refused, still serving ${msg.model_version ?? "–"}: ${msg.error ?? ""}`;
  }
}

// "detection-drop" (the model's detections fell: frames are sampled uniformly) stands out.
function miningText(msg) {
  const reasons = Object.entries(msg.hard_examples_by_reason ?? {})
    .map(([reason, n]) => `${reason} ${n}`).join(", ");
  const mode = msg.mining_mode === "detection-drop" ? "DETECTION DROP: sampling uniformly" : msg.mining_mode;
  return [mode, reasons].filter(Boolean).join("; ") || "–";
}

function connect(delay) {
  const conn = document.getElementById("conn");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws`);
  socket.onopen = () => { conn.textContent = "live"; conn.className = ""; delay = 500; };
  socket.onmessage = (event) => handle(JSON.parse(event.data));
  socket.onclose = () => {
    conn.textContent = "disconnected, retrying…";
    conn.className = "off";
    setTimeout(() => connect(Math.min(delay * 2, 5000)), delay);
  };
}

connect(500);
