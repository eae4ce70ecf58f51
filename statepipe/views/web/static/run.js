// The run page. Its data comes in the page (the run, its steps, fan-outs as counts); then it
// follows GET /api/runs/{id}/events from the seq that data was read at. Every event is taken
// once (a Set of seqs), so reconnecting after a lost network (EventSource sends Last-Event-ID;
// a closed stream is reopened with ?after=<last seq>) fills in what was missed, no duplicates.
// State events patch the page at once and ask for the run's data again shortly after (the store
// is the truth; the patch is only for speed). Streamed text is kept per step, item and attempt;
// a step opened mid-run first reads what it streamed before (GET /runs/{id}/trace).
"use strict";
(() => {
  const { h } = SP;
  let model = JSON.parse(document.getElementById("model").textContent);
  const RUN = model.run.id;
  const FINISHED = ["succeeded", "failed", "cancelled"];
  const S = (window.__statepipe = {
    run: RUN, after: model.run.last_seq, last: model.run.last_seq, seqs: [], dupes: 0,
    ended: false, endState: null, connects: 0, refreshes: 0,
  });
  const seen = new Set();
  const ROW_H = 26, PAGE = 100, VISIBLE = 14;

  // -- streamed output, per step + item + attempt ----------------------------------------------
  const traces = new Map();
  const keyOf = (step, item) => step + "\u0000" + (item == null ? "" : item);
  function trace(k) {
    let t = traces.get(k);
    if (!t) traces.set(k, (t = { seen: new Set(), attempts: new Map(), partials: [], fetched: false, v: 0 }));
    return t;
  }
  function attemptOf(t, n) {
    let a = t.attempts.get(n || 0);
    if (!a) t.attempts.set(n || 0, (a = { chunks: [], abandoned: null, reordered: false }));
    return a;
  }
  function insert(list, entry, onReorder) {
    if (!list.length || list[list.length - 1][0] < entry[0]) return list.push(entry);
    const i = list.findIndex((x) => x[0] > entry[0]);
    list.splice(i < 0 ? list.length : i, 0, entry);
    if (onReorder) onReorder();
  }
  function record(e) {
    const t = trace(keyOf(e.step, e.item));
    if (t.seen.has(e.seq)) return;
    t.seen.add(e.seq);
    if (e.type === "output") {
      const a = attemptOf(t, e.attempt);
      insert(a.chunks, [e.seq, String(e.data.text ?? "")], () => (a.reordered = true));
    } else if (e.type === "partial") {
      insert(t.partials, [e.seq, e.attempt, e.data.value]);
    } else if (e.type === "attempt_abandoned") {
      attemptOf(t, e.attempt).abandoned = e.data.retrying ? "abandoned: " + (e.data.reason || "retrying") : "abandoned: " + (e.data.reason || "its process stopped");
    } else return;
    t.v++;
    if (selected && keyOf(selected.step, selected.item) === keyOf(e.step, e.item)) later(drawStream);
  }

  // -- the model: steps by name, fan-out groups, patches from events --------------------------
  let byName = new Map();
  const groups = new Map();
  function index() {
    byName = new Map(model.steps.map((s) => [s.name, s]));
    for (const s of model.steps) if (s.fanout && !groups.has(s.name)) groups.set(s.name, makeGroup(s.name));
  }
  const STEP_STATE = {
    step_started: "running", step_succeeded: "succeeded", step_failed: "failed", step_retrying: "waiting",
    attempt_abandoned: "pending", step_skipped: "skipped", step_cancelled: "cancelled", step_reset: "pending",
    step_invalidated: "pending", step_cached: "succeeded",
  };
  const RUN_STATE = { run_started: "running", run_resumed: "running", run_succeeded: "succeeded", run_failed: "failed", run_cancelled: "cancelled", run_paused: "paused" };
  function patchStep(doc, e, state) {
    doc.state = state;
    if (e.type === "step_started") {
      doc.attempt = e.attempt;
      doc.started_at = e.ts;
      doc.finished_at = null;
      doc.error = null;
      if (!(doc.attempts || []).some((a) => a.number === e.attempt))
        doc.attempts = [...(doc.attempts || []), { number: e.attempt, state: "running", started_at: e.ts, finished_at: null, usage: null,
          error: null, worker: e.data.worker || null }];
    } else if (["succeeded", "failed", "waiting", "cancelled"].includes(state)) {
      doc.finished_at = e.ts;
      if (e.data.error) doc.error = e.data.error;
      const a = (doc.attempts || []).find((x) => x.number === e.attempt);
      if (a && a.state === "running") { a.state = state === "waiting" ? "failed" : state; a.finished_at = e.ts; a.error = e.data.error || null; }
    }
  }
  function onEvent(e) {
    if (seen.has(e.seq)) { S.dupes++; return; }
    seen.add(e.seq);
    S.seqs.push(e.seq);
    if (e.seq > S.last) S.last = e.seq;
    record(e);
    const state = STEP_STATE[e.type];
    if (state && e.step) {
      if (e.item == null) {
        const doc = byName.get(e.step);
        if (doc) patchStep(doc, e, state);
      } else {
        const g = groups.get(e.step);
        const doc = g && g.byItem.get(e.item);
        if (doc) patchStep(doc, e, state);
        if (g) later(() => drawGroup(g));
      }
      later(drawAll);
      refreshSoon();
    } else if (RUN_STATE[e.type]) {
      model.run.state = RUN_STATE[e.type];
      if (e.type === "run_resumed" || e.type === "run_started") hideBanner();
      later(drawAll);
      refreshSoon();
    } else if (e.type !== "output" && e.type !== "partial" && e.type !== "progress") {
      refreshSoon();
    }
  }

  // -- following the run's events -------------------------------------------------------------
  let es = null, retry = 1000;
  function connect() {
    if (es) es.close();
    S.connects++;
    es = new EventSource(`/api/runs/${encodeURIComponent(RUN)}/events?after=${S.last}`);
    es.onopen = () => { retry = 1000; SP.setConn("live"); };
    es.onmessage = (m) => onEvent(JSON.parse(m.data));
    es.addEventListener("interrupted", (m) => {
      model.run.state = "interrupted";
      showInterrupted(JSON.parse(m.data));
      later(drawAll);
      refreshSoon(0);
    });
    es.addEventListener("end", (m) => {
      es.close();
      es = null;
      S.ended = true;
      S.endState = JSON.parse(m.data).state;
      SP.setConn("ended", "run " + S.endState);
      if (S.seqs.length) refreshSoon(0); // else the page's data already shows the end
    });
    es.onerror = () => {
      if (S.ended) return;
      SP.setConn("reconnecting");
      // EventSource retries by itself (with Last-Event-ID) unless it gave up: then reopen it
      if (es && es.readyState === EventSource.CLOSED) {
        es = null;
        setTimeout(() => { if (!es && !S.ended) connect(); }, retry);
        retry = Math.min(retry * 2, 10000);
      }
    };
  }
  // after a control action, or a refresh that finds an ended run reopened
  function follow() {
    if (S.ended || !es) { S.ended = false; connect(); }
  }
  // Offline, a stream can hang for minutes before it errors: drop it now and reopen it, from the
  // last seq seen, when the browser is back online.
  window.addEventListener("offline", () => {
    if (es) { es.close(); es = null; }
    if (!S.ended) SP.setConn("reconnecting", "offline");
  });
  window.addEventListener("online", () => { if (!S.ended && (!es || es.readyState !== EventSource.OPEN)) connect(); });

  let refreshTimer = null, refreshing = false, again = false, lastRefresh = 0;
  function refreshSoon(delay = 200) {
    if (refreshTimer) return;
    const big = model.steps.some((s) => s.children && s.children.total > 1000);
    const wait = Math.max(delay, lastRefresh + (big ? 2000 : 500) - Date.now());
    refreshTimer = setTimeout(refresh, wait);
  }
  async function refresh() {
    refreshTimer = null;
    if (refreshing) { again = true; return; }
    refreshing = true;
    lastRefresh = Date.now();
    try {
      const { data } = await SP.get(`/runs/${encodeURIComponent(RUN)}/view`);
      model = data;
      loadedAt = Date.now();
      S.refreshes++;
      index();
      for (const g of groups.values()) if (g.open) invalidate(g);
      drawAll();
      if (S.ended && !FINISHED.includes(model.run.state) && model.run.last_seq > S.last) follow();
    } catch (e) {
      /* offline: the next event or reconnect asks again */
    } finally {
      refreshing = false;
      if (again) { again = false; refreshSoon(); }
    }
  }

  // -- drawing --------------------------------------------------------------------------------
  const queued = new Set();
  function later(fn) {
    if (queued.has(fn)) return;
    queued.add(fn);
    if (queued.size === 1) requestAnimationFrame(() => { const fns = [...queued]; queued.clear(); fns.forEach((f) => f()); });
  }
  const ms = (iso) => (iso ? new Date(iso).getTime() : null);
  function span() {
    const r = model.run;
    const t0 = ms(r.started_at) || ms(r.created_at);
    let t1 = ms(r.finished_at);
    if (!t1 || !FINISHED.includes(r.state)) t1 = Date.now();
    for (const s of model.steps) t1 = Math.max(t1, ms(s.finished_at) || 0);
    return [t0, Math.max(t1, t0 + 1)];
  }
  function gantt(doc, scale) {
    const [t0, t1] = scale;
    const bar = h("div", { class: "gantt" });
    const current = doc.attempt;
    for (const a of doc.attempts || []) {
      const a0 = ms(a.started_at), a1 = ms(a.finished_at) || (a.state === "running" ? Date.now() : a0);
      if (!a0) continue;
      const left = (100 * (a0 - t0)) / (t1 - t0), width = (100 * (a1 - a0)) / (t1 - t0);
      bar.append(h("i", {
        class: `st-${a.state}${a.number !== current ? " old" : ""}`,
        style: `left:${Math.max(0, left).toFixed(2)}%;width:${Math.max(0.3, width).toFixed(2)}%`,
        title: `#${a.number} ${a.state} ${SP.time(a.started_at)}–${SP.time(a.finished_at)} ${SP.duration(a.duration_s)}` +
          (a.worker ? ` on ${a.worker}` : ""),
      }));
    }
    return bar;
  }
  function stepDuration(doc) {
    if (doc.duration_s != null) return doc.duration_s;
    if (doc.state === "running" && doc.started_at) return (Date.now() - ms(doc.started_at)) / 1000;
    return null;
  }
  function cells(doc, scale, label, twisty) {
    const attempts = doc.attempts || [];
    return [
      h("span", { class: "name", title: label }, twisty || h("span", { class: "twisty" }), label),
      h("span", {}, h("span", { class: "badge st-" + doc.state, text: doc.state })),
      h("span", { class: "num", title: `${attempts.length} attempt(s)`, text: doc.attempt ? "#" + doc.attempt : "" }),
      h("span", { class: "num", text: SP.duration(stepDuration(doc)) }),
      h("span", { class: "usage", text: SP.usage(attempts) }),
      gantt(doc, scale),
    ];
  }
  const isSel = (step, item) => selected && selected.step === step && (selected.item ?? null) === (item ?? null);

  const stepsEl = document.getElementById("steps");
  let rows = new Map(), names = "";
  function drawSteps() {
    const scale = span();
    const want = model.steps.map((s) => s.name).join("\n") + "|" + model.compensations.length;
    if (want !== names) {  // the steps themselves changed (a new run page, a rerun with new code)
      names = want;
      rows = new Map();
      const kids = [h("div", { class: "srow head" }, h("span", { text: "step" }), h("span", { text: "state" }), h("span", { class: "num", text: "try" }), h("span", { class: "num", text: "time" }), h("span", { text: "tokens · cost" }), h("span", { text: "timeline" }))];
      for (const s of model.steps) {
        const row = h("div", { class: "srow", role: "treeitem", tabindex: "0", "data-step": s.name });
        const err = h("div", { class: "err" });
        row.addEventListener("click", () => select(s.name, null));
        rows.set(s.name, { row, err });
        kids.push(row, err);
        if (s.fanout) kids.push(groups.get(s.name).el);
      }
      for (const c of model.compensations) {
        const row = h("div", { class: "srow", "data-step": c.name });
        row.addEventListener("click", () => select(c.name, c.item));
        rows.set("\u0001" + c.name + "\u0000" + (c.item || ""), { row, err: h("div", { class: "err" }) });
        kids.push(row);
      }
      stepsEl.replaceChildren(...kids);
    }
    for (const s of model.steps) {
      const { row, err } = rows.get(s.name);
      const g = s.fanout ? groups.get(s.name) : null;
      const twisty = g ? h("span", { class: "twisty", text: g.open ? "▾" : "▸", title: "children", onclick: (ev) => { ev.stopPropagation(); toggleGroup(g); } }) : null;
      const label = g ? `${s.name} (${(s.children?.total ?? 0).toLocaleString("en-US")})` : s.name;
      row.replaceChildren(...cells(s, scale, label, twisty));
      row.classList.toggle("selected", isSel(s.name, null));
      err.hidden = !(s.error && s.state !== "succeeded");
      err.textContent = s.error || "";
      if (g) { g.counts = s.children?.counts || {}; g.all = s.children?.total || 0; drawChips(g); if (g.open) drawGroup(g); }
    }
    for (const c of model.compensations) {
      const { row } = rows.get("\u0001" + c.name + "\u0000" + (c.item || ""));
      row.replaceChildren(...cells(c, scale, `undo ${c.compensates}${c.item ? " · " + c.item : ""}`));
    }
  }

  // A fan-out's children: a scrolled window of fixed-height rows over pages fetched on demand.
  function makeGroup(step) {
    const g = { step, open: false, filter: "", pages: new Map(), stale: new Map(), byItem: new Map(), loading: new Set(), rows: new Map(), total: 0, all: 0, counts: {}, gen: 0 };
    g.chips = h("div", { class: "chips" });
    g.spacer = h("div", { class: "spacer" });
    g.spacer.addEventListener("click", (e) => {
      const row = e.target.closest(".srow");
      if (row && row.dataset.item != null) select(g.step, row.dataset.item);
    });
    g.list = h("div", { class: "vlist" }, g.spacer);
    g.el = h("div", { class: "fanout", hidden: true }, g.chips, g.list);
    g.list.addEventListener("scroll", () => later(() => drawGroup(g)));
    return g;
  }
  function toggleGroup(g) {
    g.open = !g.open;
    g.el.hidden = !g.open;
    if (g.open) invalidate(g);
    drawSteps();
  }
  function invalidate(g) {
    g.gen++;
    g.stale = new Map([...g.stale, ...g.pages]);
    g.pages = new Map();
    g.loading.clear();
    drawGroup(g);
  }
  function drawChips(g) {
    const chip = (state, n) => h("button", { type: "button", class: "chip" + (g.filter === state ? " on" : ""), onclick: () => { g.filter = state; g.stale = new Map(); g.list.scrollTop = 0; invalidate(g); drawChips(g); } },
      state ? h("span", { class: "badge st-" + state, text: state }) : "all", " " + n.toLocaleString("en-US"));
    g.chips.replaceChildren(chip("", g.all), ...Object.entries(g.counts).sort().map(([s, n]) => chip(s, n)));
  }
  // Rows stay the same elements while they show the same child (a click is not lost to a
  // redraw); only what changed in one is drawn again.
  function drawGroup(g) {
    if (!g.open) return;
    const total = g.filter ? g.counts[g.filter] || 0 : g.all;
    g.total = total;
    g.list.style.height = Math.max(1, Math.min(total, VISIBLE)) * ROW_H + 2 + "px";
    g.spacer.style.height = total * ROW_H + "px";
    const first = Math.max(0, Math.floor(g.list.scrollTop / ROW_H) - 2);
    const last = Math.min(total, first + VISIBLE + 5);
    const scale = span();
    const tick = Math.round(scale[1] / 1000);
    const keep = new Set();
    for (let i = first; i < last; i++) {
      const p = Math.floor(i / PAGE);
      if (!g.pages.has(p)) loadPage(g, p);
      const page = g.pages.get(p) || g.stale.get(p);
      const doc = page && page[i - p * PAGE];
      let r = g.rows.get(i);
      if (!r) {
        r = { el: h("div", { class: "srow child", style: `top:${i * ROW_H}px` }), sig: null };
        g.rows.set(i, r);
        g.spacer.append(r.el);
      }
      keep.add(i);
      const sel = doc ? isSel(g.step, doc.item) : false;
      const sig = doc ? JSON.stringify([doc, sel, tick, scale[0]]) : "";
      if (sig === r.sig) continue;
      r.sig = sig;
      if (doc) {
        r.el.replaceChildren(...cells(doc, scale, `${doc.item}`));
        r.el.dataset.item = doc.item;
        r.el.title = doc.error || "";
        r.el.classList.toggle("selected", sel);
      } else {
        r.el.replaceChildren(h("span", { class: "name hint", text: "…" }));
        delete r.el.dataset.item;
      }
    }
    for (const [i, r] of g.rows) if (!keep.has(i)) { r.el.remove(); g.rows.delete(i); }
  }
  async function loadPage(g, p) {
    if (g.loading.has(p)) return;
    g.loading.add(p);
    const gen = g.gen;
    const q = new URLSearchParams({ step: g.step, offset: String(p * PAGE), limit: String(PAGE) });
    if (g.filter) q.set("state", g.filter);
    try {
      const { data } = await SP.get(`/runs/${encodeURIComponent(RUN)}/children?${q}`);
      if (gen !== g.gen) return;
      g.pages.set(p, data.rows);
      g.stale.delete(p);
      for (const d of data.rows) g.byItem.set(d.item, d);
      g.counts = data.counts;
      drawChips(g);
      drawGroup(g);
      if (selected && selected.step === g.step && data.rows.some((d) => d.item === selected.item)) later(drawDetail);
    } catch (e) {
      /* shown as "…" until the next refresh */
    } finally {
      if (gen === g.gen) g.loading.delete(p);
    }
  }

  // -- the header -----------------------------------------------------------------------------
  const facts = document.getElementById("facts");
  function runDuration(r) {
    if (r.state === "running" && r.started_at && r.owner) return Math.max(r.duration_s || 0, 0) + (Date.now() - loadedAt) / 1000;
    return r.duration_s;
  }
  let loadedAt = Date.now();
  function drawHead() {
    const r = model.run;
    const badge = document.getElementById("run-state");
    badge.className = "badge st-" + r.state;
    badge.textContent = r.state;
    const fact = (k, v, title) => (v === "" || v == null ? null : h("div", { title }, h("dt", { text: k }), h("dd", {}, v)));
    facts.replaceChildren(...[
      fact("created", SP.time(r.created_at), r.created_at),
      fact("started", SP.time(r.started_at), r.started_at),
      fact("finished", SP.time(r.finished_at), r.finished_at),
      fact("duration", SP.duration(runDuration(r))),
      fact("steps", `${r.steps_done}/${r.steps_total}`),
      fact("cost", SP.cost(r.cost_usd, r.dry_run && r.cost_usd === 0)),
      fact("tokens", SP.tokens(r.tokens)),
      fact("events", String(Math.max(S.last, r.last_seq))),
      r.forked_from ? fact("forked from", h("a", { href: "/runs/" + r.forked_from, text: r.forked_from.slice(0, 8) })) : null,
      r.batch_id ? fact("batch", r.batch_id) : null,
      model.forks.length ? fact("forks", model.forks.map((f) => h("a", { href: "/runs/" + f, text: f.slice(0, 8) + " " }))) : null,
      r.dry_run ? fact("mode", "dry run") : null,
    ].filter(Boolean));
    const errBox = document.getElementById("run-error");
    errBox.hidden = !r.error;
    errBox.textContent = r.error || "";
    if (r.state === "interrupted") showInterrupted(r); else hideBanner();
    const st = r.state;
    const can = {
      pause: ["running", "pending"].includes(st),
      resume: ["paused", "interrupted", "failed", "cancelled"].includes(st),
      cancel: ["running", "pending", "paused", "interrupted"].includes(st),
      rerun: !["running", "pending"].includes(st),
    };
    for (const b of document.querySelectorAll("#actions button[data-act]")) b.disabled = busy || !can[b.dataset.act];
    const sel = document.getElementById("rerun-step");
    const want = model.steps.map((s) => s.name);
    if ([...sel.options].map((o) => o.value).join("\n") !== want.join("\n")) {
      const keep = sel.value;
      sel.replaceChildren(...want.map((n) => h("option", { value: n, text: n })));
      if (want.includes(keep)) sel.value = keep;
    }
  }
  const banner = document.getElementById("banner");
  function showInterrupted(r) {
    banner.hidden = false;
    banner.replaceChildren(
      h("strong", { text: "interrupted" }),
      h("span", { text: `nobody executes this run${r.interrupted_at ? " since " + SP.time(r.interrupted_at) : ""}; resume it to continue from its last completed step.` }),
      h("button", { type: "button", onclick: () => act("resume") }, "Resume"),
    );
  }
  function hideBanner() { banner.hidden = true; }

  let shownInput = null, shownResult = null;
  function drawValues() {
    const i = JSON.stringify(model.run.input), r = JSON.stringify(model.run.result);
    if (i !== shownInput) { shownInput = i; document.getElementById("input").replaceChildren(SP.json(model.run.input, 2)); }
    if (r !== shownResult) {
      shownResult = r;
      const box = document.getElementById("result");
      box.replaceChildren(model.run.result == null && !FINISHED.includes(model.run.state) ? h("p", { class: "hint", text: "not yet: the run has not finished" }) : SP.json(model.run.result, 2));
    }
  }

  function drawDag() {
    for (const n of document.querySelectorAll("#dag .dag-node")) {
      const s = byName.get(n.dataset.step);
      n.setAttribute("class", `dag-node st-${s ? s.state : "none"}${isSel(n.dataset.step, null) ? " selected" : ""}`);
    }
  }

  // -- the selected step ----------------------------------------------------------------------
  let selected = null;
  const detail = document.getElementById("detail");
  function select(step, item) {
    selected = { step, item: item ?? null };
    history.replaceState(null, "", "#" + new URLSearchParams(item == null ? { step } : { step, item }));
    drawAll();
    const t = trace(keyOf(step, item));
    if (!t.fetched) {
      t.fetched = true;
      const q = new URLSearchParams({ step, item: item ?? "" });
      SP.get(`/runs/${encodeURIComponent(RUN)}/trace?${q}`).then(({ data }) => { data.forEach(record); later(drawStream); }).catch(() => { t.fetched = false; });
    }
  }
  function selectedDoc() {
    if (!selected) return null;
    if (selected.item == null) return byName.get(selected.step) || model.compensations.find((c) => c.name === selected.step && !c.item) || null;
    const g = groups.get(selected.step);
    return (g && g.byItem.get(selected.item)) || model.compensations.find((c) => c.name === selected.step && c.item === selected.item) || null;
  }
  // An attempt's state as stored, except an output a later attempt replaced: invalidated.
  function attemptLabel(doc, a) {
    if (a.state === "succeeded" && a.number !== doc.attempt) return ["invalidated", "a later attempt replaced this output"];
    return [a.state, ""];
  }
  let streamEls = new Map(), drawn = null;
  // Rebuilt only when what it shows changed, so an open traceback stays open while other steps move.
  function drawDetail() {
    if (!selected) return;
    const doc = selectedDoc();
    const k = keyOf(selected.step, selected.item);
    const t = trace(k);
    const sig = JSON.stringify([k, doc, [...t.attempts.entries()].map(([n, a]) => [n, a.abandoned])]);
    if (sig === drawn) return;
    drawn = sig;
    streamEls = new Map();
    const title = selected.item == null ? selected.step : `${selected.step} · ${selected.item}`;
    if (!doc) {
      detail.replaceChildren(h("h2", { text: "Step" }), h("h3", { text: title }), h("p", { class: "hint", text: "loading…" }));
      if (selected.item != null) findChild(selected.step, selected.item);
      return;
    }
    const kids = [h("h2", { text: selected.item == null ? "Step" : "Fan-out child" }),
      h("h3", {}, title, h("span", { class: "badge st-" + doc.state, text: doc.state }))];
    const meta = [doc.attempt ? `attempt ${doc.attempt}` : "", SP.duration(stepDuration(doc)), SP.usage(doc.attempts), doc.started_at ? "started " + SP.time(doc.started_at) : "", doc.finished_at ? "finished " + SP.time(doc.finished_at) : ""].filter(Boolean);
    kids.push(h("div", { class: "hint", text: meta.join(" · ") }));
    if (doc.next_attempt_at && doc.state === "waiting") kids.push(h("div", { class: "hint", text: "next attempt at " + SP.time(doc.next_attempt_at) }));
    if (doc.error && doc.state !== "succeeded") kids.push(h("div", { class: "error-box", text: doc.error }));
    if (doc.waiting_for && doc.state === "waiting") kids.push(inputForm(doc.waiting_for));
    if (doc.feedback) kids.push(h("div", { class: "sub", text: "feedback" }), h("div", { text: doc.feedback }));
    if (doc.overrides) kids.push(h("div", { class: "sub", text: "overrides" }), SP.json(doc.overrides, 1));
    // attempts, each with its streamed text; a retry's attempt may stream before the data says it exists
    const numbers = new Set([...(doc.attempts || []).map((a) => a.number), ...[...t.attempts.keys()].filter((n) => n > 0)]);
    const list = [...numbers].sort((a, b) => a - b).map((n) => (doc.attempts || []).find((a) => a.number === n) || { number: n, state: n === doc.attempt ? doc.state : "running" });
    const box = h("div", { class: "attempts" });
    kids.push(h("div", { class: "sub", text: `attempts (${list.length})` }), box);
    for (const a of list) {
      const [label, why] = attemptLabel(doc, a);
      const old = a.number !== doc.attempt;
      const card = h("div", { class: "attempt" + (old ? " old" : ""), "data-attempt": a.number },
        h("div", { class: "meta" },
          h("strong", { text: "#" + a.number }),
          h("span", { class: "badge st-" + label, title: why, text: label }),
          h("span", { class: "dim", text: [SP.time(a.started_at), a.duration_s != null ? SP.duration(a.duration_s) : "", SP.usage([a])].filter(Boolean).join(" · ") }),
          a.cached_from ? h("span", { class: "dim", text: `from ${String(a.cached_from.run_id || "").slice(0, 8)} ${a.cached_from.step || ""} #${a.cached_from.number || ""}` }) : null));
      if (a.error) card.append(h("div", { class: "error", text: a.error }));
      if (a.traceback) card.append(h("details", {}, h("summary", { text: "traceback" }), h("pre", { class: "traceback", text: a.traceback })));
      const ta = t.attempts.get(a.number);
      if (ta && ta.chunks.length) {
        // a retried attempt's text is not the step's reply: kept, marked, out of the way
        const dropped = ta.abandoned || ["failed", "abandoned", "cancelled"].includes(a.state);
        const pre = h("pre", { class: "stream" + (dropped ? " abandoned" : "") + (a.state === "running" ? " live" : ""), title: ta.abandoned || "" });
        streamEls.set(a.number, { pre, shown: 0 });
        const what = "streamed output of this attempt" + (dropped ? " (abandoned)" : "");
        card.append(old || dropped ? h("details", {}, h("summary", { text: what }), pre) : pre);
      } else if (a.state === "running") {
        const pre = h("pre", { class: "stream live" });
        streamEls.set(a.number, { pre, shown: 0 });
        card.append(pre);
      }
      box.append(card);
    }
    const partials = h("div", { class: "partials" });
    kids.push(partials);
    streamEls.set("partials", { el: partials, shown: -1 });
    if (doc.output != null) kids.push(h("div", { class: "sub", text: "output" }), h("div", { class: "json-box" }, SP.json(doc.output, 2)));
    detail.replaceChildren(...kids);
    drawStream();
  }
  // Only what was streamed since the last frame is added, so a long reply grows token by token
  // without being rebuilt.
  function drawStream() {
    if (!selected) return;
    const t = trace(keyOf(selected.step, selected.item));
    for (const [n, a] of t.attempts) {
      if (!(n > 0)) continue;
      const el = streamEls.get(n);
      if (!el) { if (!streamEls.size) return; later(drawDetail); return; }
      if (a.reordered || el.shown > a.chunks.length) {
        a.reordered = false;
        el.pre.textContent = a.chunks.map((c) => c[1]).join("");
      } else if (el.shown < a.chunks.length) {
        el.pre.append(a.chunks.slice(el.shown).map((c) => c[1]).join(""));
      } else continue;
      el.shown = a.chunks.length;
      el.pre.scrollTop = el.pre.scrollHeight;
    }
    const p = streamEls.get("partials");
    if (p && p.shown !== t.partials.length) {
      p.shown = t.partials.length;
      const last = t.partials.slice(-20);
      p.el.replaceChildren(...(last.length ? [h("div", { class: "sub", text: `partial objects (${t.partials.length}${t.partials.length > 20 ? ", the last 20" : ""})` })] : []),
        ...last.map(([seq, n, v]) => h("div", { class: "json-box", title: `attempt ${n}, event ${seq}` }, SP.json(v, 1))));
    }
  }
  async function findChild(step, item) {
    const g = groups.get(step);
    if (!g || g.finding === item) return;
    g.finding = item;
    try {
      const { data } = await SP.get(`/runs/${encodeURIComponent(RUN)}/children?${new URLSearchParams({ step, item })}`);
      for (const d of data.rows) g.byItem.set(d.item, d);
      later(drawDetail);
    } catch (e) { /* not a child of this run */ }
  }

  function drawAll() {
    drawHead();
    drawSteps();
    drawDag();
    drawValues();
    drawDetail();
  }

  // -- actions --------------------------------------------------------------------------------
  let busy = false;
  async function act(what, body) {
    const url = `/api/runs/${encodeURIComponent(RUN)}/${what}`;
    if (what === "cancel") body = { compensate: document.getElementById("compensate").checked };
    if (what === "pause") body = { now: false };
    if (what === "rerun") body = { from: [document.getElementById("rerun-step").value] };
    if (what === "cancel" && !confirm("Cancel this run?")) return null;
    busy = true;
    drawHead();
    const r = await SP.post(url, body || {});
    busy = false;
    if (!r.ok) SP.toast(`${what}: ${r.data.error || "HTTP " + r.status}`, true);
    else {
      const rerun = r.data.plan && r.data.plan.rerun;
      const moved = r.data.before && r.data.after && r.data.before !== r.data.after ? `${r.data.before} → ${r.data.after}` : "";
      const said = [moved, r.data.note].filter(Boolean).join("; ") || "done";
      SP.toast(rerun ? "re-running " + rerun.join(", ") : `${what}: ${said}`);
      follow();
    }
    refreshSoon(0);
    return r;
  }
  for (const b of document.querySelectorAll("#actions button[data-act]")) b.addEventListener("click", () => act(b.dataset.act));

  // a step waiting in ctx.wait_for: the value a person sends (POST /api/runs/{id}/signals/{name})
  function inputForm(wait) {
    const props = (wait.schema && wait.schema.properties) || {};
    const skeleton = Object.fromEntries(Object.keys(props).map((k) => [k, props[k].type === "boolean" ? true : props[k].type === "string" ? "" : null]));
    const area = h("textarea", { rows: 4, "aria-label": "value for " + wait.name });
    area.value = JSON.stringify(skeleton, null, 1);
    const button = h("button", { type: "submit", text: "Send" });
    const form = h("form", { class: "stack", id: "send-input" },
      h("div", { class: "sub", text: `waits for input "${wait.name}"` + (wait.deadline ? " until " + SP.time(wait.deadline) : "") }),
      area, button);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      let value;
      try { value = JSON.parse(area.value); } catch (e) { SP.toast("not JSON: " + e.message, true); return; }
      const r = await SP.post(`/api/runs/${encodeURIComponent(RUN)}/signals/${encodeURIComponent(wait.name)}`, { value });
      if (!r.ok) { SP.toast("send: " + (r.data.error || "HTTP " + r.status), true); return; }
      SP.toast(r.data.note || "sent");
    });
    return form;
  }

  const fb = document.getElementById("feedback");
  const plan = document.getElementById("plan");
  fb.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = fb.elements.text.value.trim();
    if (!text) return;
    const btn = fb.querySelector("button");
    btn.disabled = true;
    plan.hidden = false;
    plan.replaceChildren(h("p", { class: "hint", text: "asking the classifier which steps this concerns…" }));
    const chosen = fb.elements.steps.value;
    const ask = { text, dry_run: !!model.run.dry_run, ...(chosen ? { steps: [chosen] } : {}) };
    const r = await SP.post(`/api/runs/${encodeURIComponent(RUN)}/feedback`, { ...ask, apply: false });
    btn.disabled = false;
    if (!r.ok) {
      plan.replaceChildren(h("div", {}, h("p", { class: "error-text", text: r.data.error || "HTTP " + r.status }),
        chosen ? null : h("p", { class: "hint", text: "Or name the step it concerns in the list beside the button: no classifier is asked then." })));
      return;
    }
    const doc = r.data || {}, p = doc.plan || {}, routing = doc.routing || {};
    const who = doc.classifier && doc.classifier.classifier;
    plan.replaceChildren(h("div", {},
      h("div", { class: "sub", text: "the plan" + (who === "--steps" ? " (the step you named)" : who ? ` (routed by ${who})` : "") }),
      h("ul", {}, ...(routing.steps || []).map((c) => h("li", {}, h("strong", { text: c.name }), c.guidance && c.guidance !== text ? ": " + c.guidance : ""))),
      routing.reason && routing.reason !== "--steps" ? h("p", { class: "hint", text: routing.reason }) : null,
      h("p", {}, "re-runs ", h("strong", { text: (p.rerun || []).join(", ") || "nothing" }),
        (p.keep || []).length ? `; keeps ${p.keep.join(", ")} (${SP.duration(p.reused_s)} of work)` : "",
        p.llm_calls ? `; about ${p.llm_calls} LLM call${p.llm_calls === 1 ? "" : "s"}` : ""),
      h("div", { class: "bar" },
        h("button", { type: "button", class: "primary", onclick: async (ev) => {
          ev.target.disabled = true;
          const done = await SP.post(`/api/runs/${encodeURIComponent(RUN)}/feedback`, { ...ask, apply: true });
          ev.target.disabled = false;
          if (!done.ok) { SP.toast("feedback: " + (done.data.error || "HTTP " + done.status), true); return; }
          SP.toast("feedback applied: re-running " + (p.rerun || []).join(", "));
          plan.hidden = true;
          fb.reset();
          follow();
          refreshSoon(0);
        } }, "Apply"),
        h("button", { type: "button", onclick: () => { plan.hidden = true; } }, "Discard"))),
    );
  });

  // rows and graph nodes are focusable: Enter or Space selects, as a click does
  document.addEventListener("keydown", (e) => {
    if ((e.key === "Enter" || e.key === " ") && e.target.matches && e.target.matches(".srow[tabindex], .dag-node")) {
      e.preventDefault();
      e.target.dispatchEvent(new MouseEvent("click", { bubbles: true }));
    }
  });

  document.getElementById("dag").addEventListener("click", (e) => {
    const n = e.target.closest(".dag-node");
    if (n) select(n.dataset.step, null);
  });

  setInterval(() => {
    if (!FINISHED.includes(model.run.state) && model.run.state !== "paused") { drawHead(); drawSteps(); for (const g of groups.values()) if (g.open) drawGroup(g); }
  }, 1000);

  index();
  for (const s of model.steps) if (s.fanout && (s.children?.total || 0) <= 20) groups.get(s.name).open = true;
  for (const g of groups.values()) g.el.hidden = !g.open;
  const fromHash = new URLSearchParams(location.hash.slice(1));
  drawAll();
  if (fromHash.get("step")) select(fromHash.get("step"), fromHash.has("item") ? fromHash.get("item") : null);
  if (FINISHED.includes(model.run.state)) {
    // a finished run: the stream still says so (and anything after the page's data) then ends
  }
  connect();
})();
