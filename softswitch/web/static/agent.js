// The agent's desk: state and its buttons, the screen-pop of the call, the case form.
"use strict";

(() => {
  const {fa, duration, el, byId, readJson, postJson, openStream} = Console111;
  const boot = readJson("console-data");
  const labels = boot.labels;
  const baseTitle = document.title;

  // Which buttons each agent state offers (see ivr.acd.TRANSITIONS).
  const ACTIONS = {
    logged_out: ["login"],
    ready: ["pause", "logout"],
    ringing: ["pause"],
    on_call: ["pause"],
    wrap_up: ["ready", "pause", "logout"],
    paused: ["ready", "logout"],
  };

  let agent = null;
  let agentReceivedAt = 0;
  let offer = null;

  // -- agent state ---------------------------------------------------------------

  function setAgent(view) {
    agent = view;
    agentReceivedAt = performance.now();
    renderAgent();
  }

  function renderAgent() {
    const state = agent.state;
    byId("agent-state").dataset.state = state;
    byId("agent-state-label").textContent = labels.states[state] || state;
    let note = "";
    if (state === "paused" && agent.pause_reason) note = labels.pause_reasons[agent.pause_reason] || agent.pause_reason;
    if (agent.pause_requested) note = labels.messages.pause_requested;
    byId("agent-state-note").textContent = note;
    byId("answered-today").textContent = fa(agent.answered_today || 0);
    let actions = ACTIONS[state] || [];
    if ((state === "ringing" || state === "on_call") && agent.pause_requested) actions = ["ready"];
    byId("btn-login").hidden = !actions.includes("login");
    byId("btn-ready").hidden = !actions.includes("ready");
    byId("btn-ready").textContent = labels.ready_button[state] || labels.states.ready;
    byId("pause-group").hidden = !actions.includes("pause");
    byId("btn-pause").textContent = labels.pause_button[state] || labels.states.paused;
    byId("btn-logout").hidden = !actions.includes("logout");
    document.title = (state === "ringing" ? "☎ " + labels.states.ringing + " — " : "") + baseTitle;
    tick();
  }

  function tick() {
    if (agent) {
      const seconds = agent.seconds_in_state + (performance.now() - agentReceivedAt) / 1000;
      byId("agent-state-time").textContent = duration(seconds);
    }
  }

  async function agentAction(action) {
    const body = action === "pause" ? {reason: byId("pause-reason").value} : {};
    const result = await postJson("/console/api/agent/" + action, body, labels.messages.network);
    const error = byId("agent-error");
    error.hidden = result.ok;
    if (result.ok) setAgent(result.data.agent);
    else error.textContent = result.data.error || labels.messages.network;
  }

  for (const button of document.querySelectorAll("[data-action]")) {
    button.addEventListener("click", () => agentAction(button.dataset.action));
  }

  // -- the screen-pop ----------------------------------------------------------------

  function say(kind, text) {
    const message = byId("action-message");
    message.hidden = !text;
    message.dataset.kind = kind;
    message.className = "alert " + kind;
    message.textContent = text || "";
  }

  function renderId(prefix, nationalId, status, audioIds) {
    const idNode = byId(prefix.id);
    idNode.dataset.value = nationalId || "";
    idNode.textContent = nationalId ? fa(nationalId) : "—";
    const statusNode = byId(prefix.status);
    statusNode.dataset.status = status || "none";
    statusNode.textContent = labels.id_status[status || "none"] || status;
    const audio = byId(prefix.audio);
    audio.replaceChildren(...(audioIds || []).map((id, index) => el("div", {class: "audio-item"},
      el("span", {}, labels.messages.attempt + " " + fa(index + 1)),
      el("audio", {controls: true, preload: "none", src: "/console/recordings/" + encodeURIComponent(id),
                   dataset: {recordingId: id, test: "id-audio"}}))));
  }

  function renderHistory(tableId, cases) {
    const body = byId(tableId).tBodies[0];
    if (!cases || cases.length === 0) {
      body.replaceChildren(el("tr", {class: "none"}, el("td", {colspan: 7}, labels.messages.no_history)));
      return;
    }
    body.replaceChildren(...cases.map((c) => {
      const attach = el("button", {type: "button", class: "small quiet", dataset: {test: "history-attach"}},
        labels.messages.attach_this);
      attach.addEventListener("click", () => {
        byId("attach-code").value = fa(c.tracking_code);
        byId("attach-code").focus();
      });
      const refer = el("button", {type: "button", class: "small quiet", dataset: {test: "history-refer"}},
        labels.messages.refer_this);
      refer.addEventListener("click", () => {
        byId("refer-code").value = fa(c.tracking_code);
        byId("refer-agency").focus();
      });
      return el("tr", {dataset: {trackingCode: c.tracking_code}},
        el("td", {class: "num nowrap"}, c.created_at_text),
        el("td", {class: "num nowrap"}, fa(c.tracking_code)),
        el("td", {}, c.agency || "—"),
        el("td", {}, c.category || "—"),
        el("td", {}, labels.case_status[c.status] || c.status),
        el("td", {class: "summary", title: c.summary || ""}, c.summary || ""),
        el("td", {class: "nowrap"}, attach, refer));
    }));
  }

  function hasSubject(pop) {
    return Boolean(pop.subject_id || (pop.subject_id_audio || []).length ||
                   (pop.subject_id_status && pop.subject_id_status !== "none"));
  }

  // A new call replaces the panel; the same call (a reconnect, a state event) only updates it,
  // so what the agent is typing is kept.
  function showOffer(pop) {
    if (offer && offer.call_key === pop.call_key) {
      offer.state = pop.state;
      offer.case = pop.case || offer.case;
      updateOffer();
      return;
    }
    offer = Object.assign({}, pop);
    const panel = byId("screen-pop");
    panel.dataset.callKey = pop.call_key;
    byId("pop-caller-number").textContent = pop.caller_number ? fa(pop.caller_number) : "—";
    byId("pop-queued").textContent = duration(pop.queued_s || 0);
    byId("pop-callback").hidden = !pop.callback;
    byId("pop-language-block").hidden = !pop.language;
    byId("pop-language").textContent = pop.language || "";
    renderId({id: "pop-national-id", status: "pop-id-status", audio: "pop-id-audio"},
             pop.national_id, pop.id_status, pop.id_audio);
    const subject = hasSubject(pop);
    byId("pop-subject").hidden = !subject;
    byId("history-subject-block").hidden = !subject;
    if (subject) {
      renderId({id: "pop-subject-id", status: "pop-subject-id-status", audio: "pop-subject-audio"},
               pop.subject_id, pop.subject_id_status, pop.subject_id_audio);
      renderHistory("history-subject", pop.subject_history);
    }
    renderHistory("history-caller", pop.history);
    byId("case-form").reset();
    if (pop.topic) { byId("case-agency").value = pop.topic; }  // the agency the caller chose in the IVR
    byId("attach-form").reset();
    byId("attach-reason-row").hidden = true;
    byId("refer-form").reset();
    byId("override-form").reset();
    byId("override-form").hidden = true;
    byId("btn-override").hidden = false;
    say("", "");
    byId("no-call").hidden = true;
    panel.hidden = false;
    updateOffer();
  }

  function updateOffer() {
    const state = offer.state;
    byId("screen-pop").dataset.callState = state;
    const pill = byId("pop-call-state");
    pill.dataset.state = state;
    pill.textContent = labels.call_state[state] || state;
    const code = offer.case ? offer.case.tracking_code : "";
    byId("case-done").hidden = !code;
    byId("case-tracking-code").dataset.value = code;
    byId("case-tracking-code").textContent = fa(code);
    byId("case-form").hidden = Boolean(code);
    byId("attach-form").hidden = Boolean(code);
    // A duplicate: the call went to the open case it repeats; the agent may still file it separately.
    const duplicate = Boolean(offer.case && offer.case.duplicate);
    byId("duplicate-notice").hidden = !duplicate;
    byId("duplicate-code").dataset.value = duplicate ? code : "";
    byId("duplicate-code").textContent = duplicate ? fa(code) : "";
    // The call's case is offered for referring again, unless the agent has typed another code.
    const refer = byId("refer-code");
    if (code && (!refer.value || refer.value === refer.dataset.prefilled)) {
      refer.value = fa(code);
      refer.dataset.prefilled = refer.value;
    }
    byId("btn-give-code").disabled = !code || state !== "connected";
    byId("transfer-submit").disabled = state !== "connected" || Boolean(offer.transferring);
    byId("consult-actions").hidden = state !== "connected" || !offer.consulting;
    byId("btn-close-pop").hidden = state !== "ended";
  }

  function endOffer(callKey) {
    if (offer && (callKey === undefined || offer.call_key === callKey)) {
      offer.state = "ended";
      updateOffer();
    }
  }

  function closeOffer() {
    offer = null;
    byId("screen-pop").hidden = true;
    byId("screen-pop").dataset.callKey = "";
    byId("no-call").hidden = false;
  }

  function sameCall(message) {
    return offer && offer.call_key === message.call_key;
  }

  // okText: the message on success, or a function of the answer giving it.
  async function caseCall(url, body, button, okText) {
    button.disabled = true;
    const result = await postJson(url, Object.assign({call_key: offer.call_key}, body), labels.messages.network);
    button.disabled = false;
    if (!result.ok) {
      say("error", result.data.error || labels.messages.network);
      return result;
    }
    if (result.data.tracking_code && offer) {
      offer.case = {tracking_code: result.data.tracking_code, duplicate: Boolean(result.data.duplicate)};
      updateOffer();
    }
    if (result.data.duplicate) say("", "");  // the duplicate notice says it
    else say("ok", typeof okText === "function" ? okText() : okText);
    return result;
  }

  function filing() {
    return {
      agency_id: byId("case-agency").value,
      category: byId("case-category").value,
      summary: byId("case-summary").value,
    };
  }

  byId("case-form").addEventListener("submit", (event) => {
    event.preventDefault();
    caseCall("/console/api/cases", filing(), byId("case-submit"), labels.messages.case_filed);
  });
  byId("btn-override").addEventListener("click", () => {
    byId("btn-override").hidden = true;
    byId("override-form").hidden = false;
    byId("override-reason").focus();
  });
  byId("override-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const body = Object.assign(filing(), {override_reason: byId("override-reason").value});
    caseCall("/console/api/cases", body, byId("override-submit"), labels.messages.case_filed_separately);
  });
  function colleague(id, text) {
    return text.replace("{name}", (boot.names || {})[id] || id);
  }

  byId("transfer-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = byId("transfer-submit");
    const to = byId("transfer-agent").value;
    const toQueue = to === boot.transfer.queue;
    const consult = byId("transfer-consult").checked && !toQueue;
    const body = {call_key: offer.call_key, consult: consult};
    const agencyPrefix = boot.transfer.agency_prefix;
    if (to.startsWith(agencyPrefix)) body.agency_id = to.slice(agencyPrefix.length);
    else body.agent_id = to;
    button.disabled = true;
    const result = await postJson("/console/api/transfer", body, labels.messages.network);
    if (!result.ok) {
      button.disabled = false;
      say("error", result.data.error || labels.messages.network);
      return;
    }
    offer.transferring = to;
    if (!toQueue) say("", colleague(to, consult ? labels.messages.consult_ringing : labels.messages.transfer_ringing));
  });
  // A consultation ends: the caller is put through to the other party, or back with this agent.
  function endConsultation(end) {
    return async () => {
      offer.consulting = false;
      updateOffer();
      const result = await postJson("/console/api/transfer/" + end, {call_key: offer.call_key},
                                    labels.messages.network);
      if (!result.ok) say("error", result.data.error || labels.messages.network);
    };
  }
  byId("btn-consult-complete").addEventListener("click", endConsultation("complete"));
  byId("btn-consult-cancel").addEventListener("click", endConsultation("cancel"));

  byId("refer-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = byId("refer-submit");
    const agency = byId("refer-agency");
    button.disabled = true;
    const result = await postJson("/console/api/cases/refer",
                                  {tracking_code: byId("refer-code").value, agency_id: agency.value},
                                  labels.messages.network);
    button.disabled = false;
    if (!result.ok) {
      say("error", result.data.error || labels.messages.network);
      return;
    }
    say("ok", labels.messages.case_referred.replace("{code}", fa(result.data.tracking_code))
      .replace("{agency}", agency.options[agency.selectedIndex].text));
  });
  byId("attach-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {tracking_code: byId("attach-code").value};
    if (!byId("attach-reason-row").hidden) body.reason = byId("attach-reason").value;
    const result = await caseCall("/console/api/cases/attach", body, byId("attach-submit"),
                                  labels.messages.case_attached);
    // Another person's case: the server names the refusal; the agent gives a reason and sends again.
    if (result && !result.ok && result.data.code === "attach_reason") {
      byId("attach-reason-row").hidden = false;
      byId("attach-reason").focus();
    }
  });
  byId("btn-give-code").addEventListener("click", () => {
    offer.codeRead = false;
    // The IVR may finish reading before this answer arrives: keep "read" rather than "being read".
    caseCall("/console/api/tracking-code", {}, byId("btn-give-code"),
             () => (offer && offer.codeRead ? labels.messages.code_read : labels.messages.code_given));
  });
  byId("btn-close-pop").addEventListener("click", closeOffer);

  // -- live updates ------------------------------------------------------------------

  function onMessage(message) {
    switch (message.type) {
      case "state":
        setAgent(message.agent);
        if (message.offer) showOffer(message.offer);
        else endOffer();
        break;
      case "agent":
        setAgent(message.agent);
        break;
      case "offer":
        showOffer(message.offer);
        if (message.offer && message.offer.transferred_from) {
          say("", colleague(message.offer.transferred_from, labels.messages.transferred_from));
        }
        break;
      case "transfer":
        if (!sameCall(message)) break;
        if (message.state === "to_queue") {
          say("ok", labels.messages.to_queue);
        } else if (message.state === "failed") {
          offer.transferring = null;
          offer.consulting = false;
          updateOffer();
          say("error", colleague(message.to, labels.messages.transfer_failed[message.reason] || labels.messages.network));
        } else if (message.state === "consulting") {
          offer.consulting = true;
          updateOffer();
          say("", colleague(message.to, labels.messages.consulting));
        } else {
          offer.transferring = message.to;
          updateOffer();
          say("", colleague(message.to, message.consult ? labels.messages.consult_ringing : labels.messages.transfer_ringing));
        }
        break;
      case "connected":
        if (sameCall(message)) { offer.state = "connected"; updateOffer(); }
        break;
      case "call_ended":
        if (message.reason === "transferred" && sameCall(message)) {
          say("ok", colleague(message.to, labels.messages.transferred));
        }
        endOffer(message.call_key);
        break;
      case "case_filed":
        if (sameCall(message)) {
          offer.case = {tracking_code: message.tracking_code, duplicate: Boolean(message.duplicate)};
          updateOffer();
        }
        break;
      case "tracking_code_read":
        if (sameCall(message)) { offer.codeRead = true; say("ok", labels.messages.code_read); }
        break;
    }
  }

  setAgent(boot.agent);
  if (boot.offer) showOffer(boot.offer);
  setInterval(tick, 1000);
  openStream("/console/events", labels.messages, onMessage);
})();
