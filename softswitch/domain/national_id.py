"""Iranian national IDs (کد ملی): parsing and the check digit."""

from __future__ import annotations

from softswitch.domain.persian import normalize_digits


def check_digit(first_nine: str) -> str:
    """The 10th digit for nine digits: s = sum(d_i * (11 - i)), r = s mod 11; r if r < 2 else 11 - r."""
    if len(first_nine) != 9 or not first_nine.isascii() or not first_nine.isdigit():
        raise ValueError("check_digit needs exactly nine ASCII digits")
    remainder = sum(int(d) * (10 - i) for i, d in enumerate(first_nine)) % 11
    return str(remainder if remainder < 2 else 11 - remainder)


def parse_national_id(text: str) -> str | None:
    """The canonical 10-digit ID if `text` is a valid one, else None.

    Accepts Persian/Arabic-Indic digits and separators (spaces, dashes); 8 or 9
    digits are padded with leading zeros (IDs starting with zeros are often
    written without them). The ten codes of one repeated digit pass the checksum
    but are not issued, so they are refused.
    """
    digits = "".join(ch for ch in normalize_digits(text) if not ch.isspace() and ch not in "-_.")
    if not digits.isascii() or not digits.isdigit() or not 8 <= len(digits) <= 10:
        return None
    digits = digits.zfill(10)
    if len(set(digits)) == 1:
        return None
    return digits if check_digit(digits[:9]) == digits[9] else None


def is_valid_national_id(text: str) -> bool:
    return parse_national_id(text) is not None
