"""What a worker reads off an INVITE itself (softswitch/worker/invite.py)."""

from __future__ import annotations

import pytest

from softswitch.worker.invite import describe_invite, refer_target

pytestmark = pytest.mark.unit

INVITE = (
    "INVITE sip:111@127.0.0.1:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1\r\n"
    "From: <sip:02188776655@trunk>;tag=1\r\n"
    "To: <sip:111@127.0.0.1>\r\n"
    "{call_id}\r\n"
    "CSeq: 1 INVITE\r\n"
    "{source}"
    "Content-Length: 0\r\n\r\n"
)


def test_an_invite_stamped_by_the_front_names_the_trunk_and_its_call_id() -> None:
    facts = describe_invite(INVITE.format(call_id="Call-ID: abc-1@trunk", source="X-111-Source: 10.1.2.3\r\n"),
                            "127.0.0.1", "sip:111@127.0.0.1")
    assert (facts.source, facts.request_uri, facts.call_id) == ("10.1.2.3", "sip:111@127.0.0.1:5060", "abc-1@trunk")


def test_compact_call_id_and_no_stamp_fall_back_to_the_sender() -> None:
    facts = describe_invite(INVITE.format(call_id="i: short-form", source=""), "127.0.0.7", "sip:111@here")
    assert (facts.source, facts.call_id) == ("127.0.0.7", "short-form")


def test_a_mangled_request_line_falls_back_to_the_local_uri() -> None:
    facts = describe_invite("INVITE\r\nCall-ID: x\r\n\r\n", "127.0.0.1", "sip:111@here")
    assert (facts.request_uri, facts.call_id) == ("sip:111@here", "x")


@pytest.mark.parametrize(("refer_to", "user"), [
    ("<sip:1002@127.0.0.1:19060>", "1002"),
    ("sip:1002@127.0.0.1:19060;transport=udp", "1002"),
    ("<sips:02161920000@127.0.0.1:19060>", "02161920000"),
    ("<sip:1002@127.0.0.1:19060?Replaces=abc%40host%3Bto-tag%3D1>", None),  # the phone's own attended transfer
    ("<sip:1002@10.0.0.9:19060>", None),  # another host
    ("<sip:1002@127.0.0.1>", None),  # port 5060, not the front's
    ("<tel:+982161920000>", None),
    ("", None),
])
def test_a_refer_names_a_user_only_at_the_front(refer_to: str, user: str | None) -> None:
    assert refer_target(refer_to, "127.0.0.1:19060") == user


def test_a_front_on_port_5060_may_be_named_without_its_port() -> None:
    assert refer_target("sip:1002@sw.example", "sw.example:5060") == "1002"
    assert refer_target("sip:1002@[::1]:5060", "[::1]:5060") == "1002"
