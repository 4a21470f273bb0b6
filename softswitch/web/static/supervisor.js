// The supervisor's board: queue, agents, today's figures and calls per hour, from ACD snapshots.
"use strict";

(() => {
  const {fa, duration, el, byId, readJson, openStream} = Console111;
  const boot = readJson("supervisor-data");
  const labels = boot.labels;
  const SVG = "http://www.w3.org/2000/svg";

  let snapshot = null;
  let receivedAt = 0;

  function elapsed() {
    return (performance.now() - receivedAt) / 1000;
  }

  function setSnapshot(next) {
    snapshot = next;
    receivedAt = performance.now();
    render();
  }

  function setText(id, text) {
    byId(id).textContent = text;
  }

  function render() {
    const today = snapshot.today;
    setText("kpi-waiting", fa(snapshot.queue.length));
    setText("kpi-offered", fa(today.offered));
    setText("kpi-answered", fa(today.answered));
    setText("kpi-abandoned", fa(today.abandoned));
    setText("kpi-to-message", fa(today.to_message));
    setText("kpi-recorded", fa(today.recorded));
    const level = today.service_level;
    setText("kpi-service-level", level === null || level === undefined ? "—" : fa(Math.round(level * 100)) + "٪");
    setText("kpi-service-level-note",
            labels.messages.service_level_within.replace("{n}", fa(Math.round(today.answered_within_s))));
    const handle = today.average_handle_time_s;
    setText("kpi-handle-time", handle === null || handle === undefined ? "—" : duration(handle));
    const ratings = snapshot.ratings.all;
    setText("kpi-rating", ratings.count ? average(ratings.average) : "—");
    setText("kpi-rating-note", labels.messages.ratings_count.replace("{n}", fa(ratings.count)));
    renderAgents();
    renderQueue();
    renderChart(today.per_hour, snapshot.local_hour);
    tick();
  }

  // 4.25 -> "۴٫۳" (one decimal, the Persian decimal separator)
  function average(value) {
    return fa(value.toFixed(1)).replace(".", "٫");
  }

  // Today's survey results of one agent: "رضایت امروز: ۴٫۵ از ۲ نظر", or that there are none yet.
  function agentRating(id) {
    const rating = snapshot.ratings.agents[id];
    const text = rating ? labels.messages.agent_rating.replace("{avg}", average(rating.average))
      .replace("{n}", fa(rating.count)) : labels.messages.no_ratings;
    return el("div", {class: "agent-rating", dataset: {test: "agent-rating", count: rating ? rating.count : 0,
                                                       average: rating ? rating.average : ""}}, text);
  }

  function renderAgents() {
    const counts = {};
    const tiles = snapshot.agents.map((a) => {
      counts[a.state] = (counts[a.state] || 0) + 1;
      let note = "";
      if (a.state === "paused" && a.pause_reason) note = labels.pause_reasons[a.pause_reason] || a.pause_reason;
      if (a.pause_requested) note = labels.messages.pause_requested;
      return el("div", {class: "agent-tile", dataset: {state: a.state, agentId: a.id, test: "agent-tile"}},
        el("div", {class: "agent-name"}, a.name),
        el("div", {class: "agent-state"}, labels.states[a.state] || a.state),
        el("div", {class: "agent-time num", dataset: {seconds: a.seconds_in_state}}, ""),
        el("div", {class: "agent-note"}, note),
        el("div", {class: "agent-answered"}, labels.messages.answered + ": ", el("bdi", {class: "num"}, fa(a.answered_today || 0))),
        agentRating(a.id));
    });
    byId("agent-tiles").replaceChildren(...tiles);
    const parts = ["ready", "on_call", "ringing", "wrap_up", "paused"]
      .filter((s) => counts[s])
      .map((s) => labels.states[s] + ": " + fa(counts[s]));
    setText("agents-summary", parts.length ? "(" + parts.join(" · ") + ")" : "");
  }

  function agentName(id) {
    const agent = snapshot.agents.find((a) => a.id === id);
    return agent ? agent.name : id;
  }

  function renderQueue() {
    const rows = snapshot.queue.map((q) => el("tr", {dataset: {test: "queue-row"}},
      el("td", {class: "num"}, fa(q.position)),
      el("td", {}, el("bdi", {class: "num"}, fa(q.caller))),
      el("td", {class: "num wait", dataset: {seconds: q.waited_s}}, ""),
      el("td", {}, (q.needs || []).join("، ")),
      el("td", {}, [q.callback ? labels.queue_callback : "",
                    q.offered_to ? labels.queue_ringing + " " + agentName(q.offered_to) : ""]
                   .filter(Boolean).join("؛ "))));
    byId("queue-table").tBodies[0].replaceChildren(...rows);
    byId("queue-empty").hidden = rows.length > 0;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // 24 bars, hour 0 on the right as the page reads; the scale follows the busiest hour.
  function renderChart(perHour, currentHour) {
    const width = 960, height = 240, top = 24, bottom = 28, slot = width / 24, bar = slot * 0.62;
    const max = Math.max(1, ...perHour);
    const chart = svg("svg", {viewBox: `0 0 ${width} ${height}`, role: "img", class: "bars",
                              "aria-label": labels.messages.per_hour, "data-test": "hour-chart"});
    const plot = height - top - bottom;
    chart.append(svg("line", {x1: 0, x2: width, y1: top + plot, y2: top + plot, class: "axis"}));
    perHour.forEach((count, hour) => {
      const x = width - (hour + 1) * slot + (slot - bar) / 2;
      const h = Math.round((count / max) * plot);
      const y = top + plot - h;
      const cls = "bar" + (hour === currentHour ? " current" : "");
      chart.append(svg("rect", {x, y, width: bar, height: Math.max(h, count ? 2 : 0), rx: 3, class: cls,
                                "data-test": "hour-bar", "data-hour": hour, "data-count": count}));
      if (count) chart.append(svg("text", {x: x + bar / 2, y: y - 6, class: "count"}, fa(count)));
      chart.append(svg("text", {x: x + bar / 2, y: height - 8, class: "hour" + (hour === currentHour ? " current" : "")},
                       fa(hour)));
    });
    byId("hour-chart").replaceChildren(chart);
  }

  function tick() {
    if (!snapshot) return;
    const passed = elapsed();
    for (const node of document.querySelectorAll("[data-seconds]")) {
      node.textContent = duration(Number(node.dataset.seconds) + passed);
    }
    setText("kpi-longest-wait", duration(snapshot.queue.length ? snapshot.longest_wait_s + passed : 0));
  }

  setSnapshot(boot.snapshot);
  setInterval(tick, 1000);
  openStream("/supervisor/events", labels.messages, (message) => {
    if (message.type === "snapshot") setSnapshot(message.snapshot);
    document.dispatchEvent(new CustomEvent("supervisor:message", {detail: message}));  // supervisor-monitor.js
  });
})();
