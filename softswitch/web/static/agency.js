// The agency's case page: the answer form (text or an audio file) and the status buttons.
"use strict";

(() => {
  const {byId} = Console111;
  const messages = JSON.parse(byId("agency-data").textContent);
  const page = byId("agency-case");
  const base = "/agency/api/cases/" + encodeURIComponent(page.dataset.trackingCode);
  const FLASH = "agency-flash";

  function say(kind, text) {
    const node = byId("action-message");
    node.hidden = !text;
    node.className = "alert " + kind;
    node.dataset.kind = kind;
    node.textContent = text || "";
  }

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  // POST with the session's CSRF token in its header, as the console does; resolves to {ok, data}.
  async function post(path, body, json) {
    const headers = {"X-CSRF-Token": csrfToken()};
    if (json) headers["Content-Type"] = "application/json";
    try {
      const response = await fetch(base + path, {method: "POST", credentials: "same-origin", headers,
                                                  body: json ? JSON.stringify(body) : body});
      let data = {};
      try { data = await response.json(); } catch (e) { data = {}; }
      if (response.status === 401) window.location.assign("/agency/login");
      return {ok: response.ok, data};
    } catch (e) {
      return {ok: false, data: {error: messages.network}};
    }
  }

  // A change is shown on a fresh page (history, answer, status), with its message carried over.
  async function change(path, body, json) {
    const buttons = document.querySelectorAll("#answer-form button, #status-actions button");
    const enabled = [...buttons].filter((b) => !b.disabled);
    enabled.forEach((b) => { b.disabled = true; });
    say("", messages.sending);
    const result = await post(path, body, json);
    if (result.ok) {
      sessionStorage.setItem(FLASH, result.data.message || "");
      window.location.reload();
      return;
    }
    enabled.forEach((b) => { b.disabled = false; });
    say("error", result.data.error || messages.network);
  }

  const form = byId("answer-form");
  if (form) {
    const showMode = () => {
      const audio = byId("mode-audio").checked;
      byId("audio-block").hidden = !audio;
      byId("text-block").hidden = audio;
    };
    for (const radio of form.querySelectorAll("input[name=mode]")) radio.addEventListener("change", showMode);
    showMode();
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const data = new FormData(form);
      if (data.get("mode") === "text") data.delete("audio");
      else data.delete("text");
      change("/answer", data, false);
    });
  }
  for (const button of document.querySelectorAll("#status-actions [data-status]")) {
    button.addEventListener("click", () => change("/status", {status: button.dataset.status}, true));
  }

  const flash = sessionStorage.getItem(FLASH);
  if (flash !== null) {
    sessionStorage.removeItem(FLASH);
    say("ok", flash);
  }
})();
