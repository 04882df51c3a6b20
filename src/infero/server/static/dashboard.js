"use strict";
// infero dashboard: reads /api/state/stream (SSE over fetch, so it can send the API key),
// renders it with DOM APIs only (textContent, never HTML strings: names come from connectors).
(() => {
  const STREAM_URL = "api/state/stream?mode=full";
  const KEY_STORAGE = "infero.apiKey";
  const BACKOFF_MS = [1000, 2000, 5000, 10000];
  const STATUSES = new Set(["connecting", "idle", "busy", "draining", "not_ready", "gone", "active"]);
  const SERVER_STATES = new Set(["ready", "not_ready", "draining"]);

  const $ = (id) => document.getElementById(id);
  let attempt = 0;
  let retryTimer = 0;
  let snapshot = null;
  let sortKey = "name";
  let sortDir = 1;

  // ---- formatting ------------------------------------------------------------------------

  const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const int = (n) => integer.format(Number(n) || 0);
  const dec = (n) => decimal.format(Number(n) || 0);

  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }

  const millis = (ms) => (ms >= 1000 ? `${decimal.format(ms / 1000)} s` : `${int(ms)} ms`);

  function ageSeconds(iso) {
    const then = Date.parse(iso);
    const now = Date.parse(snapshot.server.now);
    return Number.isNaN(then) || Number.isNaN(now) ? 0 : (now - then) / 1000;
  }

  const statusClass = (status) => (STATUSES.has(status) ? `s-${status}` : "s-unknown");

  // ---- DOM helpers (text only) -------------------------------------------------------------

  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    node.append(...children.map((c) => (c instanceof Node ? c : String(c))));
    return node;
  }

  const text = (value) => el("td", "", value);
  const num = (value) => el("td", "num", value);

  function statusCell(status, draining) {
    const label = draining && status !== "draining" ? `${status} (draining)` : status;
    return el("td", "status", el("span", `dot ${statusClass(status)}`), label);
  }

  function headers(table, columns, sortable) {
    const row = table.tHead.rows[0];
    row.replaceChildren(
      ...columns.map((column) => {
        const th = el("th", column.numeric ? "num" : "");
        th.dataset.key = column.key;
        if (sortable) {
          const button = el("button", "", column.label);
          button.type = "button";
          button.addEventListener("click", () => sortBy(column.key));
          th.append(button);
        } else {
          th.textContent = column.label;
        }
        return th;
      }),
    );
  }

  function fill(table, rows, empty) {
    const columns = table.tHead.rows[0].cells.length;
    if (rows.length === 0) {
      const cell = el("td", "empty", empty);
      cell.colSpan = columns;
      rows = [el("tr", "", cell)];
    }
    table.tBodies[0].replaceChildren(...rows);
  }

  // ---- workers table (sortable) ----------------------------------------------------------

  const WORKER_COLUMNS = [
    { key: "name", label: "Name", sort: (w) => (w.name || w.id).toLowerCase() },
    { key: "status", label: "Status", sort: (w) => w.status },
    {
      key: "load",
      label: "In flight",
      numeric: true,
      sort: (w) => w.inflight / Math.max(1, w.max_concurrency),
    },
    { key: "queue", label: "Queue", numeric: true, sort: (w) => w.queue_len },
    { key: "tokens_in", label: "Tokens in", numeric: true, sort: (w) => w.tokens_in_total },
    { key: "tokens_out", label: "Tokens out", numeric: true, sort: (w) => w.tokens_out_total },
    { key: "tps", label: "Tokens/s", numeric: true, sort: (w) => w.avg_tokens_per_second },
    { key: "failures", label: "Failures", numeric: true, sort: (w) => w.failures_total },
    { key: "heartbeat", label: "Heartbeat", numeric: true, sort: (w) => ageSeconds(w.last_heartbeat) },
    { key: "version", label: "Version", sort: (w) => w.version },
  ];

  function workerRow(w) {
    const name = el("td", "name", w.name || w.id);
    if (w.name && w.name !== w.id) name.append(el("small", "", w.id));
    const load = num(`${int(w.inflight)}/${int(w.max_concurrency)}`);
    const meter = document.createElement("meter");
    meter.max = Math.max(1, w.max_concurrency);
    meter.value = w.inflight;
    load.append(meter);
    const failures = num(int(w.failures_total));
    if (w.last_error) failures.title = w.last_error;
    const row = el(
      "tr",
      "",
      name,
      statusCell(w.status, w.draining),
      load,
      num(int(w.queue_len)),
      num(int(w.tokens_in_total)),
      num(int(w.tokens_out_total)),
      num(dec(w.avg_tokens_per_second)),
      failures,
      num(duration(ageSeconds(w.last_heartbeat))),
      text(w.version),
    );
    row.dataset.id = w.id;
    row.dataset.status = w.status;
    return row;
  }

  function compare(a, b) {
    const column = WORKER_COLUMNS.find((c) => c.key === sortKey);
    const x = column.sort(a);
    const y = column.sort(b);
    if (x < y) return -sortDir;
    if (x > y) return sortDir;
    return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
  }

  function sortBy(key) {
    sortDir = key === sortKey ? -sortDir : 1;
    sortKey = key;
    if (snapshot) renderWorkers();
  }

  function renderWorkers() {
    const table = $("workers");
    for (const th of table.tHead.rows[0].cells) {
      if (th.dataset.key === sortKey) {
        th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
      } else {
        th.removeAttribute("aria-sort");
      }
    }
    const workers = [...snapshot.workers].sort(compare);
    fill(table, workers.map(workerRow), "No connectors.");
  }

  // ---- the other tables ------------------------------------------------------------------

  function renderModels() {
    const rows = snapshot.models.map((m) =>
      el(
        "tr",
        "",
        text(m.name),
        num(`${int(m.ready_workers)}/${int(m.workers)}`),
        num(int(m.queue_len)),
        num(m.queue_len ? millis(m.oldest_wait_ms) : "–"),
        num(int(m.requests_total)),
        num(int(m.error_total)),
        num(int(m.tokens_in_total)),
        num(int(m.tokens_out_total)),
        num(millis(m.avg_ttft_ms)),
        num(millis(m.avg_duration_ms)),
        num(dec(m.avg_tokens_per_second)),
      ),
    );
    fill($("models"), rows, "No models.");
  }

  function renderMcp() {
    const clients = snapshot.mcp.clients.map((c) => {
      const row = el(
        "tr",
        "",
        text(c.name || c.id),
        text(c.id),
        statusCell(c.status, false),
        num(int(c.inflight)),
        num(int(c.calls_total)),
        num(int(c.errors_total)),
        text(c.version),
      );
      row.dataset.id = c.id;
      return row;
    });
    fill($("mcp-clients"), clients, "No MCP relays.");
    const sessions = snapshot.mcp.sessions.map((s) =>
      el(
        "tr",
        "",
        text(s.id),
        text(s.client_id),
        text(s.method),
        num(int(s.inflight)),
        num(duration(ageSeconds(s.started_at))),
        num(s.last_activity ? duration(ageSeconds(s.last_activity)) : "–"),
      ),
    );
    fill($("mcp-sessions"), sessions, "No MCP sessions.");
  }

  function renderServer() {
    const server = snapshot.server;
    const summary = snapshot.workers_summary;
    $("version").textContent = server.version;
    const state = $("server-state");
    state.textContent = server.state;
    state.className = SERVER_STATES.has(server.state) ? `badge ${server.state}` : "badge";
    $("uptime").textContent = `up ${duration(server.uptime_s)}`;
    $("summary").textContent =
      `${int(summary.connected)} connected: ${int(summary.working)} busy, ` +
      `${int(summary.idle)} idle, ${int(summary.draining)} draining, ` +
      `${int(summary.not_ready)} not ready; ${int(summary.gone)} gone. ` +
      `Requests: ${int(server.jobs_inflight_total)} in flight, ` +
      `${int(server.scheduler_queue_len)} queued, ${int(server.jobs_completed_total)} completed, ` +
      `${int(server.jobs_failed_total)} failed. MCP relays: ${int(snapshot.mcp.clients.length)}.`;
  }

  function render(next) {
    snapshot = next;
    renderServer();
    renderWorkers();
    renderModels();
    renderMcp();
  }

  // ---- the stream ------------------------------------------------------------------------

  function setConnection(state, message) {
    const conn = $("conn");
    conn.dataset.state = state;
    conn.textContent = message;
  }

  async function readEvents(body, onData) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        let line = buffer.slice(0, end);
        buffer = buffer.slice(end + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (data.length) onData(data.join("\n"));
          data = [];
        } else if (line.startsWith("data:")) {
          data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
        }
        // `id:`, `event:`, `retry:` and `:` keepalive comments need no handling here.
      }
    }
  }

  function onEvent(data) {
    let next;
    try {
      next = JSON.parse(data);
    } catch {
      return;
    }
    attempt = 0;
    setConnection("live", "live");
    render(next);
  }

  function retry(reason) {
    const delay = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
    attempt += 1;
    setConnection("down", `${reason}; retrying in ${delay / 1000} s`);
    retryTimer = setTimeout(connect, delay);
  }

  function askForKey(message) {
    setConnection("auth", "API key needed");
    $("auth-message").textContent = message;
    $("auth").hidden = false;
    $("auth-key").focus();
  }

  async function connect() {
    clearTimeout(retryTimer);
    const key = sessionStorage.getItem(KEY_STORAGE) || "";
    const requestHeaders = { Accept: "text/event-stream" };
    if (key) requestHeaders.Authorization = `Bearer ${key}`;
    let response;
    try {
      response = await fetch(STREAM_URL, { headers: requestHeaders, cache: "no-store" });
    } catch {
      retry("server unreachable");
      return;
    }
    if (response.status === 401 || response.status === 403) {
      askForKey(key ? "The server refused this key." : "This server needs an API key.");
      return;
    }
    if (!response.ok || !response.body) {
      retry(`HTTP ${response.status}`);
      return;
    }
    try {
      await readEvents(response.body, onEvent);
      retry("stream ended");
    } catch {
      retry("stream broken");
    }
  }

  $("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("auth-key").value);
    $("auth-key").value = "";
    $("auth").hidden = true;
    setConnection("connecting", "connecting…");
    connect();
  });

  headers($("workers"), WORKER_COLUMNS, true);
  headers(
    $("models"),
    [
      { key: "name", label: "Model" },
      { key: "ready", label: "Ready/connectors", numeric: true },
      { key: "queue", label: "Queue", numeric: true },
      { key: "wait", label: "Oldest wait", numeric: true },
      { key: "requests", label: "Requests", numeric: true },
      { key: "errors", label: "Errors", numeric: true },
      { key: "tokens_in", label: "Tokens in", numeric: true },
      { key: "tokens_out", label: "Tokens out", numeric: true },
      { key: "ttft", label: "First byte", numeric: true },
      { key: "duration", label: "Duration", numeric: true },
      { key: "tps", label: "Tokens/s", numeric: true },
    ],
    false,
  );
  headers(
    $("mcp-clients"),
    [
      { key: "name", label: "Name" },
      { key: "id", label: "Id" },
      { key: "status", label: "Status" },
      { key: "inflight", label: "In flight", numeric: true },
      { key: "calls", label: "Calls", numeric: true },
      { key: "errors", label: "Errors", numeric: true },
      { key: "version", label: "Version" },
    ],
    false,
  );
  headers(
    $("mcp-sessions"),
    [
      { key: "id", label: "Session" },
      { key: "client", label: "Relay" },
      { key: "method", label: "Last method" },
      { key: "inflight", label: "In flight", numeric: true },
      { key: "age", label: "Age", numeric: true },
      { key: "idle", label: "Idle", numeric: true },
    ],
    false,
  );
  connect();
})();
