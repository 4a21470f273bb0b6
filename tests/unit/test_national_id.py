"""National-ID checksum and parsing."""

from __future__ import annotations

import random

import pytest

from softswitch.domain.national_id import check_digit, is_valid_national_id, normalize_digits, parse_national_id

pytestmark = pytest.mark.unit

# Worked by hand for 0499370899: 0*10+4*9+9*8+9*7+3*6+7*5+0*4+8*3+9*2 = 266,
# 266 mod 11 = 2, so the check digit is 11 - 2 = 9.


def reference_valid(code: str) -> bool:
    """An independent restatement of the rule, used to cross-check on random codes."""
    if len(code) != 10 or len(set(code)) == 1:
        return False
    s = sum(int(code[i]) * (10 - i) for i in range(9))
    r = s % 11
    return int(code[9]) == (r if r < 2 else 11 - r)


@pytest.mark.parametrize("code", ["0499370899", "0790419904", "0084575948", "0013542419", "0067749828"])
def test_known_valid_codes(code: str) -> None:
    assert reference_valid(code)
    assert parse_national_id(code) == code


@pytest.mark.parametrize("code", [
    "0499370898",  # wrong check digit
    "0499370890",
    "4099370899",  # adjacent transposition
    "1111111111", "0000000000", "9999999999",  # repeated digit: passes the sum, never issued
    "123", "12345678901", "04993708a9", "",
])
def test_invalid_codes(code: str) -> None:
    assert parse_national_id(code) is None


def test_every_single_digit_error_in_a_valid_code_is_caught() -> None:
    code = "0499370899"
    for i in range(10):
        for d in "0123456789":
            if d != code[i]:
                assert not is_valid_national_id(code[:i] + d + code[i + 1:])


def test_short_inputs_are_zero_padded() -> None:
    assert parse_national_id("84575948") == "0084575948"
    assert parse_national_id("499370899") == "0499370899"
    assert parse_national_id("4575948") is None  # 7 digits is too short to be an ID


def test_persian_and_arabic_indic_digits_and_separators() -> None:
    assert normalize_digits("۰۴۹۹۳۷۰۸۹۹") == "0499370899"
    assert parse_national_id("۰۴۹-۹۳۷۰۸۹-۹") == "0499370899"
    assert parse_national_id("٠٤٩٩٣٧٠٨٩٩") == "0499370899"
    assert parse_national_id(" 049 937 0899 ") == "0499370899"


def test_check_digit_agrees_with_reference_on_random_codes() -> None:
    rng = random.Random(111)
    for _ in range(2000):
        nine = "".join(rng.choice("0123456789") for _ in range(9))
        code = nine + check_digit(nine)
        assert reference_valid(code) or len(set(code)) == 1
        wrong = nine + str((int(code[9]) + 1 + rng.randrange(9)) % 10)
        assert not reference_valid(wrong)
    with pytest.raises(ValueError):
        check_digit("12345678")
