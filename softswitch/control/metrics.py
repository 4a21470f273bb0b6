"""Prometheus metrics of the control process (``GET /metrics``, text format, prometheus_client).

Counters move as calls end; gauges are read off the live state at each scrape,
the SIP front's counters off Kamailio's own statistics at each scrape.
No label carries personal data: dispositions, IVR step names and outcomes,
recording kinds, agent states, channels, reply codes and worker ids only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ivr.steps import step_outcome
from storage.retention import RetentionResult

# The IVR path's ID steps (ivr.identify.Whose) and whose ID each asks for.
_ID_STEPS = {"national_id": "caller", "subject_id": "subject"}
# Recording ends that lost audio (ivr.channel.RecordingResult.reason).
_FAILED_RECORDING = frozenset({"error", "lost"})


def id_capture(outcome: str) -> tuple[str, str]:
    """An ID step's outcome as (source, result): ``keypad:verified`` -> (keypad, verified); an outcome
    without a source (``no_input``, or the status the caller was left with after the last attempt) has
    source ``none``."""
    source, _, result = outcome.rpartition(":")
    return source or "none", result


def front_statistics(lines: Sequence[str]) -> dict[str, dict[str, float]]:
    """Kamailio's ``stats.get_statistics all`` (``"group:name = value"`` lines) as {group: {name: value}}."""
    groups: dict[str, dict[str, float]] = {}
    for line in lines:
        key, _, value = line.partition(" = ")
        group, _, name = key.partition(":")
        try:
            groups.setdefault(group, {})[name] = float(value)
        except ValueError:
            continue
    return groups


def idle_state() -> dict[str, Any]:
    """The live state a switch with no call, queue, agent, worker or front reads as; the one list of its keys."""
    return {"calls_active": 0, "queue_length": 0, "longest_wait_s": 0.0, "agents": {}, "workers": {},
            "restarts": {}, "problems": 0, "recordings_waiting": 0, "recordings_oldest_wait_s": 0.0,
            "today": {}, "front": {}, "sms_waiting": 0, "callbacks_waiting": 0, "hosts_up": 1}


class _Live(Collector):
    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        state = self.read()
        yield GaugeMetricFamily("softswitch_calls_active", "Calls in progress on the media workers",
                                value=state["calls_active"])
        yield GaugeMetricFamily("softswitch_queue_length", "Callers waiting for an agent", value=state["queue_length"])
        yield GaugeMetricFamily("softswitch_queue_longest_wait_seconds", "Longest wait of a caller in the queue",
                                value=state["longest_wait_s"])
        agents = GaugeMetricFamily("softswitch_agents", "Agents by state", labels=["state"])
        for name, count in sorted(state["agents"].items()):
            agents.add_metric([name], count)
        yield agents
        workers = GaugeMetricFamily("softswitch_worker_calls", "Calls per connected media worker", labels=["worker"])
        for worker_id, calls in sorted(state["workers"].items()):
            workers.add_metric([str(worker_id)], calls)
        yield workers
        yield GaugeMetricFamily("softswitch_workers_up", "Media workers connected", value=len(state["workers"]))
        restarts = GaugeMetricFamily("softswitch_child_restarts", "Restarts of the front and the workers",
                                     labels=["child"])
        for name, count in sorted(state["restarts"].items()):
            restarts.add_metric([name], count)
        yield restarts
        yield GaugeMetricFamily("softswitch_recordings_waiting_copy",
                                "Recordings kept local, waiting for their copy in the shared directory",
                                value=state["recordings_waiting"])
        yield GaugeMetricFamily("softswitch_recordings_copy_oldest_wait_seconds",
                                "How long the oldest recording waiting for its shared copy has waited",
                                value=state["recordings_oldest_wait_s"])
        yield GaugeMetricFamily("softswitch_sms_pending", "SMS messages in the outbox not yet sent, failed or "
                                "given up (as of the sender's last round)", value=state["sms_waiting"])
        yield GaugeMetricFamily("softswitch_callbacks_waiting", "Callbacks this host has booked and not yet made or "
                                "given up", value=state["callbacks_waiting"])
        yield GaugeMetricFamily("softswitch_hosts_up", "Hosts of the cluster alive by their heartbeats "
                                "(this one included; 1 with a store of its own)", value=state["hosts_up"])
        yield GaugeMetricFamily("softswitch_health_problems", "Problems that keep new calls out (0: taking calls)",
                                value=state["problems"])
        today = state["today"]
        figures = GaugeMetricFamily("softswitch_queue_today", "Today's queue figures (local day, reset at midnight)",
                                    labels=["figure"])
        for name in ("offered", "answered", "answered_in_time", "abandoned", "to_message", "left_other", "recorded"):
            figures.add_metric([name], today.get(name) or 0)
        yield figures
        if today.get("service_level") is not None:
            yield GaugeMetricFamily("softswitch_queue_service_level_ratio",
                                    "Today's answered calls answered within queue.service_level_s",
                                    value=today["service_level"])
        yield from _front(state.get("front") or {})


def _counter(name: str, documentation: str, label: str,
             values: Iterable[tuple[str, float]]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for label_value, value in values:
        family.add_metric([label_value], value)
    return family


def _front(groups: Mapping[str, Mapping[str, float]]) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """The SIP front's received messages, replies by code, transactions and registrations (Kamailio's
    core, sl, tmx, registrar and usrloc statistics); nothing when the front is down."""
    if not groups:
        return
    core, sl, tmx, registrar = (groups.get(group, {}) for group in ("core", "sl", "tmx", "registrar"))
    yield _counter("softswitch_front_received", "SIP messages the front received", "kind",
                   ((kind, core.get(f"rcv_{kind}", 0)) for kind in ("requests", "replies")))
    yield CounterMetricFamily("softswitch_front_dropped_requests", "Requests the front dropped (floods, bad routes)",
                              value=core.get("drop_requests", 0))
    yield _counter("softswitch_front_replies", "Replies the front sent itself (stateless: refusals, 503 when no "
                   "worker can), by code", "code",
                   ((name.removesuffix("_replies"), value) for name, value in sorted(sl.items())
                    if name.endswith("_replies") and name[0].isdigit()))
    yield _counter("softswitch_front_transactions_finished", "Transactions the front relayed, by the class of "
                   "their final reply", "class",
                   ((name.removesuffix("_transactions"), value) for name, value in sorted(tmx.items())
                    if name.endswith("xx_transactions")))
    yield _counter("softswitch_front_transactions", "Transactions the front created", "side",
                   (("uas", tmx.get("UAS_transactions", 0)), ("uac", tmx.get("UAC_transactions", 0))))
    yield GaugeMetricFamily("softswitch_front_transactions_active", "Transactions the front holds now",
                            value=tmx.get("active_transactions", 0))
    yield _counter("softswitch_front_registrations", "REGISTERs the front accepted or refused", "result",
                   (("accepted", registrar.get("accepted_regs", 0)), ("rejected", registrar.get("rejected_regs", 0))))
    yield GaugeMetricFamily("softswitch_front_registered_contacts", "Phones registered at the front",
                            value=groups.get("usrloc", {}).get("location_contacts", 0))


class Metrics:
    def __init__(self, read_live: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter("softswitch_calls", "Calls ended, by disposition", ["disposition"],
                             registry=self.registry)
        self.steps = Counter("softswitch_ivr_steps", "IVR steps taken, by step and outcome", ["step", "outcome"],
                             registry=self.registry)
        self.recordings = Counter("softswitch_recordings", "Recordings kept, by kind and completeness",
                                  ["kind", "complete"], registry=self.registry)
        self.recorded_seconds = Counter("softswitch_recorded_seconds", "Audio kept in recordings", ["kind"],
                                        registry=self.registry)
        self.recorded_bytes = Counter("softswitch_recorded_bytes", "Bytes of recordings kept", ["kind"],
                                      registry=self.registry)
        self.recording_failures = Counter("softswitch_recording_failures", "Recordings that lost audio "
                                          "(the media failed or was lost; what was taped is kept)",
                                          ["kind", "reason"], registry=self.registry)
        self.id_captures = Counter("softswitch_id_captures", "National ID attempts, by whose ID, source and result",
                                   ["whose", "source", "result"], registry=self.registry)
        self.follow_ups = Counter("softswitch_follow_ups", "Follow-up calls by outcome", ["outcome"],
                                  registry=self.registry)
        # By score only: an agent's ratings are the reports' and the supervisor view's, never a label.
        self.survey_ratings = Counter("softswitch_survey_ratings", "Post-call survey ratings kept, by score (1-5)",
                                      ["score"], registry=self.registry)
        self.intake = Counter("softswitch_intake_requests", "Requests filed through the one duplicate rule, by "
                              "channel and whether they were linked to an existing case", ["channel", "duplicate"],
                              registry=self.registry)
        # Retention: kinds are recording, answer_audio, case, case_event and call; never an id.
        self.retention_deleted = Counter("softswitch_retention_deleted", "Rows and files deleted by retention",
                                         ["kind"], registry=self.registry)
        self.retention_missing = Counter("softswitch_retention_files_missing",
                                         "Files retention found already gone (their rows deleted)", ["kind"],
                                         registry=self.registry)
        self.retention_failures = Counter("softswitch_retention_failures",
                                          "Files retention could not remove (kept, with their rows)", ["kind"],
                                          registry=self.registry)
        self.copies = Counter("softswitch_recording_copies", "Copies of recordings to the shared directory, by "
                              "outcome (copied, failed, mismatch, damaged, lost, conflict)", ["outcome"],
                              registry=self.registry)
        self.store_seconds = Histogram("softswitch_store_operation_seconds", "Case store operations by Store "
                                       "method, failures included", ["operation"], registry=self.registry,
                                       buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                1.0, 2.5, 10.0))
        # Each attempt's outcome: sent, retry, failed (refused for good) or gave_up (attempts spent).
        self.sms = Counter("softswitch_sms", "SMS attempts by kind (tracking_code, answer_ready) and outcome "
                           "(sent, retry, failed, gave_up)", ["kind", "outcome"], registry=self.registry)
        # booked; then each attempt's outcome (answered, no_answer, busy, failed_<code>) and unreached at the end.
        self.callbacks = Counter("softswitch_callbacks", "Callbacks booked, their attempts by outcome, and those "
                                 "given up (unreached)", ["outcome"], registry=self.registry)
        self.hosts_taken_over = Counter("softswitch_hosts_taken_over", "Dead hosts this host took over (closed "
                                        "their calls as host_lost, filed their cut messages)", registry=self.registry)
        self.registry.register(_Live(read_live))

    def call_ended(self, disposition: str, ivr_path: Sequence[str]) -> None:
        self.calls.labels(disposition).inc()
        for entry in ivr_path:
            step, outcome = step_outcome(entry)
            self.steps.labels(step, outcome).inc()
            if step in _ID_STEPS:
                self.id_captures.labels(_ID_STEPS[step], *id_capture(outcome)).inc()
            elif step == "follow_up":
                self.follow_ups.labels(outcome).inc()

    def recording_kept(self, kind: str, duration_s: float, complete: bool, size: int, reason: str) -> None:
        self.recordings.labels(kind, str(complete).lower()).inc()
        self.recorded_seconds.labels(kind).inc(duration_s)
        self.recorded_bytes.labels(kind).inc(size)
        if reason in _FAILED_RECORDING:
            self.recording_failures.labels(kind, reason).inc()

    def store_operation(self, operation: str, seconds: float) -> None:
        self.store_seconds.labels(operation).observe(seconds)

    def survey_rated(self, score: int) -> None:
        self.survey_ratings.labels(str(score)).inc()

    def intake_filed(self, channel: str, duplicate: bool) -> None:
        self.intake.labels(channel, str(duplicate).lower()).inc()

    def retention_ran(self, result: RetentionResult) -> None:
        for counter, counts in ((self.retention_deleted, result.deleted), (self.retention_missing, result.missing)):
            for kind, count in counts.items():
                if count:
                    counter.labels(kind).inc(count)
        for failure in result.failures:
            self.retention_failures.labels(failure.kind).inc()

    def recording_copied(self, outcome: str) -> None:
        self.copies.labels(outcome).inc()

    def sms_attempted(self, kind: str, outcome: str) -> None:
        self.sms.labels(kind, outcome).inc()

    def callback_event(self, outcome: str) -> None:
        self.callbacks.labels(outcome).inc()

    def host_taken_over(self) -> None:
        self.hosts_taken_over.inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
