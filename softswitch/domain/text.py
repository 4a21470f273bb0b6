"""Free text that people type (case summaries, answers, reasons), made safe to keep and show."""

from __future__ import annotations

import re

# The bidi embedding, override and isolate controls, the LRM/RLM marks and the Arabic
# letter mark: typed into a case they reorder how the text (and any tracking code or ID
# in it) is shown to the next reader, so one text can read differently from what it is.
# ZWNJ (U+200C) and ZWJ (U+200D) stay: Persian words are spelt with them.
_BIDI_CONTROLS = "\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c"
# C0 controls but tab and newline, DEL, and the C1 controls: no place in text a person reads.
_OTHER_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f"
_REMOVED = re.compile(f"[{_BIDI_CONTROLS}{_OTHER_CONTROLS}]")


def clean_text(text: str) -> str:
    """``text`` without bidi and other control characters; line breaks become ``\\n``, tabs stay."""
    # A carriage return is a control too, but it breaks a line: keep the break, drop the character.
    return _REMOVED.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
