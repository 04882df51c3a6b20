"use strict";
// infero dashboard: follows /api/state/stream (SSE over fetch, so it can send the API key):
// a snapshot, then deltas keyed by id, applied to maps of rows; the page is drawn at most once
// per animation frame from the latest state, and long tables render only the rows in view.
// Everything goes in with DOM APIs (textContent, never HTML strings: names come from connectors).
// With several server instances (REDIS_ADDR) it lists them and shows each row's instance.
(() => {
  const STREAM_URL = "api/state/stream";
  const KEY_STORAGE = "infero.apiKey";
  const BACKOFF_MS = [1000, 2000, 5000, 10000];
  const STATUSES = new Set(["connecting", "idle", "busy", "draining", "not_ready", "gone", "active"]);
  const SERVER_STATES = new Set(["ready", "not_ready", "draining"]);
  const ROW_HEIGHT = 30; // px; the CSS gives every body row this height
  const OVERSCAN = 5; // rows drawn above and below the visible ones
  const WAITERS_SHOWN = 5; // waiters of a model whose instance the models table names

  const $ = (id) => document.getElementById(id);
  let attempt = 0;
  let retryTimer = 0;
  let lastEventId = "";
  let snapshots = 0;
  let filterText = ""; // lower case; rows of the filterable tables must contain it

  // ---- the state the page holds ----------------------------------------------------------

  const state = {
    server: null,
    summary: null,
    workers: new Map(),
    models: new Map(),
    clients: new Map(),
    sessions: new Map(),
    instances: new Map(), // from server.instances: this instance first, as the server sends them
    clockOffset: 0, // server clock minus ours, from the latest event (ms)
  };

  const KINDS = [
    ["workers", "workers", (w) => w.id],
    ["models", "models", (m) => m.name],
    ["mcp_clients", "clients", (c) => c.id],
    ["mcp_sessions", "sessions", (s) => `${s.client_id}/${s.id}`],
  ];

  function fillMap(map, rows, key) {
    map.clear();
    for (const row of rows || []) map.set(key(row), row);
  }

  function setServer(server) {
    state.server = server;
    fillMap(state.instances, server.instances, (i) => i.id);
    TABLE_OF.instances.changed = true;
  }

  // Instance columns appear only when the fleet has several instances.
  const several = () => state.instances.size > 1;

  function applySnapshot(doc) {
    setServer(doc.server);
    state.summary = doc.workers_summary;
    fillMap(state.workers, doc.workers, KINDS[0][2]);
    fillMap(state.models, doc.models, KINDS[1][2]);
    fillMap(state.clients, doc.mcp && doc.mcp.clients, KINDS[2][2]);
    fillMap(state.sessions, doc.mcp && doc.mcp.sessions, KINDS[3][2]);
    setClock(doc.server.now);
    for (const table of TABLES) table.changed = true;
  }

  function applyDelta(delta) {
    if (!state.server) return;
    if (delta.server) setServer(delta.server);
    if (delta.workers_summary) state.summary = delta.workers_summary;
    state.server = { ...state.server, now: delta.now };
    setClock(delta.now);
    for (const [field, name, key] of KINDS) {
      const changes = delta[field];
      if (!changes) continue;
      const map = state[name];
      for (const gone of changes.remove || []) map.delete(gone);
      for (const row of changes.upsert || []) map.set(key(row), row);
      TABLE_OF[name].changed = true;
    }
  }

  function setClock(iso) {
    const t = Date.parse(iso);
    if (!Number.isNaN(t)) state.clockOffset = t - Date.now();
  }

  const serverNow = () => Date.now() + state.clockOffset;

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
    return Number.isNaN(then) ? 0 : (serverNow() - then) / 1000;
  }

  const statusClass = (status) => (STATUSES.has(status) ? `s-${status}` : "s-unknown");

  // ---- DOM helpers (text only) -------------------------------------------------------------

  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    node.append(...children.map((c) => (c instanceof Node ? c : String(c))));
    return node;
  }

  // A cell is described by a small object; `put` patches a <td> only where it differs: its
  // text, dot, note and gauge are kept and changed in place, so an update touches few nodes.
  const text = (value) => ({ text: String(value) });
  const num = (value) => ({ text: String(value), cls: "num" });

  function status(value, draining) {
    const label = draining && value !== "draining" ? `${value} (draining)` : value;
    return { text: label, cls: "status", dot: statusClass(value) };
  }

  const gaugeWidth = (meter) => `${Math.round((100 * Math.min(meter[0], meter[1])) / meter[1])}%`;

  // The nodes of a cell's content: [dot] text [small] [gauge > fill].
  function build(td, cell) {
    const parts = { text: document.createTextNode(cell.text), dot: null, small: null, fill: null };
    const nodes = [parts.text];
    if (cell.dot) nodes.unshift((parts.dot = el("span", `dot ${cell.dot}`)));
    if (cell.small) nodes.push((parts.small = el("small", "", cell.small)));
    if (cell.meter) {
      parts.fill = el("span", "fill");
      parts.fill.style.width = gaugeWidth(cell.meter);
      nodes.push(el("span", "gauge", parts.fill));
    }
    td.replaceChildren(...nodes);
    td.parts = parts;
  }

  function put(td, cell) {
    const old = td.cell;
    td.cell = cell;
    const cls = cell.cls || "";
    const title = cell.title || "";
    if (td.className !== cls) td.className = cls;
    if (td.title !== title) td.title = title;
    if (
      !old ||
      !old.dot !== !cell.dot ||
      !old.small !== !cell.small ||
      !old.meter !== !cell.meter
    ) {
      build(td, cell);
      return;
    }
    const parts = td.parts;
    if (old.text !== cell.text) parts.text.data = cell.text;
    if (cell.dot && old.dot !== cell.dot) parts.dot.className = `dot ${cell.dot}`;
    if (cell.small && old.small !== cell.small) parts.small.textContent = cell.small;
    if (cell.meter) {
      const width = gaugeWidth(cell.meter);
      if (parts.fill.style.width !== width) parts.fill.style.width = width;
    }
  }

  // Writes that change nothing are skipped: each one may cost the page a style or layout pass.
  function setText(node, value) {
    if (node.textContent !== value) node.textContent = value;
  }

  function setHidden(node, hidden) {
    if (node.hidden !== hidden) node.hidden = hidden;
  }

  // ---- tables: rows by key, sorted, only the visible window in the DOM ----------------------

  // What the filter searches in a row, by row object (an update replaces the object).
  const SEARCHED = new WeakMap();

  class Table {
    constructor(id, name, columns, options) {
      this.table = $(id);
      this.name = name;
      this.all = columns; // a column with `shown` is drawn only while shown() is true
      this.columns = columns.filter((c) => !c.shown || c.shown());
      this.key = options.key;
      this.empty = options.empty;
      this.text = options.text || null; // what the filter searches (lower case); none: no filter
      this.decorate = options.decorate || null; // (tr, row) => void, for row attributes
      this.sortable = Boolean(options.sortable);
      this.sortKey = options.sortKey || null;
      this.defaultSort = this.sortKey;
      this.sortDir = 1;
      this.order = options.order || null;
      this.changed = true;
      this.rows = [];
      this.scrollTop = 0; // read on scroll events, so a draw never asks for a layout
      this.view = 0; // px of rows the scroller can show (its max-height), read on resize
      this.heights = [-1, -1]; // of the spacers, as last set
      this.shown = new Map(); // key -> <tr> in the DOM
      this.body = this.table.tBodies[0];
      this.scroller = this.table.parentElement;
      this.top = el("tr", "spacer");
      this.bottom = el("tr", "spacer");
      this.top.setAttribute("aria-hidden", "true");
      this.bottom.setAttribute("aria-hidden", "true");
      this.emptyRow = null;
      for (const spacer of [this.top, this.bottom]) {
        const cell = el("td", "");
        cell.colSpan = this.columns.length;
        spacer.append(cell);
      }
      this.scroller.addEventListener(
        "scroll",
        () => {
          this.scrollTop = this.scroller.scrollTop;
          schedule();
        },
        { passive: true },
      );
      this.head();
      this.marks();
      this.measure();
    }

    // Reads style only (no layout): called at start and on resize, never while drawing.
    measure() {
      const most = parseFloat(getComputedStyle(this.scroller).maxHeight);
      this.view = Number.isFinite(most) ? Math.min(most, window.innerHeight) : window.innerHeight;
    }

    head() {
      const row = this.table.tHead.rows[0];
      row.replaceChildren(
        ...this.columns.map((column) => {
          const th = el("th", column.numeric ? "num" : "");
          th.dataset.key = column.key;
          if (this.sortable) {
            const button = el("button", "", column.label);
            button.type = "button";
            button.addEventListener("click", () => this.sortBy(column.key));
            th.append(button);
          } else {
            th.textContent = column.label;
          }
          return th;
        }),
      );
    }

    sortBy(key) {
      this.sortDir = key === this.sortKey ? -this.sortDir : 1;
      this.sortKey = key;
      this.changed = true;
      this.marks();
      schedule();
    }

    marks() {
      if (!this.sortable) return;
      for (const th of this.table.tHead.rows[0].cells) {
        if (th.dataset.key === this.sortKey) {
          th.setAttribute("aria-sort", this.sortDir > 0 ? "ascending" : "descending");
        } else {
          th.removeAttribute("aria-sort");
        }
      }
    }

    // Columns that come and go (the instance of each row): rebuilt only when the set changes.
    refreshColumns() {
      const visible = this.all.filter((c) => !c.shown || c.shown());
      if (visible.length === this.columns.length && visible.every((c, i) => c === this.columns[i])) {
        return;
      }
      this.columns = visible;
      if (!visible.some((c) => c.key === this.sortKey)) {
        this.sortKey = this.defaultSort;
        this.sortDir = 1;
      }
      this.top.cells[0].colSpan = visible.length;
      this.bottom.cells[0].colSpan = visible.length;
      this.emptyRow = null;
      this.shown = new Map(); // every row is rebuilt with the new cells
      this.changed = true;
      this.head();
      this.marks();
    }

    resort() {
      let rows = [...state[this.name].values()];
      if (this.text && filterText) {
        const textOf = this.text;
        rows = rows.filter((row) => {
          let searched = SEARCHED.get(row);
          if (searched === undefined) SEARCHED.set(row, (searched = textOf(row)));
          return searched.includes(filterText);
        });
      }
      const column = this.columns.find((c) => c.key === this.sortKey);
      if (column && column.sort) {
        const dir = this.sortDir;
        const keyOf = this.key;
        const decorated = rows.map((row) => [column.sort(row), keyOf(row), row]);
        decorated.sort((a, b) =>
          a[0] < b[0] ? -dir : a[0] > b[0] ? dir : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0,
        );
        this.rows = decorated.map((d) => d[2]);
      } else if (this.order) {
        this.rows = rows.sort(this.order);
      } else {
        this.rows = rows;
      }
    }

    draw() {
      this.refreshColumns();
      if (this.changed) {
        this.resort();
        this.changed = false;
      }
      const total = this.rows.length;
      if (total === 0) {
        if (!this.emptyRow) {
          const cell = el("td", "empty");
          cell.colSpan = this.columns.length;
          this.emptyRow = el("tr", "", cell);
        }
        const filtered = this.text && filterText && state[this.name].size;
        const message = filtered ? "No row matches the filter." : this.empty;
        const cell = this.emptyRow.cells[0];
        if (cell.textContent !== message) cell.textContent = message;
        this.shown.clear();
        this.body.replaceChildren(this.emptyRow);
        return;
      }
      const [first, last] = this.range(total);
      const keys = [];
      for (let i = first; i < last; i++) keys.push(this.key(this.rows[i]));
      // A row entering the view takes the <tr> of one leaving it, patched like an update:
      // changing the text of cells costs less than building and styling new ones. They are
      // taken in page order, so after a jump or a sort they need not move.
      const staying = new Set(keys);
      const spare = [];
      let reused = 0;
      for (const [key, tr] of this.shown) if (!staying.has(key)) spare.push(tr);
      const wanted = [];
      const next = new Map();
      const columns = this.columns;
      for (let i = first; i < last; i++) {
        const row = this.rows[i];
        const key = keys[i - first];
        let tr = this.shown.get(key);
        if (!tr) {
          tr = reused < spare.length ? spare[reused++] : this.newRow();
          tr.dataset.id = key;
          tr.row = null;
        }
        // A row object is replaced by each upsert: the same object drawn in this second has
        // nothing new to show (ages move once a second).
        if (tr.row !== row || tr.drawn !== clock) {
          tr.row = row;
          tr.drawn = clock;
          const cells = tr.cells;
          for (let c = 0; c < columns.length; c++) put(cells[c], columns[c].cell(row));
          if (row.status !== undefined && tr.dataset.status !== row.status) {
            tr.dataset.status = row.status;
          }
          if (this.decorate) this.decorate(tr, row);
        }
        next.set(key, tr);
        wanted.push(tr);
      }
      this.shown = next;
      this.spacers(first * ROW_HEIGHT, (total - last) * ROW_HEIGHT);
      this.place(wanted);
    }

    newRow() {
      const tr = el("tr", "");
      for (let c = 0; c < this.columns.length; c++) tr.append(document.createElement("td"));
      return tr;
    }

    // The rows to draw: those in view and OVERSCAN more on each side. When that would build
    // more new rows than the view holds (a sort, a filter, a jump), only the rows in view are
    // drawn, and those around them in the next frame: no frame builds much more than a view.
    range(total) {
      const inView = Math.max(1, Math.ceil(this.view / ROW_HEIGHT));
      const top = Math.max(0, Math.min(Math.floor(this.scrollTop / ROW_HEIGHT), total - inView));
      const end = Math.min(total, top + inView);
      const first = Math.max(0, top - OVERSCAN);
      const last = Math.min(total, end + OVERSCAN);
      if (this.fresh(first, last) <= inView || this.fresh(top, end) === 0) return [first, last];
      schedule();
      return [top, end];
    }

    // How many of the sorted rows from `from` to `to` have no <tr> yet.
    fresh(from, to) {
      let count = 0;
      for (let i = from; i < to; i++) if (!this.shown.has(this.key(this.rows[i]))) count += 1;
      return count;
    }

    spacers(top, bottom) {
      if (this.heights[0] !== top) this.top.style.height = `${top}px`;
      if (this.heights[1] !== bottom) this.bottom.style.height = `${bottom}px`;
      this.heights = [top, bottom];
    }

    // Puts `wanted` between the spacers with as few moves as possible: the longest run of rows
    // already in the right order stays, the others are inserted or moved around it (a moved or
    // re-inserted row costs its style and layout; the ones left alone cost nothing).
    place(wanted) {
      const body = this.body;
      if (body.firstChild !== this.top || body.lastChild !== this.bottom) {
        body.replaceChildren(this.top, ...wanted, this.bottom);
        return;
      }
      const index = new Map(wanted.map((tr, i) => [tr, i]));
      const present = [];
      const gone = [];
      for (let tr = this.top.nextSibling; tr !== this.bottom; tr = tr.nextSibling) {
        (index.has(tr) ? present : gone).push(tr);
      }
      if (present.length === 0) {
        if (gone.length || wanted.length) body.replaceChildren(this.top, ...wanted, this.bottom);
        return;
      }
      for (const tr of gone) tr.remove();
      const stays = longestIncreasing(present, (tr) => index.get(tr));
      let ref = this.bottom;
      for (let i = wanted.length - 1; i >= 0; i--) {
        const tr = wanted[i];
        if (!stays.has(tr) && tr.nextSibling !== ref) body.insertBefore(tr, ref);
        ref = tr;
      }
    }
  }

  // The items of `items` forming a longest run whose `rank` increases (patience sorting).
  function longestIncreasing(items, rank) {
    const tails = []; // tails[k]: index in items of the smallest tail of a run of length k + 1
    const back = new Array(items.length);
    for (let i = 0; i < items.length; i++) {
      const r = rank(items[i]);
      let lo = 0;
      let hi = tails.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (rank(items[tails[mid]]) < r) lo = mid + 1;
        else hi = mid;
      }
      back[i] = lo > 0 ? tails[lo - 1] : -1;
      tails[lo] = i;
    }
    const run = new Set();
    for (let i = tails.length ? tails[tails.length - 1] : -1; i >= 0; i = back[i]) run.add(items[i]);
    return run;
  }

  // ---- the tables --------------------------------------------------------------------------

  const byName = (w) => (w.name || w.id).toLowerCase();
  const WORKERS = new Table(
    "workers",
    "workers",
    [
      {
        key: "name",
        label: "Name",
        sort: byName,
        cell: (w) => ({
          text: w.name || w.id,
          cls: "name",
          small: w.name && w.name !== w.id ? w.id : "",
        }),
      },
      { key: "status", label: "Status", sort: (w) => w.status, cell: (w) => status(w.status, w.draining) },
      {
        key: "instance",
        label: "Instance",
        shown: several,
        sort: (w) => w.instance || "",
        cell: (w) => text(w.instance || "–"),
      },
      {
        key: "load",
        label: "In flight",
        numeric: true,
        sort: (w) => w.inflight / Math.max(1, w.max_concurrency),
        cell: (w) => ({
          text: `${int(w.inflight)}/${int(w.max_concurrency)}`,
          cls: "num",
          meter: [w.inflight, Math.max(1, w.max_concurrency)],
        }),
      },
      { key: "queue", label: "Queue", numeric: true, sort: (w) => w.queue_len, cell: (w) => num(int(w.queue_len)) },
      {
        key: "tokens_in",
        label: "Tokens in",
        numeric: true,
        sort: (w) => w.tokens_in_total,
        cell: (w) => num(int(w.tokens_in_total)),
      },
      {
        key: "tokens_out",
        label: "Tokens out",
        numeric: true,
        sort: (w) => w.tokens_out_total,
        cell: (w) => num(int(w.tokens_out_total)),
      },
      {
        key: "tps",
        label: "Tokens/s",
        numeric: true,
        sort: (w) => w.avg_tokens_per_second,
        cell: (w) => num(dec(w.avg_tokens_per_second)),
      },
      {
        key: "failures",
        label: "Failures",
        numeric: true,
        sort: (w) => w.failures_total,
        cell: (w) => ({ text: int(w.failures_total), cls: "num", title: w.last_error || "" }),
      },
      {
        key: "heartbeat",
        label: "Heartbeat",
        numeric: true,
        sort: (w) => Date.parse(w.last_heartbeat) || 0,
        cell: (w) => num(duration(ageSeconds(w.last_heartbeat))),
      },
      { key: "version", label: "Version", sort: (w) => w.version, cell: (w) => text(w.version) },
    ],
    {
      key: (w) => w.id,
      empty: "No connectors.",
      sortable: true,
      sortKey: "name",
      text: (w) =>
        [w.name, w.id, w.status, w.instance || "", w.version, ...(w.models_supported || [])]
          .join("\n")
          .toLowerCase(),
    },
  );

  const MODELS = new Table(
    "models",
    "models",
    [
      { key: "name", label: "Model", cell: (m) => text(m.name) },
      { key: "ready", label: "Ready/connectors", numeric: true, cell: (m) => num(`${int(m.ready_workers)}/${int(m.workers)}`) },
      { key: "queue", label: "Queue", numeric: true, cell: (m) => num(int(m.queue_len)) },
      {
        key: "waiting",
        label: "Waiting at",
        shown: several,
        cell: (m) => ({ text: waitingAt(m, WAITERS_SHOWN), title: waitingAt(m, Infinity) }),
      },
      {
        key: "wait",
        label: "Oldest wait",
        numeric: true,
        cell: (m) => num(m.queue_len && m.queued_since ? millis(ageSeconds(m.queued_since) * 1000) : "–"),
      },
      { key: "requests", label: "Requests", numeric: true, cell: (m) => num(int(m.requests_total)) },
      { key: "errors", label: "Errors", numeric: true, cell: (m) => num(int(m.error_total)) },
      { key: "tokens_in", label: "Tokens in", numeric: true, cell: (m) => num(int(m.tokens_in_total)) },
      { key: "tokens_out", label: "Tokens out", numeric: true, cell: (m) => num(int(m.tokens_out_total)) },
      { key: "ttft", label: "First byte", numeric: true, cell: (m) => num(millis(m.avg_ttft_ms)) },
      { key: "duration", label: "Duration", numeric: true, cell: (m) => num(millis(m.avg_duration_ms)) },
      { key: "tps", label: "Tokens/s", numeric: true, cell: (m) => num(dec(m.avg_tokens_per_second)) },
    ],
    { key: (m) => m.name, empty: "No models.", order: (a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0) },
  );

  // The instance of the first `most` listed waiters, in queue order ("1 east, 2 west, +3").
  function waitingAt(m, most) {
    const listed = m.waiters || [];
    if (!listed.length) return "–";
    const shown = listed.slice(0, most);
    const places = shown.map((w) => `${int(w.position)} ${w.instance || "–"}`).join(", ");
    const rest = (Number(m.waiters_more) || 0) + listed.length - shown.length;
    return rest > 0 ? `${places}, +${int(rest)}` : places;
  }

  // Relay rows carry their instance only from servers that share MCP relays across instances.
  function relayInstances() {
    if (!several()) return false;
    for (const relay of state.clients.values()) return relay.instance !== undefined;
    return false;
  }

  const CLIENTS = new Table(
    "mcp-clients",
    "clients",
    [
      { key: "name", label: "Name", cell: (c) => text(c.name || c.id) },
      { key: "id", label: "Id", cell: (c) => text(c.id) },
      { key: "status", label: "Status", cell: (c) => status(c.status, false) },
      { key: "instance", label: "Instance", shown: relayInstances, cell: (c) => text(c.instance || "–") },
      { key: "inflight", label: "In flight", numeric: true, cell: (c) => num(int(c.inflight)) },
      { key: "calls", label: "Calls", numeric: true, cell: (c) => num(int(c.calls_total)) },
      { key: "errors", label: "Errors", numeric: true, cell: (c) => num(int(c.errors_total)) },
      { key: "version", label: "Version", cell: (c) => text(c.version) },
    ],
    {
      key: (c) => c.id,
      empty: "No MCP relays.",
      text: (c) => [c.name, c.id, c.status, c.instance || "", c.version].join("\n").toLowerCase(),
    },
  );

  const SESSIONS = new Table(
    "mcp-sessions",
    "sessions",
    [
      { key: "id", label: "Session", cell: (s) => text(s.id) },
      { key: "client", label: "Relay", cell: (s) => text(s.client_id) },
      { key: "instance", label: "Instance", shown: relayInstances, cell: (s) => text(s.instance || "–") },
      { key: "method", label: "Last method", cell: (s) => text(s.method) },
      { key: "inflight", label: "In flight", numeric: true, cell: (s) => num(int(s.inflight)) },
      { key: "age", label: "Age", numeric: true, cell: (s) => num(duration(ageSeconds(s.started_at))) },
      {
        key: "idle",
        label: "Idle",
        numeric: true,
        cell: (s) => num(s.last_activity ? duration(ageSeconds(s.last_activity)) : "–"),
      },
    ],
    { key: (s) => `${s.client_id}/${s.id}`, empty: "No MCP sessions." },
  );

  const isSelf = (i) => i.id === state.server.instance;
  const INSTANCES = new Table(
    "instances",
    "instances",
    [
      { key: "id", label: "Instance", cell: (i) => ({ text: i.id, cls: "name", small: isSelf(i) ? "this page" : "" }) },
      { key: "address", label: "Address", cell: (i) => text(i.address || "–") },
      { key: "version", label: "Version", cell: (i) => text(i.version || "–") },
      {
        key: "up",
        label: "Up",
        numeric: true,
        cell: (i) => ({
          text: i.started_at ? duration(ageSeconds(i.started_at)) : "–",
          cls: "num",
          title: i.started_at ? `since ${i.started_at}` : "",
        }),
      },
      { key: "links", label: "Links", numeric: true, cell: (i) => num(int(i.links)) },
      { key: "inflight", label: "In flight", numeric: true, cell: (i) => num(int(i.inflight)) },
    ],
    {
      key: (i) => i.id,
      empty: "No instances.",
      decorate: (tr, i) => tr.toggleAttribute("data-self", isSelf(i)),
    },
  );

  const TABLES = [INSTANCES, WORKERS, MODELS, CLIENTS, SESSIONS];
  const TABLE_OF = {
    instances: INSTANCES,
    workers: WORKERS,
    models: MODELS,
    clients: CLIENTS,
    sessions: SESSIONS,
  };

  // ---- drawing: once per animation frame, from the latest state ----------------------------

  let frame = 0;
  let clock = 0; // seconds since the page started: ages are redrawn when it moves

  function schedule() {
    if (!frame) frame = requestAnimationFrame(draw);
  }

  function drawServer() {
    const server = state.server;
    const summary = state.summary || {};
    setText($("version"), server.version);
    const badge = $("server-state");
    setText(badge, server.state);
    const badgeClass = SERVER_STATES.has(server.state) ? `badge ${server.state}` : "badge";
    if (badge.className !== badgeClass) badge.className = badgeClass;
    const started = Date.parse(server.started_at);
    const uptime = Number.isNaN(started) ? server.uptime_s : (serverNow() - started) / 1000;
    setText($("uptime"), `up ${duration(uptime)}`);
    const degraded = Boolean(server.degraded);
    setHidden($("degraded"), !degraded);
    setHidden($("degraded-note"), !degraded);
    setHidden($("fleet"), state.instances.size === 0);
    setText(
      $("summary"),
      `${int(summary.connected)} connected: ${int(summary.working)} busy, ` +
        `${int(summary.idle)} idle, ${int(summary.draining)} draining, ` +
        `${int(summary.not_ready)} not ready; ${int(summary.gone)} gone. ` +
        `Requests: ${int(server.jobs_inflight_total)} in flight, ` +
        `${int(server.scheduler_queue_len)} queued, ${int(server.jobs_completed_total)} completed, ` +
        `${int(server.jobs_failed_total)} failed. MCP relays: ${int(state.clients.size)}.`,
    );
  }

  // Draws only: nothing here reads the layout, so a frame costs one style and layout pass.
  function draw() {
    frame = 0;
    if (!state.server) return;
    drawServer();
    for (const table of TABLES) table.draw();
  }

  // Ages move with the clock, not with events: redraw the visible rows once a second.
  setInterval(() => {
    clock += 1;
    schedule();
  }, 1000);
  window.addEventListener("resize", () => {
    for (const table of TABLES) table.measure();
    schedule();
  });

  // ---- the filter: connectors and relays whose name, id, status, instance, version (or a
  // model of a connector) contain the text; `/` goes to it, Escape clears it.

  const filterBox = $("filter");

  function setFilter(value) {
    const next = value.trim().toLowerCase();
    if (next === filterText) return;
    filterText = next;
    for (const table of TABLES) if (table.text) table.changed = true;
    schedule();
  }

  filterBox.addEventListener("input", () => setFilter(filterBox.value));
  filterBox.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    filterBox.value = "";
    setFilter("");
  });
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
    if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement) return;
    event.preventDefault();
    filterBox.focus();
  });

  // ---- the stream ------------------------------------------------------------------------

  function setConnection(connState, message) {
    const conn = $("conn");
    const data = conn.dataset;
    if (data.state !== connState) data.state = connState;
    if (data.lastEventId !== lastEventId) data.lastEventId = lastEventId;
    if (data.snapshots !== String(snapshots)) data.snapshots = String(snapshots);
    setText(conn, message);
  }

  async function readEvents(body, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let data = [];
    let name = "message";
    let id = "";
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
          if (data.length) onEvent(name, id, data.join("\n"));
          data = [];
          name = "message";
          id = "";
        } else if (line.startsWith("data:")) {
          data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
        } else if (line.startsWith("event:")) {
          name = line.slice(6).trim();
        } else if (line.startsWith("id:")) {
          id = line.slice(3).trim();
        }
        // `retry:` and `:` keepalive comments need no handling here.
      }
    }
  }

  function onEvent(name, id, data) {
    let doc;
    try {
      doc = JSON.parse(data);
    } catch {
      return;
    }
    if (name === "snapshot") {
      applySnapshot(doc);
      snapshots += 1;
    } else if (name === "delta") {
      applyDelta(doc);
    } else {
      return;
    }
    if (id) lastEventId = id;
    attempt = 0;
    setConnection("live", "live");
    schedule();
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
    if (lastEventId) requestHeaders["Last-Event-ID"] = lastEventId;
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

  connect();
})();
