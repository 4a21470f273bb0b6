"""Prometheus metrics of the control process (``GET /metrics``, text format, prometheus_client).

Counters move as calls end; gauges are read off the live state at each scrape.
No label carries personal data: dispositions, IVR step names and outcomes,
recording kinds, agent states and worker ids only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


def step_outcome(entry: str) -> tuple[str, str]:
    """An IVR path entry such as ``national_id:keypad:verified`` as (step, outcome); ``greeting`` has none."""
    step, _, outcome = entry.partition(":")
    return step, outcome


class _Live(Collector):
    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
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
        yield GaugeMetricFamily("softswitch_health_problems", "Problems that keep new calls out (0: taking calls)",
                                value=state["problems"])


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
        self.copies = Counter("softswitch_recording_copies", "Copies of recordings to the shared directory, by "
                              "outcome (copied, failed, mismatch, damaged, lost, conflict)", ["outcome"],
                              registry=self.registry)
        self.registry.register(_Live(read_live))

    def call_ended(self, disposition: str, ivr_path: Sequence[str]) -> None:
        self.calls.labels(disposition).inc()
        for entry in ivr_path:
            self.steps.labels(*step_outcome(entry)).inc()

    def recording_kept(self, kind: str, duration_s: float, complete: bool) -> None:
        self.recordings.labels(kind, str(complete).lower()).inc()
        self.recorded_seconds.labels(kind).inc(duration_s)

    def recording_copied(self, outcome: str) -> None:
        self.copies.labels(outcome).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
