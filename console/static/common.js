// Shared by the console's pages: who is logged in, API calls with the request token, live events.
"use strict";
const consoleState = { csrf: null, user: null, defaultJob: "" };

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-CSRF-Token": consoleState.csrf || "" },
  };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (response.status === 401 && !path.endsWith("/login")) {
    location.href = "/login?why=" + encodeURIComponent(data.error || "");
    throw new Error(data.error);
  }
  if (!response.ok) {
    const error = new Error(data.error || `HTTP ${response.status}`);
    error.problems = data.problems || [];
    error.status = response.status;
    throw error;
  }
  return data;
}

async function whoami() {
  const me = await api("/api/me");
  consoleState.csrf = me.csrf; consoleState.user = me.user; consoleState.defaultJob = me.default_job;
  document.querySelector("#who").textContent = me.user;
  document.querySelector("#logout").onclick = async () => { await api("/api/logout", {}); location.href = "/login"; };
  return me;
}

function live(onEvent) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws`);
  socket.onmessage = (event) => onEvent(JSON.parse(event.data));
  socket.onclose = () => setTimeout(() => live(onEvent), 2000);
}

function text(tag, value, attrs = {}) {
  const element = document.createElement(tag);
  element.textContent = value === undefined || value === null ? "" : String(value);
  for (const [k, v] of Object.entries(attrs)) element.setAttribute(k, v);
  return element;
}
