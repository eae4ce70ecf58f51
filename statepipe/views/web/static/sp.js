// Helpers every page shares. A run's content (outputs, errors, names) only ever enters the page
// as text (textContent / text nodes), never as HTML, so `<script>` in an output is just text.
"use strict";
const SP = (() => {
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const kid of kids.flat()) if (kid != null && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
    return el;
  }

  function duration(s) {
    if (s == null) return "";
    if (s < 10) return s.toFixed(2) + "s";
    if (s < 60) return s.toFixed(1) + "s";
    let m = Math.floor(s / 60);
    if (m < 60) return `${m}m${String(Math.floor(s % 60)).padStart(2, "0")}s`;
    return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
  }
  const pad = (n) => String(n).padStart(2, "0");
  function time(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    if (Date.now() - d.getTime() < 20 * 3600e3) return hms;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }
  function cost(c, simulated) {
    if (simulated) return "simulated";
    if (c == null) return "";
    return c < 1 ? "$" + c.toFixed(4) : "$" + c.toFixed(2);
  }
  const tokens = (n) => (n == null ? "" : Number(n).toLocaleString("en-US"));
  // Tokens and cost over every attempt of a step: failed attempts cost money too.
  function usage(attempts) {
    const us = (attempts || []).map((a) => a.usage).filter(Boolean);
    if (!us.length) return "";
    const tok = us.reduce((t, u) => t + (Number(u.total_tokens) || 0), 0);
    const c = us.reduce((t, u) => t + (Number(u.cost_usd) || 0), 0);
    return `${tokens(tok)} tok ${cost(c, us.some((u) => u.simulated))}`;
  }

  function toast(message, bad) {
    const t = h("div", { class: "toast" + (bad ? " bad" : ""), text: message });
    document.getElementById("toasts").append(t);
    setTimeout(() => t.remove(), bad ? 8000 : 4000);
  }

  // Every state-changing request is JSON (the server refuses other content types: CSRF).
  async function post(url, body) {
    let r;
    try {
      r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" }, body: JSON.stringify(body || {}), credentials: "same-origin" });
    } catch (e) {
      return { ok: false, status: 0, data: { error: "the server did not answer: " + e.message } };
    }
    let data = null;
    try { data = await r.json(); } catch (e) { data = { error: `HTTP ${r.status}` }; }
    if (r.status === 401) location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    return { ok: r.ok, status: r.status, data };
  }
  async function get(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (r.status === 401) location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    if (!r.ok) {
      let msg = `HTTP ${r.status}`;
      try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    return { data: await r.json(), headers: r.headers };
  }

  // A collapsible JSON viewer; containers are filled when first opened, so a big value costs
  // nothing until someone looks. The server marks what it cut with "… N more items".
  const CUT = /^… [\d,]+ more (items|keys)$|^[\d,]+ more keys$/;
  function json(value, open = 1) {
    const box = h("div", { class: "jv" });
    box.append(node(null, value, open));
    return box;
  }
  function scalar(v) {
    if (v === null) return h("span", { class: "z", text: "null" });
    if (typeof v === "string") return CUT.test(v) ? h("span", { class: "cut", text: v }) : h("span", { class: "s", text: JSON.stringify(v) });
    if (typeof v === "number") return h("span", { class: "n", text: String(v) });
    return h("span", { class: "b", text: String(v) });
  }
  function node(key, v, open) {
    const label = key == null ? null : h("span", { class: "k", text: (typeof key === "number" ? key : JSON.stringify(key)) + ": " });
    if (v === null || typeof v !== "object") return h("div", { class: "row" }, label, scalar(v));
    const isArr = Array.isArray(v);
    const n = isArr ? v.length : Object.keys(v).length;
    const shape = isArr ? `[${n} item${n === 1 ? "" : "s"}]` : `{${n} key${n === 1 ? "" : "s"}}`;
    if (!n) return h("div", { class: "row" }, label, h("span", { class: "shape", text: isArr ? "[]" : "{}" }));
    const d = h("details", {}, h("summary", {}, label, h("span", { class: "shape", text: shape })));
    let filled = false;
    const fill = () => {
      if (filled) return;
      filled = true;
      const entries = isArr ? v.map((x, i) => [i, x]) : Object.entries(v);
      for (const [k, x] of entries) d.append(node(k, x, open - 1));
    };
    d.addEventListener("toggle", fill);
    if (open > 0) { d.open = true; fill(); }
    return d;
  }

  function setConn(state, text) {
    const c = document.getElementById("conn");
    if (!c) return;
    c.hidden = false;
    c.className = "conn " + state;
    c.textContent = text || state;
  }

  return { h, duration, time, cost, tokens, usage, toast, post, get, json, setConn };
})();
