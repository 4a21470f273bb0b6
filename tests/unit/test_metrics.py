"""The control process's metrics: counters from a call's IVR path and recordings, gauges off the live
state and the SIP front's statistics, in Prometheus's text format read back with its own parser."""

import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from softswitch.control.metrics import Metrics, front_statistics, id_capture, idle_state

KAMAILIO_STATS = [  # the shape of Kamailio 5.6's "stats.get_statistics all"
    "core:rcv_requests = 12", "core:rcv_replies = 4", "core:drop_requests = 2",
    "sl:200_replies = 3", "sl:403_replies = 1", "sl:503_replies = 5", "sl:sent_replies = 9",
    "tmx:UAS_transactions = 7", "tmx:UAC_transactions = 6", "tmx:active_transactions = 1",
    "tmx:2xx_transactions = 6", "tmx:5xx_transactions = 1", "tmx:rpl_sent = 8",
    "registrar:accepted_regs = 3", "registrar:rejected_regs = 1", "registrar:max_contacts = 5",
    "usrloc:location_contacts = 2", "shmem:fragments = not-a-number",
]


def _live(**changes: Any) -> dict[str, Any]:
    state: dict[str, Any] = idle_state() | {
        "calls_active": 2, "queue_length": 1, "longest_wait_s": 4.5, "agents": {"ready": 1, "on_call": 1},
        "workers": {0: 2}, "restarts": {"front": 0}, "problems": 0,
        "today": {"offered": 4, "answered": 3, "answered_in_time": 2, "abandoned": 1, "service_level": 2 / 3},
        "front": front_statistics(KAMAILIO_STATS),
    }
    return state | changes


def _samples(metrics: Metrics) -> dict[str, float]:
    text = metrics.text().decode()
    return {name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}": value
            for family in text_string_to_metric_families(text) for name, labels, value, *_ in family.samples}


def _some(got: dict[str, float], expected: dict[str, float | None]) -> bool:
    """Whether these samples have these values (missing ones shown as None when they differ)."""
    assert {sample: got.get(sample) for sample in expected} == expected
    return True


def test_an_id_outcome_splits_into_source_and_result() -> None:
    assert id_capture("keypad:verified") == ("keypad", "verified")
    assert id_capture("speech:to_transcribe") == ("speech", "to_transcribe")
    assert id_capture("no_input") == ("none", "no_input")
    assert id_capture("unverified") == ("none", "unverified")


def test_kamailio_statistics_are_grouped_and_non_numbers_skipped() -> None:
    groups = front_statistics(KAMAILIO_STATS)
    assert groups["sl"]["503_replies"] == 5 and groups["tmx"]["active_transactions"] == 1
    assert "fragments" not in groups.get("shmem", {})


def test_a_calls_path_moves_the_step_id_and_follow_up_counters() -> None:
    metrics = Metrics(_live)
    metrics.call_ended("completed", ["greeting", "national_id:keypad:invalid", "national_id:keypad:verified",
                                     "menu:message", "about:other", "subject_id:no_input", "subject_id:unverified"])
    metrics.call_ended("completed", ["greeting", "national_id:speech:verified", "menu:follow_up",
                                     "follow_up:answered"])
    metrics.recording_kept("message", 2.5, True, 40044, "silence")
    metrics.recording_kept("message", 1.0, False, 16044, "lost")
    metrics.intake_filed("sms", True)
    got = _samples(metrics)
    assert _some(got, {
        "softswitch_calls_total{disposition=completed}": 2,
        "softswitch_id_captures_total{result=invalid,source=keypad,whose=caller}": 1,
        "softswitch_id_captures_total{result=verified,source=keypad,whose=caller}": 1,
        "softswitch_id_captures_total{result=verified,source=speech,whose=caller}": 1,
        "softswitch_id_captures_total{result=no_input,source=none,whose=subject}": 1,
        "softswitch_id_captures_total{result=unverified,source=none,whose=subject}": 1,
        "softswitch_follow_ups_total{outcome=answered}": 1,
        "softswitch_recorded_bytes_total{kind=message}": 56088,
        "softswitch_recording_failures_total{kind=message,reason=lost}": 1,
        "softswitch_recording_failures_total{kind=message,reason=silence}": None,
        "softswitch_intake_requests_total{channel=sms,duplicate=true}": 1,
    })


def test_live_gauges_queue_figures_and_the_fronts_counters_are_read_at_each_scrape() -> None:
    state = _live()
    metrics = Metrics(lambda: state)
    got = _samples(metrics)
    assert _some(got, {
        "softswitch_queue_today{figure=abandoned}": 1,
        "softswitch_queue_today{figure=answered_in_time}": 2,
        "softswitch_queue_service_level_ratio{}": 2 / 3,
        "softswitch_front_replies_total{code=503}": 5,
        "softswitch_front_transactions_finished_total{class=2xx}": 6,
        "softswitch_front_transactions_finished_total{class=5xx}": 1,
        "softswitch_front_transactions_active{}": 1,
        "softswitch_front_registrations_total{result=rejected}": 1,
        "softswitch_front_replies_total{code=sent}": None,
        "softswitch_front_received_total{kind=requests}": 12,
        "softswitch_front_dropped_requests_total{}": 2,
        "softswitch_front_transactions_total{side=uas}": 7,
        "softswitch_front_registered_contacts{}": 2,
    })

    state = _live(front={}, today={"offered": 0, "answered": 0, "service_level": None})
    got = _samples(metrics)
    assert not any(sample.startswith("softswitch_front_") for sample in got)
    assert "softswitch_queue_service_level_ratio{}" not in got and got["softswitch_queue_today{figure=offered}"] == 0


ALERTS = Path(__file__).resolve().parents[2] / "docs" / "monitoring" / "alerts.yml"


def test_every_alert_rule_is_complete_and_names_only_metrics_that_exist() -> None:
    """docs/monitoring/alerts.yml is loaded by operators as it is: a renamed metric must fail here, not silently
    never fire there."""
    metrics = Metrics(_live)
    metrics.call_ended("completed", ["national_id:keypad:verified", "queue:abandoned", "follow_up:answered"])
    metrics.recording_kept("message", 1.0, False, 16044, "lost")
    metrics.intake_filed("sms", False)
    metrics.store_operation("add_call", 0.002)
    metrics.sms_attempted("tracking_code", "gave_up")
    exported = {re.sub(r"_(total|created)$", "", sample.partition("{")[0]) for sample in _samples(metrics)}
    rules = [rule for group in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"] for rule in group["rules"]]
    assert len(rules) >= 10
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= set(rule) <= {"alert", "expr", "for", "labels",
                                                                            "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("page", "warn") and rule["annotations"]["summary"], rule["alert"]
        named = {re.sub(r"_total$", "", name) for name in re.findall(r"\bsoftswitch_[a-z_]+", rule["expr"])}
        assert named <= exported, f"{rule['alert']}: {sorted(named - exported)} not exported"
