"""SMS to callers: who may get one (an Iranian mobile number), and the one text of each kind.

A text holds the tracking code (in Persian digits) and the service number, and
nothing else of the case: no national ID, no name, no agency, no answer. It is
built from the tracking code alone, so nothing personal can slip into it.
"""

from __future__ import annotations

import re

from softswitch.domain.persian import persian_digits

TRACKING_CODE = "tracking_code"  # sent when the caller pressed 1 after the code was read back
ANSWER_READY = "answer_ready"  # sent when an agency answers a case whose caller asked for the first
SMS_KINDS = (TRACKING_CODE, ANSWER_READY)

# 09xxxxxxxxx, +989xxxxxxxxx, 00989xxxxxxxxx, and 989xxxxxxxxx as trunks write E.164 without the plus.
_IRAN_MOBILE = re.compile(r"(?:0|\+98|0098|98)(9[0-9]{9})")


def iran_mobile(number: str) -> str | None:
    """The number in E.164 (+989xxxxxxxxx) when it is an Iranian mobile, else None (landlines, foreign
    numbers, short codes, an empty From)."""
    found = _IRAN_MOBILE.fullmatch(number.strip())
    return f"+98{found[1]}" if found else None


def sms_text(kind: str, tracking_code: str, service_number: str = "111") -> str:
    """The Persian text of an SMS of ``kind`` about the case with ``tracking_code``."""
    code, service = persian_digits(tracking_code), persian_digits(service_number)
    match kind:
        case "tracking_code":
            return f"سامانه {service}: درخواست شما ثبت شد. کد پیگیری: {code}"
        case "answer_ready":
            return (f"سامانه {service}: پاسخ درخواست شما با کد پیگیری {code} آماده است. "
                    f"برای شنیدن، با {service} تماس بگیرید و کلید {persian_digits(3)} را بزنید.")
    raise ValueError(f"SMS kind must be one of {', '.join(SMS_KINDS)}, not {kind!r}")
