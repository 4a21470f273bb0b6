"""Media layer: a closed recording copied into the shared directory every host reads, checked by sha256.

A copy is written under a temporary name in its final directory, fsynced with
that directory, read back and compared with the sha256 the recording's row
was stored with, and only then renamed into place. Nothing here removes a
local file or changes a row: the control process does that once a copy is
verified (``softswitch/control/recording_copy.py``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from media.wavfile import fsync_directory, sha256_file

_CHUNK_BYTES = 1 << 20


class CopyProblem(Exception):
    """A recording that could not be copied; ``outcome`` is its metric label, ``retry`` whether trying again
    may help (a share that is down comes back; a damaged or lost file does not)."""

    outcome = "failed"
    retry = True

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        # The state the copies are in, without this recording's paths: a change of it is logged.
        self.reason = reason or message


class ShareUnavailable(CopyProblem):
    """The shared directory is missing, full, read-only or refuses us."""


class CopyMismatch(CopyProblem):
    """The copy read back does not match the recording's sha256: it was not kept."""

    outcome = "mismatch"


class SourceDamaged(CopyProblem):
    """The local file no longer matches the sha256 its row was stored with: damage, never "fixed"."""

    outcome = "damaged"
    retry = False


class SourceLost(CopyProblem):
    """The recording's row names a local file that is not there, and no verified copy exists."""

    outcome = "lost"
    retry = False


class DestinationTaken(CopyProblem):
    """A different file already has the copy's name: evidence is never overwritten."""

    outcome = "conflict"
    retry = False


def _unavailable(exc: OSError) -> ShareUnavailable:
    reason = exc.strerror or str(exc)
    return ShareUnavailable(f"{reason}: {exc.filename}" if exc.filename else reason, reason=reason)


def _make_parents(destination: Path, shared_dir: Path) -> None:
    """The folders below the shared directory, one by one: never the shared directory itself, which
    would put copies on the local disk while the share is unmounted."""
    folder = shared_dir
    for part in destination.parent.relative_to(shared_dir).parts:
        folder = folder / part
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass


def copy_verified(source: Path, destination: Path, sha256: str, shared_dir: Path, *,
                  after_write: Callable[[Path], None] | None = None) -> None:
    """Copy ``source`` to ``destination`` (under ``shared_dir``) and prove the copy holds ``sha256``.

    Returns once a verified copy is in place, also one left by an earlier run
    that stopped before its row was updated. Raises a :class:`CopyProblem`
    otherwise, with no temporary file left behind. ``after_write`` is a fault
    injection point for tests: it is given the written, not yet verified copy.
    """
    if not shared_dir.is_dir():
        raise ShareUnavailable(f"the shared directory {shared_dir} is missing (not mounted?)",
                               reason="the shared directory is missing (not mounted?)")
    try:
        if destination.exists():
            if sha256_file(destination) == sha256:
                return
            raise DestinationTaken(f"{destination} exists and does not match the recording's sha256")
        if not source.exists():
            raise SourceLost(f"{source} is missing and no copy exists")
        _make_parents(destination, shared_dir)
    except OSError as exc:
        raise _unavailable(exc) from exc
    temporary = destination.with_name(f".{destination.name}.{secrets.token_hex(4)}.part")
    try:
        digest = hashlib.sha256()
        with open(source, "rb") as src, open(temporary, "xb") as out:
            while chunk := src.read(_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise SourceDamaged(f"{source} does not match the sha256 its row was stored with "
                                f"(it reads {digest.hexdigest()[:12]}…)")
        fsync_directory(temporary.parent)
        if after_write is not None:
            after_write(temporary)
        with open(temporary, "rb") as written:
            # Read it back from the share, not from this host's page cache.
            os.posix_fadvise(written.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        if sha256_file(temporary) != sha256:
            raise CopyMismatch(f"the copy {temporary} read back does not match the sha256 of {source}",
                               reason="a copy read back did not match its sha256")
        os.rename(temporary, destination)
        fsync_directory(destination.parent)
    except OSError as exc:
        raise _unavailable(exc) from exc
    finally:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass  # the share went away meanwhile; the stray part name is never read
