// The supervisor's live calls: listen, whisper or barge into one (the supervisor's phone is rung), and leave it.
"use strict";

(() => {
  const {duration, el, byId, readJson, postJson} = Console111;
  const boot = readJson("supervisor-data");
  const labels = boot.monitor_labels;
  const network = boot.labels.messages.network;
  const MODES = ["listen", "whisper", "barge"];
  const API = "/supervisor/api/monitor";

  let snapshot = boot.snapshot;
  let monitor = boot.monitor;  // {call_key, agent_id, mode, state} or null
  let pending = null;  // {call_key, mode} while a request is on its way

  function showError(text) {
    const box = byId("monitor-error");
    box.textContent = text || "";
    box.hidden = !text;
  }

  function stateText() {
    if (pending && !(monitor && monitor.state === "joined")) return labels.ringing;
    if (!monitor) return "";
    if (monitor.state !== "joined") return labels.ringing;
    return "(" + labels.current + ": " + labels.modes[monitor.mode] + ")";
  }

  function render() {
    const state = byId("monitor-state");
    state.dataset.state = monitor ? monitor.state : (pending ? "ringing" : "none");
    state.dataset.mode = monitor ? monitor.mode : "";
    state.textContent = stateText();
    const live = snapshot.agents.filter((a) => a.state === "on_call" && a.call_key);
    const rows = live.map((agent) => {
      const mine = monitor && monitor.call_key === agent.call_key;
      const busy = pending !== null || (monitor !== null && !mine);
      const buttons = MODES.map((mode) => el("button", {
        type: "button", class: "small" + (mine && monitor.mode === mode ? " primary" : ""),
        "aria-pressed": mine && monitor.mode === mode ? "true" : "false", disabled: busy,
        dataset: {test: "monitor-" + mode, mode},
      }, labels.modes[mode]));
      buttons.forEach((button) => button.addEventListener("click", () => start(agent.call_key, button.dataset.mode)));
      if (mine) {
        const stop = el("button", {type: "button", class: "small quiet", disabled: pending !== null,
                                   dataset: {test: "monitor-stop"}}, labels.stop);
        stop.addEventListener("click", leave);
        buttons.push(stop);
      }
      return el("tr", {dataset: {test: "live-call", callKey: agent.call_key,
                                 monitorMode: mine ? monitor.mode : ""}},
        el("td", {}, agent.name),
        el("td", {class: "num", dataset: {seconds: agent.seconds_in_state}}, duration(agent.seconds_in_state)),
        el("td", {class: "monitor-buttons"}, ...buttons));
    });
    byId("live-calls").tBodies[0].replaceChildren(...rows);
    byId("live-calls-empty").hidden = rows.length > 0;
  }

  async function start(callKey, mode) {
    showError("");
    pending = {call_key: callKey, mode};
    render();
    const answer = await postJson(API, {call_key: callKey, mode}, network);
    pending = null;
    if (answer.ok) monitor = answer.data.monitor;
    else showError(answer.data.error || network);
    render();
  }

  async function leave() {
    showError("");
    const answer = await postJson(API, {}, network, "DELETE");
    if (answer.ok || answer.status === 404) monitor = null;
    else showError(answer.data.error || network);
    render();
  }

  document.addEventListener("supervisor:message", (event) => {
    const message = event.detail;
    if (message.type !== "snapshot") return;
    snapshot = message.snapshot;
    if (!pending) monitor = message.monitor || null;
    render();
  });
  render();
})();
