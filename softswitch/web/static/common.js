// Console helpers shared by the agent and supervisor pages: Persian digits, DOM, JSON calls, event streams.
"use strict";

const Console111 = (() => {
  const FA_DIGITS = "۰۱۲۳۴۵۶۷۸۹";

  function fa(value) {
    return String(value).replace(/[0-9]/g, (d) => FA_DIGITS[Number(d)]);
  }

  function pad2(n) {
    return n < 10 ? "0" + n : String(n);
  }

  // "۰۳:۰۷" or "۱:۰۳:۰۷"
  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const text = (h ? h + ":" + pad2(m) : pad2(m)) + ":" + pad2(s % 60);
    return fa(text);
  }

  // el("td", {class: "num", dataset: {x: 1}}, "text", childNode): text is always set as text, never as HTML.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function byId(id) {
    return document.getElementById(id);
  }

  function readJson(id) {
    return JSON.parse(byId(id).textContent);
  }

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  // POST (or another method) a JSON body; resolves to {ok, status, data}; data.error holds a Persian message on failure.
  async function postJson(url, body, networkError, method = "POST") {
    try {
      const response = await fetch(url, {
        method,
        credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrfToken()},
        body: JSON.stringify(body || {}),
      });
      let data = {};
      try { data = await response.json(); } catch (e) { data = {}; }
      if (response.status === 401) window.location.assign("/console/login");
      return {ok: response.ok, status: response.status, data};
    } catch (e) {
      return {ok: false, status: 0, data: {error: networkError}};
    }
  }

  // Server-Sent Events with a visible connection state; the browser reconnects by itself, and
  // the server answers every (re)connection with the full state, so nothing is missed.
  function openStream(url, labels, onMessage) {
    const indicator = byId("connection");
    const show = (state, text) => {
      if (!indicator) return;
      indicator.dataset.state = state;
      indicator.textContent = text;
    };
    let source = null;
    const connect = () => {
      source = new EventSource(url);
      source.onmessage = (event) => {
        show("open", labels.connected);
        onMessage(JSON.parse(event.data));
      };
      source.onerror = () => {
        show("closed", labels.disconnected);
        if (source.readyState === EventSource.CLOSED) {
          // Refused (e.g. the session ended): a page load sends the agent to the login form if so.
          setTimeout(() => window.location.reload(), 5000);
        }
      };
    };
    connect();
    window.addEventListener("beforeunload", () => source && source.close());
  }

  return {fa, duration, el, byId, readJson, postJson, openStream};
})();
