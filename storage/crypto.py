"""Storage layer: encryption, keyed hashing and masking of national ID numbers."""

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

NATIONAL_ID_LENGTH = 10
_KEY_BYTES = 32
_NONCE_BYTES = 12
_MIN_PEPPER_BYTES = 16


def _check_national_id(national_id: str) -> None:
    # The message never echoes the value: exceptions end up in logs.
    if not (
        len(national_id) == NATIONAL_ID_LENGTH
        and national_id.isascii()
        and national_id.isdigit()
    ):
        raise ValueError(f"a national ID must be exactly {NATIONAL_ID_LENGTH} ASCII digits")


class IdProtector:
    """Encrypts national IDs under rotating AES-256-GCM keys and derives lookup hashes."""

    def __init__(self, keys: dict[str, bytes], active_key_id: str, pepper: bytes) -> None:
        if active_key_id not in keys:
            raise ValueError(f"active key id {active_key_id!r} is not among the keys")
        for key_id, key in keys.items():
            if len(key) != _KEY_BYTES:
                raise ValueError(f"key {key_id!r} must be {_KEY_BYTES} bytes for AES-256")
        if len(pepper) < _MIN_PEPPER_BYTES:
            raise ValueError(f"the pepper must be at least {_MIN_PEPPER_BYTES} bytes")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._active_key_id = active_key_id
        self._pepper = pepper

    def __repr__(self) -> str:
        # Keeps key material out of tracebacks and debug logs.
        key_ids = sorted(self._ciphers)
        return f"IdProtector(active_key_id={self._active_key_id!r}, key_ids={key_ids!r})"

    def encrypt(self, national_id: str) -> tuple[str, bytes]:
        """Return ``(key_id, nonce + ciphertext)`` under the active key."""
        _check_national_id(national_id)
        key_id = self._active_key_id
        nonce = os.urandom(_NONCE_BYTES)
        # The key id is authenticated so a blob cannot be relabelled to another key.
        sealed = self._ciphers[key_id].encrypt(nonce, national_id.encode("ascii"), key_id.encode())
        return key_id, nonce + sealed

    def decrypt(self, key_id: str, blob: bytes) -> str:
        """Return the national ID sealed in ``blob``; ValueError if it cannot be opened."""
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise ValueError(f"no key with id {key_id!r} is loaded")
        try:
            plain = cipher.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            # from None: InvalidTag carries no detail and would tie callers to cryptography.
            message = f"national ID blob failed authentication under key {key_id!r}"
            raise ValueError(message) from None
        return plain.decode("ascii")

    def lookup_hash(self, national_id: str) -> str:
        """Return the hex HMAC-SHA-256 of the ID, stable across key rotations."""
        _check_national_id(national_id)
        return hmac.new(self._pepper, national_id.encode("ascii"), hashlib.sha256).hexdigest()

    @staticmethod
    def mask(national_id: str) -> str:
        """Return the ID with every digit but the last two replaced by ``*``."""
        _check_national_id(national_id)
        return "*" * (NATIONAL_ID_LENGTH - 2) + national_id[-2:]

    @property
    def key_ids(self) -> set[str]:
        return set(self._ciphers)

    @classmethod
    def from_key_file(cls, path: Path) -> "IdProtector":
        """Load keys from a JSON key file, creating it with fresh random keys if absent."""
        if not path.exists():
            _create_key_file(path)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("key file %s is accessible to other users (mode %o)", path, mode)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            keys = {str(key_id): _b64(value) for key_id, value in data["keys"].items()}
            return cls(keys, str(data["active"]), _b64(data["pepper"]))
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError, binascii.Error) as exc:
            raise ValueError(f"malformed key file {path}: {type(exc).__name__}") from exc


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("expected a base64 string")
    return base64.b64decode(value, validate=True)


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    content = json.dumps(
        {
            "active": "k1",
            "keys": {"k1": base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode()},
            "pepper": base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode(),
        },
        indent=2,
    )
    # Written in full to a private temporary file and then hard-linked into
    # place: a crash never leaves a truncated key file, and if another process
    # creates the file first, link() fails and both end up using its keys.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(content)
            tmp.flush()
            os.fsync(tmp.fileno())
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            return
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        log.info("created new national-ID key file %s", path)
    finally:
        os.unlink(tmp_name)
