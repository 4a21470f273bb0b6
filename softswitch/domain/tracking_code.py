"""Storage layer: tracking codes that callers read back, protected by a Verhoeff check digit."""

import secrets

TRACKING_CODE_LENGTH = 9

# Verhoeff tables: multiplication in the dihedral group D5, the position
# permutation, and the group inverse. Unlike mod-10 or Luhn, this scheme
# catches every single-digit error and every adjacent transposition, the two
# mistakes people make when reading a code over the phone.
_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)
_INV = (0, 4, 3, 2, 1, 5, 6, 7, 8, 9)


def _is_ascii_digits(text: str) -> bool:
    # str.isdigit() alone also accepts Persian and Arabic-Indic digits, which
    # would reach int() fine but never match a stored code.
    return text.isascii() and text.isdigit()


def _checksum(digits: str, offset: int) -> int:
    c = 0
    for i, ch in enumerate(reversed(digits)):
        c = _D[c][_P[(i + offset) % 8][int(ch)]]
    return c


def verhoeff_check_digit(digits: str) -> str:
    """Return the Verhoeff check digit to append to ``digits``."""
    if not _is_ascii_digits(digits):
        raise ValueError("Verhoeff input must be a non-empty string of ASCII digits")
    return str(_INV[_checksum(digits, 1)])


def verhoeff_valid(code: str) -> bool:
    """Return True if the last digit of ``code`` is its correct Verhoeff check digit."""
    return len(code) >= 2 and _is_ascii_digits(code) and _checksum(code, 0) == 0


def new_tracking_code(length: int = TRACKING_CODE_LENGTH) -> str:
    """Return a random tracking code: ``length - 1`` random digits plus a check digit."""
    if length < 2:
        raise ValueError("a tracking code needs at least one digit plus the check digit")
    # A leading zero gets dropped when a code passes through a spreadsheet or
    # an integer column, so the first digit is never 0.
    body = secrets.choice("123456789") + "".join(
        secrets.choice("0123456789") for _ in range(length - 2)
    )
    return body + verhoeff_check_digit(body)


def is_tracking_code(code: str, length: int = TRACKING_CODE_LENGTH) -> bool:
    """Return True if ``code`` has the right length, no leading zero and a valid check digit."""
    return len(code) == length and code[:1] != "0" and verhoeff_valid(code)


def code_tail(code: str, digits: int = 3) -> str:
    """The last digits of a tracking code as logs may name it ("…789"): the whole code is the caller's key
    to the case's status (with their ID), so it never appears in a log."""
    return "…" + code[-digits:]
