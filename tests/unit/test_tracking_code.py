"""Unit tests for the storage layer's tracking codes."""

import random

import pytest

from softswitch.domain.tracking_code import (
    TRACKING_CODE_LENGTH,
    is_tracking_code,
    new_tracking_code,
    verhoeff_check_digit,
    verhoeff_valid,
)

pytestmark = pytest.mark.unit


def _sample_codes() -> list[str]:
    # Fixed seed so a failure names the same codes on every run; the fresh
    # codes add coverage of what the generator actually produces.
    rng = random.Random(111)
    bodies = ["".join(rng.choice("0123456789") for _ in range(8)) for _ in range(150)]
    fixed = [body + verhoeff_check_digit(body) for body in bodies]
    return fixed + [new_tracking_code() for _ in range(150)]


@pytest.mark.parametrize(
    ("digits", "check"),
    [
        ("236", "3"),
        ("12345", "1"),
        ("142857", "0"),
        ("123456789012", "0"),
        ("8473643095483728456789", "2"),
    ],
)
def test_known_check_digits(digits: str, check: str) -> None:
    assert verhoeff_check_digit(digits) == check
    assert verhoeff_valid(digits + check)


def test_every_single_digit_error_is_detected() -> None:
    for code in _sample_codes():
        assert verhoeff_valid(code)
        for pos, original in enumerate(code):
            for wrong in "0123456789":
                if wrong != original:
                    typo = code[:pos] + wrong + code[pos + 1 :]
                    assert not verhoeff_valid(typo), (code, typo)


def test_every_adjacent_transposition_is_detected() -> None:
    for code in _sample_codes():
        for pos in range(len(code) - 1):
            a, b = code[pos], code[pos + 1]
            if a != b:
                swapped = code[:pos] + b + a + code[pos + 2 :]
                assert not verhoeff_valid(swapped), (code, swapped)


def test_generated_codes_are_valid_unique_and_unpredictable() -> None:
    codes = [new_tracking_code() for _ in range(2000)]
    assert all(is_tracking_code(code) for code in codes)
    assert all(len(code) == TRACKING_CODE_LENGTH and code[0] != "0" for code in codes)
    # 2000 draws from 9 * 10^7 bodies: a couple of birthday collisions at most.
    assert len(set(codes)) >= 1995
    bodies = [int(code[:-1]) for code in codes]
    assert not any(b - a in (0, 1) for a, b in zip(bodies, bodies[1:]))
    assert bodies != sorted(bodies) and bodies != sorted(bodies, reverse=True)
    assert {code[0] for code in codes} == set("123456789")


@pytest.mark.parametrize("length", [2, 6, 12])
def test_custom_length(length: int) -> None:
    code = new_tracking_code(length)
    assert len(code) == length
    assert is_tracking_code(code, length)
    assert not is_tracking_code(code)


def test_length_below_two_is_rejected() -> None:
    with pytest.raises(ValueError):
        new_tracking_code(1)


@pytest.mark.parametrize(
    "code",
    ["", "2363", "12345678", "1234567890", "12345678x", " 23456789", "۱۲۳۴۵۶۷۸۹"],
)
def test_is_tracking_code_rejects_malformed(code: str) -> None:
    assert not is_tracking_code(code)


def test_is_tracking_code_rejects_leading_zero() -> None:
    body = "01234567"
    assert verhoeff_valid(body + verhoeff_check_digit(body))
    assert not is_tracking_code(body + verhoeff_check_digit(body))


@pytest.mark.parametrize("digits", ["", "12a4", "۱۲۳", "-12"])
def test_check_digit_rejects_non_digits(digits: str) -> None:
    with pytest.raises(ValueError):
        verhoeff_check_digit(digits)


@pytest.mark.parametrize("code", ["", "0", "5", "12a4", "۲۳۶۳"])
def test_verhoeff_valid_rejects_non_codes(code: str) -> None:
    assert not verhoeff_valid(code)
