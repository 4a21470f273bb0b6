"""National-ID capture over real SIP and RTP: keyed, spoken, and on behalf of someone else.

Retries, rejections and key timing are dialogue logic: tests/unit/test_dialogue.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sip.conftest import NATIONAL_ID, SUBJECT_ID, CallerScript, RunningSoftswitch, espeak_wav

pytestmark = [pytest.mark.sip, pytest.mark.timeout(180)]


@pytest.fixture(scope="session")
def spoken_id(tmp_path_factory: pytest.TempPathFactory) -> Path:
    words = "صفر چهار نه نه سه هفت صفر هشت نه نه"  # NATIONAL_ID, digit by digit
    return espeak_wav(tmp_path_factory.mktemp("spoken-id"), "national-id", words, words_per_minute=130)


def test_keyed_id_is_confirmed_and_stored_masked(softswitch: RunningSoftswitch, speech: Path,
                                                 tmp_path: Path) -> None:
    pcap = CallerScript().keys(NATIONAL_ID).keys("1").keys("2").keys("1").message(speech).write(tmp_path / "c.pcap")
    result, call_id = softswitch.call("id-keyed", pcap)
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    body, case = softswitch.case_of(call_id)
    assert "national_id:keypad:verified" in body["call"]["ivr_path"]
    assert (case["id_status"], case["id_source"]) == ("verified", "keypad")
    assert case["national_id"] == "********99"


def test_spoken_id_is_kept_as_its_own_recording(softswitch: RunningSoftswitch, speech: Path, spoken_id: Path,
                                                tmp_path: Path) -> None:
    # The ask prompt ends ~0.65 s into the call; the caller starts right after it and ends with #.
    script = CallerScript(first_key_s=0.0).say(spoken_id, then_pound=True, lead_s=0.9)
    id_speech_s = script.speech_s
    pcap = script.keys("2", pause_s=0.4).keys("1").message(speech).write(tmp_path / "c.pcap")
    result, call_id = softswitch.call("id-spoken", pcap)
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    body, case = softswitch.case_of(call_id)
    utterance = next(r for r in body["recordings"] if r["kind"] == "national_id_utterance")
    assert abs(utterance["duration_s"] - id_speech_s) < 0.5, (utterance["duration_s"], id_speech_s)
    # No recogniser is configured in the tests: the tape goes to the back office.
    assert (case["id_source"], case["id_status"], case["national_id"]) == ("speech", "to_transcribe", None)
    assert "national_id:speech:to_transcribe" in body["call"]["ivr_path"]


def test_request_for_a_family_member_is_filed_under_them(softswitch: RunningSoftswitch, speech: Path,
                                                         tmp_path: Path) -> None:
    pcap = CallerScript.for_family_member(speech).write(tmp_path / "c.pcap")
    result, call_id = softswitch.call("id-family", pcap)
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    body, case = softswitch.case_of(call_id)
    assert body["call"]["ivr_path"][1:5] == ["national_id:keypad:verified", "menu:message", "about:other",
                                             "subject_id:keypad:verified"]
    assert case["on_behalf_of_other"] is True
    assert case["national_id"] == "********" + SUBJECT_ID[-2:]
    assert case["caller"] == {"national_id": "********" + NATIONAL_ID[-2:], "id_source": "keypad",
                              "id_status": "verified"}
    kinds = sorted(r["kind"] for r in body["recordings"])
    assert kinds == ["message", "national_id_utterance", "subject_id_utterance"]
