// The runs list: a page of GET /api/runs, kept live by the /api/events stream (each event a run's
// document whenever it changes). Filters live in the URL, so a reload or a shared link keeps them.
"use strict";
(() => {
  const { h } = SP;
  const LIMIT = 50;
  const form = document.getElementById("filters");
  const tbody = document.querySelector("#runs tbody");
  const empty = document.getElementById("empty");
  const pageNote = document.getElementById("page-note");
  const olderBtn = document.getElementById("older");
  const newestBtn = document.getElementById("newest");
  const S = (window.__statepipe = { runs: new Map(), received: new Map(), cursor: null, next: null, updates: 0, loads: 0, during: null });
  let sort = { key: "created_at", dir: -1 };

  const params = new URLSearchParams(location.search);
  for (const k of ["q", "status", "workflow", "since"]) if (params.get(k)) form.elements[k].value = params.get(k);
  S.cursor = params.get("cursor");

  const filters = () => ({
    q: form.elements.q.value.trim().toLowerCase(),
    status: form.elements.status.value,
    workflow: form.elements.workflow.value.trim(),
    since: form.elements.since.value,
  });
  const SINCE = { "1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 };

  function matches(doc) {
    const f = filters();
    if (f.q && !doc.id.startsWith(f.q)) return false;
    if (f.status && doc.state !== f.status) return false;
    if (f.workflow && doc.workflow !== f.workflow) return false;
    if (f.since && Date.now() - new Date(doc.created_at).getTime() > SINCE[f.since] * 1000) return false;
    return true;
  }

  function syncUrl() {
    const f = filters();
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(f)) if (v) p.set(k, v);
    if (S.cursor) p.set("cursor", S.cursor);
    history.replaceState(null, "", p.toString() ? "?" + p : location.pathname);
  }

  async function load() {
    const f = filters();
    syncUrl();
    S.during = S.during || new Map();
    const ticket = ++S.loads;
    const p = new URLSearchParams({ limit: String(LIMIT) });
    if (f.status) p.set("status", f.status);
    if (f.workflow) p.set("workflow", f.workflow);
    if (f.since) p.set("since", f.since);
    if (S.cursor) p.set("cursor", S.cursor);
    let docs, headers;
    try {
      ({ data: docs, headers } = await SP.get("/api/runs?" + p));
      if (ticket !== S.loads) return; // a later read (other filters) is under way
    } catch (e) {
      if (ticket !== S.loads) return;
      S.during = null;
      SP.toast("could not list the runs: " + e.message, true);
      return;
    }
    S.next = headers.get("X-Next-Cursor") || null;
    const during = S.during || new Map();
    S.during = null;
    S.runs.clear();
    const now = Date.now();
    for (const d of docs) { S.runs.set(d.id, d); S.received.set(d.id, now); }
    render();
    S.ready = true;
    // what changed while the page was read: newer than what the read returned
    for (const d of during.values()) if (!S.runs.has(d.id) || S.runs.get(d.id).last_seq < d.last_seq) changed(d);
  }

  const COLS = ["state", "id", "workflow", "created_at", "duration_s", "steps_done", "cost_usd", "tokens"];
  function liveDuration(d) {
    if (d.state !== "running" || !d.owner) return d.duration_s;
    return (d.duration_s || 0) + (Date.now() - (S.received.get(d.id) || Date.now())) / 1000;
  }
  function row(d) {
    const done = d.steps_total ? Math.round((100 * d.steps_done) / d.steps_total) : 0;
    return h("tr", { "data-id": d.id },
      h("td", {}, h("span", { class: "badge st-" + d.state, text: d.state })),
      h("td", {}, h("a", { href: "/runs/" + d.id, class: "mono", title: d.id, text: d.id.slice(0, 8) })),
      h("td", { text: d.workflow }),
      h("td", { title: d.created_at, text: SP.time(d.started_at || d.created_at) }),
      h("td", { class: "num dur", text: SP.duration(liveDuration(d)) }),
      h("td", { class: "num" }, h("span", { class: "progress" }, h("i", { style: `width:${done}%` })), `${d.steps_done}/${d.steps_total}`),
      h("td", { class: "num", text: SP.cost(d.cost_usd, d.dry_run && d.cost_usd === 0) }),
      h("td", { class: "num", text: SP.tokens(d.tokens) }),
    );
  }

  function ordered() {
    const docs = [...S.runs.values()].filter(matches);
    const k = sort.key;
    docs.sort((a, b) => {
      let x = a[k], y = b[k];
      if (k === "duration_s") { x = liveDuration(a); y = liveDuration(b); }
      if (x == null && y == null) return 0;
      if (x == null) return 1;
      if (y == null) return -1;
      return (x < y ? -1 : x > y ? 1 : 0) * sort.dir;
    });
    return docs;
  }

  function render() {
    const docs = ordered();
    tbody.replaceChildren(...docs.map(row));
    empty.hidden = docs.length > 0;
    const f = filters();
    empty.textContent = Object.values(f).some(Boolean) ? "No runs match these filters." : "No runs yet: start one from Workflows, or `statepipe run … --detach`.";
    olderBtn.disabled = !S.next;
    newestBtn.disabled = !S.cursor;
    pageNote.textContent = docs.length ? `${docs.length} run${docs.length === 1 ? "" : "s"}${S.cursor ? " (older page)" : ""}` : "";
    document.querySelectorAll("#runs th[data-sort]").forEach((th) => {
      th.classList.toggle("sorted", th.dataset.sort === sort.key);
      th.classList.toggle("asc", th.dataset.sort === sort.key && sort.dir > 0);
      th.classList.toggle("desc", th.dataset.sort === sort.key && sort.dir < 0);
    });
  }

  // One run changed: update its row in place, or add it when it belongs on this page.
  // One run changed: its row is redrawn in place, or the table once a frame when runs came or
  // moved (a batch starting a thousand runs is a few redraws, not a thousand).
  const dirty = new Set();
  let whole = false;
  function changed(doc) {
    S.updates++;
    if (S.during) { S.during.set(doc.id, doc); return; }
    const known = S.runs.has(doc.id);
    if (!known && S.cursor) return; // an older page: new runs belong to the first one
    S.runs.set(doc.id, doc);
    S.received.set(doc.id, Date.now());
    if (!known || sort.key !== "created_at" || !matches(doc)) whole = true;
    if (dirty.size === 0) requestAnimationFrame(flush);
    dirty.add(doc.id);
  }
  function flush() {
    if (whole) render();
    for (const id of dirty) {
      const tr = tbody.querySelector(`tr[data-id="${CSS.escape(id)}"]`);
      if (!tr) continue;
      const fresh = whole ? tr : row(S.runs.get(id));
      fresh.classList.add("flash");
      if (fresh !== tr) tr.replaceWith(fresh);
    }
    dirty.clear();
    whole = false;
  }

  let stream = null;
  function follow() {
    stream = new EventSource("/api/events");
    let dropped = false;
    stream.addEventListener("run", (m) => changed(JSON.parse(m.data)));
    stream.onopen = () => {
      SP.setConn("live");
      if (dropped) { dropped = false; load(); } // not resumable: read the page again
    };
    stream.onerror = () => {
      dropped = true;
      SP.setConn("reconnecting");
      if (stream && stream.readyState === EventSource.CLOSED) { stream = null; setTimeout(() => { if (!stream) follow(); }, 2000); }
    };
  }

  window.addEventListener("offline", () => { if (stream) { stream.close(); stream = null; } SP.setConn("reconnecting", "offline"); });
  window.addEventListener("online", () => { if (!stream) { follow(); load(); } });

  setInterval(() => {
    for (const tr of tbody.querySelectorAll("tr")) {
      const d = S.runs.get(tr.dataset.id);
      if (d && d.state === "running" && d.owner) tr.querySelector(".dur").textContent = SP.duration(liveDuration(d));
    }
  }, 1000);

  document.querySelectorAll("#runs th[data-sort]").forEach((th) =>
    th.addEventListener("click", () => {
      const k = th.dataset.sort;
      sort = { key: k, dir: sort.key === k ? -sort.dir : ["id", "workflow", "state"].includes(k) ? 1 : -1 };
      render();
    }));

  form.addEventListener("change", (e) => {
    if (e.target.name === "q") return;
    S.cursor = null;
    load();
  });
  form.elements.q.addEventListener("input", () => { syncUrl(); render(); });
  // Enter in the id box opens the run: the one shown, else whichever run the server knows by that prefix
  form.addEventListener("submit", (e) => e.preventDefault());
  form.elements.q.addEventListener("keydown", async (e) => {
    if (e.key !== "Enter") return;
    e.preventDefault();
    const q = filters().q;
    if (!q) return;
    const shown = ordered();
    if (shown.length === 1) { location.href = "/runs/" + shown[0].id; return; }
    if (shown.length) return;
    try {  // not on this page: the server knows every run by a unique prefix
      const { data } = await SP.get("/api/runs/" + encodeURIComponent(q));
      location.href = "/runs/" + data.run.id;
    } catch (err) {
      SP.toast(err.message, true);
    }
  });
  olderBtn.addEventListener("click", () => { if (S.next) { S.cursor = S.next; load(); } });
  newestBtn.addEventListener("click", () => { S.cursor = null; load(); });

  SP.get("/api/workflows").then(({ data }) => {
    const list = document.getElementById("workflow-names");
    list.replaceChildren(...data.map((w) => h("option", { value: w.name })));
  }).catch(() => {});

  follow();
  load();
})();
