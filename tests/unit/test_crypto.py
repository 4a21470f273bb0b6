"""Unit tests for the storage layer's national-ID protection."""

import base64
import json
import logging
import stat
from pathlib import Path

import pytest

from storage.crypto import IdProtector

pytestmark = pytest.mark.unit

NATIONAL_ID = "0012345634"
KEY_1 = bytes(range(32))
KEY_2 = bytes(range(32, 64))
PEPPER = b"p" * 32


@pytest.fixture
def protector() -> IdProtector:
    return IdProtector({"k1": KEY_1}, "k1", PEPPER)


def test_round_trip(protector: IdProtector) -> None:
    key_id, blob = protector.encrypt(NATIONAL_ID)
    assert key_id == "k1"
    assert NATIONAL_ID.encode() not in blob
    assert protector.decrypt(key_id, blob) == NATIONAL_ID


def test_each_encryption_uses_a_fresh_nonce(protector: IdProtector) -> None:
    _, first = protector.encrypt(NATIONAL_ID)
    _, second = protector.encrypt(NATIONAL_ID)
    assert first[:12] != second[:12]
    assert first != second


def test_tampered_blob_is_rejected(protector: IdProtector) -> None:
    key_id, blob = protector.encrypt(NATIONAL_ID)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ValueError):
        protector.decrypt(key_id, tampered)


def test_key_id_is_authenticated() -> None:
    # Same key bytes under two ids: only the associated data differs.
    protector = IdProtector({"a": KEY_1, "b": KEY_1}, "a", PEPPER)
    _, blob = protector.encrypt(NATIONAL_ID)
    with pytest.raises(ValueError):
        protector.decrypt("b", blob)


def test_unknown_key_id_is_rejected(protector: IdProtector) -> None:
    _, blob = protector.encrypt(NATIONAL_ID)
    with pytest.raises(ValueError, match="k9"):
        protector.decrypt("k9", blob)


def test_rotation_keeps_old_blobs_readable(protector: IdProtector) -> None:
    old_key_id, old_blob = protector.encrypt(NATIONAL_ID)
    rotated = IdProtector({"k1": KEY_1, "k2": KEY_2}, "k2", PEPPER)
    new_key_id, new_blob = rotated.encrypt(NATIONAL_ID)
    assert new_key_id == "k2"
    assert rotated.decrypt(old_key_id, old_blob) == NATIONAL_ID
    assert rotated.decrypt(new_key_id, new_blob) == NATIONAL_ID


def test_lookup_hash_is_keyed_and_stable_across_rotation(protector: IdProtector) -> None:
    digest = protector.lookup_hash(NATIONAL_ID)
    assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")
    assert digest == protector.lookup_hash(NATIONAL_ID)
    assert digest != protector.lookup_hash("0012345635")
    rotated = IdProtector({"k1": KEY_1, "k2": KEY_2}, "k2", PEPPER)
    assert rotated.lookup_hash(NATIONAL_ID) == digest
    other_pepper = IdProtector({"k1": KEY_1}, "k1", b"q" * 32)
    assert other_pepper.lookup_hash(NATIONAL_ID) != digest


def test_mask_shows_only_last_two_digits() -> None:
    assert IdProtector.mask(NATIONAL_ID) == "********34"


@pytest.mark.parametrize(
    "bad", ["", "123456789", "12345678901", "12345678x0", "۰۰۱۲۳۴۵۶۳۴"]
)
def test_malformed_ids_are_rejected_without_echoing_them(
    protector: IdProtector, bad: str
) -> None:
    for operation in (protector.encrypt, protector.lookup_hash, IdProtector.mask):
        with pytest.raises(ValueError) as excinfo:
            operation(bad)
        assert not bad or bad not in str(excinfo.value)


def test_constructor_validates_keys() -> None:
    with pytest.raises(ValueError):
        IdProtector({"k1": KEY_1}, "k2", PEPPER)
    with pytest.raises(ValueError):
        IdProtector({"k1": KEY_1[:16]}, "k1", PEPPER)
    with pytest.raises(ValueError):
        IdProtector({"k1": KEY_1}, "k1", b"short")


def test_repr_hides_key_material(protector: IdProtector) -> None:
    text = repr(protector)
    assert "k1" in text
    assert KEY_1.hex() not in text and str(KEY_1) not in text and str(PEPPER) not in text


def test_key_file_is_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "id-keys.json"
    first = IdProtector.from_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    data = json.loads(path.read_text())
    assert data["active"] == "k1"
    assert len(base64.b64decode(data["keys"]["k1"])) == 32
    assert len(base64.b64decode(data["pepper"])) == 32

    key_id, blob = first.encrypt(NATIONAL_ID)
    second = IdProtector.from_key_file(path)
    assert path.read_text() == json.dumps(data, indent=2)
    assert second.decrypt(key_id, blob) == NATIONAL_ID
    assert second.lookup_hash(NATIONAL_ID) == first.lookup_hash(NATIONAL_ID)


def test_fresh_key_files_differ(tmp_path: Path) -> None:
    a = IdProtector.from_key_file(tmp_path / "a.json")
    b = IdProtector.from_key_file(tmp_path / "b.json")
    assert a.lookup_hash(NATIONAL_ID) != b.lookup_hash(NATIONAL_ID)


def test_key_file_with_rotated_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps(
            {
                "active": "k2",
                "keys": {
                    "k1": base64.b64encode(KEY_1).decode(),
                    "k2": base64.b64encode(KEY_2).decode(),
                },
                "pepper": base64.b64encode(PEPPER).decode(),
            }
        )
    )
    path.chmod(0o600)
    loaded = IdProtector.from_key_file(path)
    old_key_id, old_blob = IdProtector({"k1": KEY_1}, "k1", PEPPER).encrypt(NATIONAL_ID)
    assert loaded.decrypt(old_key_id, old_blob) == NATIONAL_ID
    assert loaded.encrypt(NATIONAL_ID)[0] == "k2"


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"active": "k1", "keys": {}, "pepper": ""}',
        '{"active": "k1", "keys": {"k1": "!!!"}, "pepper": "cA=="}',
        '{"keys": {"k1": "AAAA"}, "pepper": "AAAA"}',
    ],
)
def test_malformed_key_file_is_rejected(tmp_path: Path, content: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(ValueError):
        IdProtector.from_key_file(path)


def test_loose_key_file_permissions_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.json"
    IdProtector.from_key_file(path)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="storage.crypto"):
        IdProtector.from_key_file(path)
    assert "other users" in caplog.text
